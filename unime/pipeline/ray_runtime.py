"""Starting or joining Ray from a job, with the runtime environment declared once (in config)."""

from __future__ import annotations

import os

from unime.config import RayConfig


def init_ray(config: RayConfig):
    """Join ``config.address`` (or the cluster of a ``ray job submit`` driver), else start a
    local Ray for this process. ``config.runtime_env`` goes to every worker of the job, and
    its ``env_vars`` to this driver too, so driver and workers see the same settings."""
    import ray

    if ray.is_initialized():
        return ray
    for name, value in config.runtime_env.get("env_vars", {}).items():
        os.environ.setdefault(name, str(value))
    runtime_env = config.runtime_env or None
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # A private local cluster on 127.0.0.1 started by this process.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=config.num_cpus, include_dashboard=config.include_dashboard, runtime_env=runtime_env,
                 _metrics_export_port=config.metrics_export_port)
    return ray
