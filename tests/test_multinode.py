"""Multi-node behaviour on one machine, with Ray's own multi-node utilities.

Node types come from ``cluster/aws.yaml`` through :func:`tests.cluster.local_node_types`
(same names and custom resources, one CPU each), so these tests and the cluster YAML cannot
drift. Each test starts its own cluster (``Cluster`` or ``AutoscalingCluster``, whose start
runs ``ray stop``), so this tier runs in its own pytest process after the others
(``make test``), never beside the session's cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.cluster import launcher_node_types, load_yaml, local_autoscaling_config, local_node_types
from tests.faults import hold_after_step, judge_holding_after, on_first_attempt
from tests.helpers import ROOT, STAGES, free_port, mining_config
from unime.pipeline import judge, mine, train_embedder
from unime.train.embedder import EmbedderTrainer, train_loop_per_worker

pytestmark = [pytest.mark.integration, pytest.mark.multinode]
IDLE_TIMEOUT_S = 5
# Stages ask for node types through config only: judges and embedders for judge-gpu
# nodes, I/O tasks and the FAISS search for cpu-worker nodes, training workers (and the
# merge that publishes their checkpoint) for train-gpu nodes.
PLACEMENT = ["embed.actors.resources={judge_gpu: 1}", "judge.actors.resources={judge_gpu: 1}",
             "ray.data_task_resources={cpu_node: 0.001}", "mining.placement.resources={cpu_node: 0.001}"]
TRAIN = ["train_embedder.placement.num_workers=1", "train_embedder.placement.use_gpu=false", "train_embedder.placement.cpus_per_worker=0.5",
         "train_embedder.placement.resources_per_worker={train_gpu: 1}", "train_embedder.num_hard_negatives=3",
         "train_embedder.queries_per_worker=8", "train_embedder.gradcache_chunk=8", "train_embedder.max_steps=30",
         "train_embedder.checkpoint_every=5", "train_embedder.placement.max_failures=2"]


LOCAL = {"cpus_per_node": 2, "max_workers": 1, "idle_timeout_s": IDLE_TIMEOUT_S}


@pytest.fixture(scope="module")
def aws_config() -> dict:
    return load_yaml(ROOT / "cluster" / "aws.yaml")


@pytest.fixture(scope="module")
def node_types(aws_config) -> dict[str, dict]:
    return local_node_types(launcher_node_types(aws_config), **LOCAL)


class FixedCluster:
    """``ray.cluster_utils.Cluster``: a CPU-less head (as in the YAML) plus worker nodes of
    the YAML's types, added and removed by the test."""

    def __init__(self, node_types: dict[str, dict], *names: str):
        from ray.cluster_utils import Cluster

        self.node_types = node_types
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": True, "dashboard_port": free_port()})
        self.nodes = [self.add(name) for name in names]

    def add(self, name: str):
        resources = dict(self.node_types[name]["resources"])
        node = self.cluster.add_node(num_cpus=resources.pop("CPU"), resources=resources)
        self.cluster.wait_for_nodes()
        return node

    def __enter__(self):
        import ray

        ray.init(address=self.cluster.address, log_to_driver=False)
        return self

    def __exit__(self, *exc):
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def node_type_of(node_types: dict[str, dict]) -> dict[str, str]:
    """Node id -> node type name ('head' for the CPU-less head), for every node ever seen."""
    import ray

    custom = {name: set(spec["resources"]) - {"CPU"} for name, spec in node_types.items()}
    names = {}
    for node in ray.nodes():
        offered = set(node["Resources"])
        names[node["NodeID"]] = next((name for name, keys in custom.items() if keys <= offered), "head")
    return names


def placements(node_types: dict[str, dict]) -> dict[str, set[str]]:
    """Where each kind of actor and Ray Data task ran: name -> node types."""
    from ray.util.state import list_actors, list_tasks

    kind = node_type_of(node_types)
    where: dict[str, set[str]] = {}
    for actor in list_actors(limit=10_000, detail=True):
        where.setdefault(actor.class_name, set()).add(kind.get(actor.node_id, "?"))
    for task in list_tasks(limit=10_000, detail=True):
        if task.node_id:
            where.setdefault(task.name, set()).add(kind.get(task.node_id, "?"))
    return where


def mined_outputs(run_dir: Path) -> dict:
    scores = pq.read_table(run_dir / "judge" / "scores").sort_by([("query_id", "ascending"),
                                                                   ("candidate_id", "ascending")])
    return {"scores": scores, "mined.json": (run_dir / "mine" / "mined.json").read_bytes()}


@pytest.fixture(scope="module")
def fixed_run(node_types, demo_dir, tiny_dir, tmp_path_factory):
    """Mining and embedder training on a fixed cluster of one node per type; (run dir, placements)."""
    run_dir = tmp_path_factory.mktemp("fixed")
    with FixedCluster(node_types, "cpu-worker", "judge-gpu", "train-gpu"):
        config = mining_config(demo_dir, tiny_dir, run_dir, *PLACEMENT, *TRAIN)
        for _name, stage in STAGES:
            stage(config)
        train_embedder.run(config)
        where = placements(node_types)
    return run_dir, where


def test_stages_run_on_the_node_types_their_config_names(fixed_run):
    _, where = fixed_run

    def ran_on(fragment: str) -> set[str]:
        found = [types for name, types in where.items() if fragment in name]
        assert found, f"no actor or task named like {fragment!r}: {sorted(where)}"
        return set().union(*found)

    assert ran_on("EmbedBatch") == {"judge-gpu"}
    assert ran_on("JudgeShards") == {"judge-gpu"}
    assert ran_on("ingest_files") == {"cpu-worker"}  # reads
    assert ran_on("Write") == {"cpu-worker"}  # writes
    assert ran_on("RayTrainWorker") == {"train-gpu"}
    assert ran_on("retrieve_pools") == {"cpu-worker"}  # never the driver's head node
    assert ran_on("publish_train_embedder") == {"train-gpu"}


def run_in_thread(function, *args) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # re-raised by the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(interval_s)


def test_judge_survives_losing_its_node(fixed_run, node_types, demo_dir, tiny_dir, tmp_path, monkeypatch):
    reference, _ = fixed_run
    release = tmp_path / "node-gone"  # the first actor pauses after two shards until then
    monkeypatch.setattr(judge, "JudgeShards", judge_holding_after(2, release))
    with FixedCluster(node_types, "cpu-worker", "judge-gpu") as cluster:
        config = mining_config(demo_dir, tiny_dir, tmp_path, *PLACEMENT)
        for _name, stage in STAGES[:3]:
            stage(config)
        thread, outcome = run_in_thread(judge.run, config)
        scores = tmp_path / "judge" / "scores"
        wait_until(lambda: len(list(scores.glob("*.parquet"))) >= 2, 300, "two committed judge shards")
        cluster.add("judge-gpu")  # where the judge actor can restart
        cluster.cluster.remove_node(cluster.nodes[1])
        committed_at_loss = len(list(scores.glob("*.parquet")))
        release.touch()
        thread.join(600)
        assert "error" not in outcome, outcome.get("error")
        judged = outcome["result"]["rows"]
        assert committed_at_loss < judged["shards"], "the node was meant to go in the middle of the stage"
        assert judged["shards_scored_this_run"] == len(list(scores.glob("*.parquet"))) == judged["shards"]
        mine.run(config)
    rerun, undisturbed = mined_outputs(tmp_path), mined_outputs(reference)
    keys = list(zip(rerun["scores"]["query_id"].to_pylist(), rerun["scores"]["candidate_id"].to_pylist()))
    assert len(keys) == len(set(keys)), "a pair was judged twice"
    assert rerun == undisturbed


def test_training_survives_losing_its_node(fixed_run, node_types, demo_dir, tiny_dir, tmp_path, monkeypatch):
    reference, _ = fixed_run
    for stage in ("ingest", "embed", "retrieve", "judge", "mine"):
        shutil.copytree(reference / stage, tmp_path / stage)
    release = tmp_path / "node-gone"  # the first worker pauses after its step-5 checkpoint until then
    monkeypatch.setattr(train_embedder, "train_loop_per_worker",
                        on_first_attempt(train_loop_per_worker, partial(hold_after_step, EmbedderTrainer, 5, release)))
    with FixedCluster(node_types, "cpu-worker", "train-gpu") as cluster:
        config = mining_config(demo_dir, tiny_dir, tmp_path, *PLACEMENT, *TRAIN)
        thread, outcome = run_in_thread(train_embedder.run, config)
        checkpoints = tmp_path / "train_embedder" / "ray"
        wait_until(lambda: any(checkpoints.rglob("checkpoint_*")), 300, "a training checkpoint")
        cluster.add("train-gpu")
        cluster.cluster.remove_node(cluster.nodes[1])
        release.touch()
        thread.join(600)
        assert "error" not in outcome, outcome.get("error")
    final = max((json.loads(p.read_text()) for p in checkpoints.rglob("progress.json")), key=lambda p: p["step"])
    assert final["step"] == 30 and final["resumed_at"], "training was meant to restart from a checkpoint"
    losses = json.loads((tmp_path / "train_embedder" / "losses.json").read_text())
    assert losses == json.loads((reference / "train_embedder" / "losses.json").read_text())


def yaml_autoscaling_cluster(launcher_config: dict):
    """``ray.cluster_utils.AutoscalingCluster`` (fake multi-node provider, autoscaler v2) on a
    config made from the cluster YAML by :func:`tests.cluster.local_autoscaling_config` (the
    installed wheel lacks the example.yaml its own config generator starts from)."""
    from ray.cluster_utils import FAKE_HEAD_NODE_ID, AutoscalingCluster

    class FromYaml(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            config = local_autoscaling_config(launcher_config, **LOCAL)
            config["provider"].update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
            return config

    return FromYaml(head_resources={"CPU": 0}, worker_node_types={}, autoscaler_v2=True)


def autoscaler_node_types() -> tuple[list[str], list[str]]:
    """(node types up, node types terminated), as the autoscaler reports them."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    return ([node.ray_node_type_name for node in status.active_nodes + status.idle_nodes],
            [node.ray_node_type_name for node in status.failed_nodes])


def test_judge_demand_scales_its_node_type_from_zero_and_back(fixed_run, aws_config, demo_dir, tiny_dir, tmp_path,
                                                              monkeypatch):
    import ray

    reference, _ = fixed_run
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # `ray start`
    cluster = yaml_autoscaling_cluster(aws_config)
    cluster.start()
    try:
        ray.init("auto", log_to_driver=False)
        # embedders on the CPU workers here, so the judge is the first to ask for judge_gpu
        config = mining_config(demo_dir, tiny_dir, tmp_path, *PLACEMENT, "embed.actors.resources={cpu_node: 0.5}")
        for _name, stage in STAGES[:3]:
            stage(config)
        assert "cpu-worker" in sum(autoscaler_node_types(), [])
        # Ray Data's own scale-up asks for plain CPU bundles, which any node type can serve, so a
        # judge-gpu node may have come and gone already: the judge must start from none up.
        wait_until(lambda: "judge-gpu" not in autoscaler_node_types()[0], IDLE_TIMEOUT_S + 90,
                   "judge-gpu nodes started for CPU demand to scale down", 1)
        launched_before = sum(autoscaler_node_types(), []).count("judge-gpu")
        judge.run(config)
        launched = sum(autoscaler_node_types(), []).count("judge-gpu") - launched_before
        assert launched >= 1, "the judge's demand did not start a judge-gpu node"
        wait_until(lambda: "judge-gpu" not in autoscaler_node_types()[0], IDLE_TIMEOUT_S + 90,
                   "judge-gpu to scale down", 1)
        assert autoscaler_node_types()[1].count("judge-gpu") >= launched_before + 1
        mine.run(config)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert mined_outputs(tmp_path) == mined_outputs(reference)


def test_gpu_placement_without_cuda_fails_instead_of_running_on_the_cpu(node_types):
    """A worker given a GPU on a node whose torch sees no CUDA (a fake-GPU node here) stops
    with an error naming the node, where it used to fall back to the CPU."""
    import ray

    from unime.models.loading import resolve_device

    with FixedCluster(node_types, "cpu-worker") as cluster:
        cluster.cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.cluster.wait_for_nodes()
        on_gpu = ray.remote(num_gpus=1, max_retries=0)(resolve_device)
        with pytest.raises(ray.exceptions.RayTaskError, match="was given GPU.*no CUDA device on node"):
            ray.get(on_gpu.remote("auto"), timeout=120)
        # the same call without a GPU is an ordinary CPU run
        assert str(ray.get(ray.remote(num_cpus=1)(resolve_device).remote("auto"), timeout=120)) == "cpu"
