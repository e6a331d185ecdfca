"""Starting or joining Ray from a job, with the runtime environment declared once."""

from __future__ import annotations

import os

from unime.config import RayConfig


def init_ray(config: RayConfig):
    """Join ``config.address`` (or a job's cluster), else start a local Ray for this process."""
    import ray

    if ray.is_initialized():
        return ray
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=config.runtime_env or None, log_to_driver=True)
    else:
        # A private local cluster on 127.0.0.1 started by this process.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray Train's report() otherwise blocks ~2 s per call waiting on its health check.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
        ray.init(num_cpus=config.num_cpus, include_dashboard=config.include_dashboard,
                 runtime_env=config.runtime_env or None)
    return ray
