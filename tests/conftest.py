"""Shared fixtures: tiny checkpoints and the demo corpus built once per session, one local Ray
cluster per session, and a real S3 API (moto server) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from unime.demo import tiny

    out = tmp_path_factory.mktemp("tiny")
    tiny.build(out, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    from unime.demo import corpus as demo_data

    out = tmp_path_factory.mktemp("demo")
    demo_data.build(out, demo_data.DemoCorpusConfig(train_images=60, grounding_images=20, eval_queries=12,
                                                    eval_candidates=8))
    return out


@pytest.fixture(scope="session")
def mined_run(ray_cluster, demo_dir, tiny_dir, tmp_path_factory):
    """The mining stages (ingest -> mine) run once on the small test config: ``(config, results)``.
    Tests that train copy its run dir; tests that read it must not write there."""
    from tests.helpers import mining_config, run_all

    config = mining_config(demo_dir, tiny_dir, tmp_path_factory.mktemp("mine"))
    return config, run_all(config)


@pytest.fixture(scope="session")
def metrics_port():
    """The Prometheus endpoint of the session's Ray cluster."""
    return free_port()


@pytest.fixture(scope="session")
def ray_cluster(metrics_port):
    import ray

    if not ray.is_initialized():
        # metrics exported every 5 s (default 10 s), so that a training stage's live gauges are
        # exported while it runs; every Ray process reports at this interval all session long
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port,
                 _system_config={"metrics_report_interval_ms": 5000})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; yields fsspec storage options that reach it."""
    # Fixed credentials and no instance metadata: otherwise clients probe an address that
    # does not exist here and hang.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        raise RuntimeError("moto server did not start")
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="unime-test")
    yield {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    server.terminate()
    server.wait(timeout=10)
