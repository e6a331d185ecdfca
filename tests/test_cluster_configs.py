"""The cluster definitions under cluster/: valid for Ray's launcher schema and KubeRay's CRDs,
consistent with each other, and able to host what configs/ and the RayService ask for.
No Ray runtime: schemas and Ray's own config translators only."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.cluster import (
    ClusterConfigError,
    NodeType,
    kuberay_node_types,
    launcher_node_types,
    load_yaml,
    ray_cluster_spec,
    ray_start_resources,
    undeclared_fields,
    validate_kuberay_manifest,
    validate_launcher_config,
)
from tests.helpers import ROOT, config_classes
from unime.config import ActorConfig, TaskConfig, TrainPlacement, load_config

CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = ["aws.yaml", "gcp.yaml"]
CRD_FILES = {"raycluster.yaml": "ray.io_rayclusters.yaml", "rayjob.yaml": "ray.io_rayjobs.yaml",
             "rayservice.yaml": "ray.io_rayservices.yaml"}
PIPELINE_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.name not in config_classes())
# Kubernetes builds pod and service names from these: DNS-1123 labels.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def kuberay_crd_dir() -> Path:
    """$UNIME_KUBERAY_CRDS, else the shared schemas next to the checkout, else /work/shared."""
    if os.environ.get("UNIME_KUBERAY_CRDS"):
        candidates = [Path(os.environ["UNIME_KUBERAY_CRDS"])]
    else:
        candidates = [ROOT.parent / "shared" / "schemas" / "kuberay", Path("/work/shared/schemas/kuberay")]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in CRD_FILES.values()):
            return candidate
    pytest.fail(f"KubeRay CRDs ({', '.join(CRD_FILES.values())}) not found; looked in "
                f"{', '.join(map(str, candidates))}. Set UNIME_KUBERAY_CRDS to their folder.")


@pytest.fixture(scope="session")
def kuberay_crds() -> dict[str, dict]:
    folder = kuberay_crd_dir()
    return {manifest: load_yaml(folder / crd) for manifest, crd in CRD_FILES.items()}


def launcher(name: str) -> dict:
    return load_yaml(CLUSTER / name)


def kuberay(name: str) -> dict:
    return load_yaml(CLUSTER / "kuberay" / name)


def serve_config_v2() -> dict:
    return yaml.safe_load(kuberay("rayservice.yaml")["spec"]["serveConfigV2"])


# ---------------------------------------------------------------- schema validation


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_matches_rays_schema(name):
    validate_launcher_config(launcher(name), f"cluster/{name}")


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_passes_ray_ups_offline_checks(name):
    """What `ray up` does before it calls the cloud: merge the provider's defaults, then validate
    (bootstrapping the provider needs credentials, so it is left out)."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as error:  # private API: gone in some future Ray
        pytest.skip(f"Ray's launcher validation moved: {error}")
    validate_config(prepare_config(launcher(name)))


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda c: c.update(max_worker=c.pop("max_workers")), "max_worker"),
    (lambda c: c["available_node_types"]["judge-gpu"].update(min_workers="zero"), "judge-gpu.min_workers"),
    (lambda c: c["available_node_types"]["serve-gpu"]["resources"].update(serve_gpu=0.5), "serve_gpu"),
])
def test_launcher_validation_names_the_bad_field(mutate, field):
    config = launcher("aws.yaml")
    mutate(config)
    with pytest.raises(ClusterConfigError, match=re.escape(field)) as raised:
        validate_launcher_config(config, "cluster/aws.yaml")
    assert "cluster/aws.yaml" in str(raised.value)


@pytest.mark.parametrize("name", sorted(CRD_FILES))
def test_kuberay_manifest_matches_its_crd(name, kuberay_crds):
    assert validate_kuberay_manifest(kuberay(name), kuberay_crds[name]) == []


def test_kuberay_validation_reports_unknown_fields_and_wrong_types(kuberay_crds):
    manifest = kuberay("raycluster.yaml")
    judge = manifest["spec"]["workerGroupSpecs"][1]
    judge["maxReplica"] = judge.pop("maxReplicas")
    judge["replicas"] = "three"
    judge["template"]["spec"]["containers"][0]["resource"] = {}
    problems = "\n".join(validate_kuberay_manifest(manifest, kuberay_crds["raycluster.yaml"]))
    assert "spec.workerGroupSpecs[1].maxReplica: unknown field" in problems
    assert "spec.workerGroupSpecs[1]: 'maxReplicas' is a required property" in problems
    assert "spec.workerGroupSpecs[1].replicas: 'three' is not of type 'integer'" in problems
    assert "spec.workerGroupSpecs[1].template.spec.containers[0].resource: unknown field" in problems


def test_kuberay_validation_checks_kind_and_served_version(kuberay_crds):
    crd = kuberay_crds["raycluster.yaml"]
    assert "not served" in validate_kuberay_manifest({**kuberay("raycluster.yaml"), "apiVersion": "ray.io/v9"}, crd)[0]
    assert "RayJob" in validate_kuberay_manifest(kuberay("rayjob.yaml"), crd)[0]


def test_undeclared_fields_leave_schemaless_objects_alone():
    schema = {"properties": {"metadata": {"type": "object"},
                             "spec": {"properties": {"groups": {"items": {"properties": {"name": {}}}}},
                                      "additionalProperties": False},
                             "labels": {"additionalProperties": {"type": "string"}}}}
    manifest = {"metadata": {"name": "x", "anything": 1}, "labels": {"free": "form"},
                "spec": {"groups": [{"name": "a"}, {"nmae": "b"}], "extra": 1}, "stray": True}
    # spec.extra is additionalProperties: false (jsonschema reports it), not a pruned field
    assert list(undeclared_fields(manifest, schema)) == ["spec.groups[1].nmae", "stray"]


# ---------------------------------------------------------------- one cluster, four spellings


def test_node_types_agree_across_aws_gcp_and_kuberay():
    clusters = {"aws.yaml": launcher_node_types(launcher("aws.yaml")),
                "gcp.yaml": launcher_node_types(launcher("gcp.yaml")),
                "raycluster.yaml": kuberay_node_types(kuberay("raycluster.yaml"))}
    shape = {name: {t.name: (t.is_head, t.custom_resources, t.min_workers, t.max_workers) for t in types.values()}
             for name, types in clusters.items()}
    assert shape["gcp.yaml"] == shape["aws.yaml"], "gcp.yaml drifted from aws.yaml"
    assert shape["raycluster.yaml"] == shape["aws.yaml"], "raycluster.yaml drifted from aws.yaml"
    assert set(shape["aws.yaml"]) == {"head", "cpu-worker", "judge-gpu", "train-gpu", "serve-gpu"}
    for name, types in clusters.items():
        assert types["head"].resources.get("CPU") == 0, f"{name}: the head must offer no CPU"
        for node in types.values():
            for resource, amount in node.custom_resources.items():
                # judge_gpu, train_gpu, serve_gpu each stand for one GPU of their node
                if resource.endswith("_gpu") and "GPU" in node.resources:
                    assert amount == node.resources["GPU"], f"{name}: {node.name} {resource}"


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayservice.yaml"])
def test_kuberay_node_types_match_rays_own_translation(name):
    """Ray's autoscaler reads a RayCluster into node types itself; ours must read the same."""
    try:
        from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    except ImportError as error:  # private API: gone in some future Ray
        pytest.skip(f"Ray's KubeRay translation moved: {error}")
    manifest = kuberay(name)
    ray_cr = {"metadata": {"name": "unime", "namespace": "default"}, "spec": ray_cluster_spec(manifest)}
    theirs = _derive_autoscaling_config_from_ray_cr(ray_cr)["available_node_types"]
    theirs["head"] = theirs.pop("headgroup")
    ours = kuberay_node_types(manifest)
    assert set(ours) == set(theirs)
    for node in ours.values():
        ray_resources = {k: float(v) for k, v in theirs[node.name]["resources"].items() if k != "memory"}
        assert node.resources == ray_resources, node.name
        assert (node.min_workers, node.max_workers) == (theirs[node.name]["min_workers"],
                                                       theirs[node.name]["max_workers"])


def test_ray_start_resources_reads_kuberays_quoting():
    assert ray_start_resources('"{\\"judge_gpu\\": 1, \\"x\\": 2}"') == {"judge_gpu": 1, "x": 2}
    assert ray_start_resources('{"judge_gpu": 1}') == {"judge_gpu": 1}
    with pytest.raises(ClusterConfigError, match="JSON"):
        ray_start_resources('"{judge_gpu: 1}"')


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayservice.yaml"])
def test_kuberay_names_are_dns_labels(name):
    manifest = kuberay(name)
    names = [manifest["metadata"]["name"]] + [g["groupName"] for g in ray_cluster_spec(manifest)["workerGroupSpecs"]]
    assert [n for n in names if not DNS_LABEL.fullmatch(n)] == []


def test_images_run_the_kuberay_ray_version():
    import ray

    versions = {ray_cluster_spec(kuberay(n))["rayVersion"] for n in ("raycluster.yaml", "rayservice.yaml")}
    assert len(versions) == 1
    (version,) = versions
    assert version.rsplit(".", 1)[0] == ray.__version__.rsplit(".", 1)[0], "cluster Ray != the project's Ray"
    images = [launcher(n)["docker"]["image"] for n in LAUNCHER_YAMLS]
    for name in ("raycluster.yaml", "rayservice.yaml"):
        spec = ray_cluster_spec(kuberay(name))
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            images += [c["image"] for c in group["template"]["spec"]["containers"]]
    assert [image for image in images if version not in image.rsplit(":", 1)[-1]] == []


def test_gcp_boot_disks_are_in_the_provider_zone():
    config = launcher("gcp.yaml")
    zone = config["provider"]["availability_zone"]
    for name, node in config["available_node_types"].items():
        for disk in node["node_config"]["disks"]:
            assert f"zones/{zone}/" in disk["initializeParams"]["diskType"], name


# ---------------------------------------------------------------- what runs there fits there


def stage_requests(config) -> dict[str, tuple[dict[str, float], int]]:
    """Every actor pool and Ray Train run of a pipeline config: name -> (one actor's or one
    worker's resources, how many), as unime.pipeline asks Ray for them."""
    requests = {}
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if isinstance(getattr(value, "placement", None), TrainPlacement):
            train = value.placement
            bundle = {"CPU": train.cpus_per_worker, "GPU": 1.0 if train.use_gpu else 0.0, **train.resources_per_worker}
            requests[section.name] = (bundle, train.num_workers)
        if isinstance(getattr(value, "actors", None), ActorConfig):
            actors = value.actors
            bundle = {"CPU": actors.num_cpus, "GPU": actors.num_gpus, **actors.resources}
            requests[f"{section.name}.actors"] = (bundle, actors.num_actors)
        if isinstance(getattr(value, "placement", None), TaskConfig):
            task = value.placement
            requests[f"{section.name}.placement"] = ({"CPU": task.num_cpus, "GPU": task.num_gpus, **task.resources}, 1)
    serve = config.serve  # one embedder or reranker replica
    requests["serve.models"] = ({"CPU": serve.replica_cpus, "GPU": serve.model_gpus, **serve.model_resources}, 1)
    return requests


def fits_per_node(node: NodeType, request: dict[str, float]) -> float:
    """How many of ``request`` one node of this type holds (inf for a request of nothing)."""
    counts = [math.floor(node.resources.get(name, 0) / amount) for name, amount in request.items() if amount > 0]
    return min(counts, default=math.inf)


def capacity_at_max_scale(node_types: dict[str, NodeType], request: dict[str, float]) -> float:
    return sum(node.max_workers * fits_per_node(node, request) for node in node_types.values() if not node.is_head)


def unoffered(request: dict[str, float], node_types: dict[str, NodeType]) -> list[str]:
    offered = {name for node in node_types.values() for name in node.custom_resources}
    return sorted(name for name, amount in request.items() if amount > 0 and name not in {"CPU", "GPU"} | offered)


def all_clusters() -> dict[str, dict[str, NodeType]]:
    return {"aws.yaml": launcher_node_types(launcher("aws.yaml")), "gcp.yaml": launcher_node_types(launcher("gcp.yaml")),
            "raycluster.yaml": kuberay_node_types(kuberay("raycluster.yaml"))}


@pytest.mark.parametrize("config_name", PIPELINE_CONFIGS)
def test_pipeline_stages_fit_the_cluster(config_name):
    requests = stage_requests(load_config(ROOT / "configs" / config_name))
    assert {"judge.actors", "embed.actors", "eval.actors", "train_embedder", "train_reranker"} <= set(requests)
    for cluster, node_types in all_clusters().items():
        for stage, (bundle, count) in requests.items():
            assert unoffered(bundle, node_types) == [], f"{config_name} {stage}: not offered by {cluster}"
            if cluster != "aws.yaml":  # AWS leaves CPU/GPU to the instance type: nothing to add up
                assert capacity_at_max_scale(node_types, bundle) >= count, f"{config_name} {stage} on {cluster}"


def test_stage_check_catches_a_resource_no_node_offers():
    config = load_config(ROOT / "configs" / "qwen2vl_2b.yaml",
                         ["judge.actors.resources={judge_gpu: 1}", "train_embedder.placement.resources_per_worker={tpu_v5: 1}"])
    requests = stage_requests(config)
    node_types = all_clusters()["raycluster.yaml"]
    assert unoffered(requests["judge.actors"][0], node_types) == []
    assert capacity_at_max_scale(node_types, requests["judge.actors"][0]) == 16
    assert unoffered(requests["train_embedder"][0], node_types) == ["tpu_v5"]
    assert capacity_at_max_scale(node_types, requests["train_embedder"][0]) == 0


def test_rayservice_serve_config_validates_and_mirrors_serve_config():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config_v2())
    ours, repo = serve_config_v2(), yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert {k: v for k, v in ours.items() if k != "applications"} == \
        {k: v for k, v in repo.items() if k != "applications"}
    (app,), (repo_app,) = ours["applications"], repo["applications"]
    for key in ("name", "route_prefix", "import_path", "args"):
        assert app[key] == repo_app[key], key
    assert app["runtime_env"]["working_dir"].endswith(".zip")  # pods can't see a local checkout
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in repo_app["deployments"]]
    for deployment, repo_deployment in zip(app["deployments"], repo_app["deployments"]):
        for key in ("autoscaling_config", "ray_actor_options", "max_ongoing_requests"):
            assert deployment[key] == repo_deployment[key], (deployment["name"], key)


def test_serve_deployments_can_reach_their_autoscaling_targets():
    """A replica never holds more than max_ongoing_requests, so a target above it never
    triggers a scale-up; the embedder's must also let a full batch form (2 x serve.batch_size)."""
    from unime.config import load_config

    batch = load_config(ROOT / "configs" / "qwen2vl_2b.yaml").serve.batch_size
    for config in (serve_config_v2(), yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())):
        for deployment in config["applications"][0]["deployments"]:
            target = deployment["autoscaling_config"]["target_ongoing_requests"]
            assert target <= deployment["max_ongoing_requests"], deployment["name"]
            if deployment["name"] == "EmbedderDeployment":
                assert deployment["max_ongoing_requests"] >= 2 * batch


def test_rayservice_replicas_fit_its_cluster():
    node_types = kuberay_node_types(kuberay("rayservice.yaml"))
    deployments = serve_config_v2()["applications"][0]["deployments"]
    demand_at_max: dict[str, float] = {}
    demand_at_min: dict[str, float] = {}
    for deployment in deployments:
        options, scaling = deployment["ray_actor_options"], deployment["autoscaling_config"]
        bundle = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0), **options.get("resources", {})}
        assert unoffered(bundle, node_types) == [], deployment["name"]
        assert capacity_at_max_scale(node_types, bundle) >= scaling["max_replicas"], deployment["name"]
        for name, amount in options.get("resources", {}).items():
            demand_at_max[name] = demand_at_max.get(name, 0) + amount * scaling["max_replicas"]
            demand_at_min[name] = demand_at_min.get(name, 0) + amount * scaling["min_replicas"]
    assert demand_at_max.get("serve_gpu"), "model replicas should ask for serve_gpu"
    for name, amount in demand_at_max.items():
        # the deployments together, at max_replicas, must fit the group at maxReplicas; their
        # min_replicas the group at minReplicas (so the service starts without waiting for nodes)
        assert amount <= sum(t.max_workers * t.resources.get(name, 0) for t in node_types.values()), name
        assert demand_at_min[name] <= sum(t.min_workers * t.resources.get(name, 0) for t in node_types.values()), name


def test_rayjob_runs_the_pipeline_on_the_raycluster():
    job = kuberay("rayjob.yaml")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": kuberay("raycluster.yaml")["metadata"]["name"]}
    assert "rayClusterSpec" not in job and job["shutdownAfterJobFinishes"] is False
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert runtime_env["working_dir"].startswith("s3://") and runtime_env["working_dir"].endswith(".zip")
    assert all(isinstance(value, str) for value in runtime_env["env_vars"].values())
    script, *args = job["entrypoint"].split()[1:]
    config_path = ROOT / args[args.index("--config") + 1]
    assert (ROOT / script).is_file() and config_path.is_file()
    # ray.init(runtime_env=config.ray.runtime_env) inside a job fails when the job's runtime_env
    # names the same field or env var (ray.runtime_env.runtime_env._merge_runtime_env)
    config_env = load_config(config_path).ray.runtime_env
    assert (set(runtime_env) - {"env_vars"}) & (set(config_env) - {"env_vars"}) == set()
    assert set(runtime_env.get("env_vars", {})) & set(config_env.get("env_vars", {})) == set()



@pytest.mark.parametrize("config_name", PIPELINE_CONFIGS)
def test_gpu_configs_serve_their_models_on_the_serve_gpu_nodes(config_name):
    """A config whose stages run on GPUs serves on GPUs too, on the serve-gpu node type (not on
    a judge or training node's GPU); serve/config.yaml's model replicas ask for the same."""
    config = load_config(ROOT / "configs" / config_name)
    requests = stage_requests(config)
    (app,) = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())["applications"]
    serves = "serve" in config.stages or Path(app["args"]["config"]).name == config_name
    if not serves or not any(bundle.get("GPU") for name, (bundle, _) in requests.items() if name != "serve.models"):
        return
    bundle, _ = requests["serve.models"]
    assert bundle["GPU"] >= 1 and bundle.get("serve_gpu") == 1, config_name
    deployments = app["deployments"]
    for deployment in deployments:
        options = deployment["ray_actor_options"]
        if options.get("num_gpus"):
            assert options.get("resources", {}).get("serve_gpu") == options["num_gpus"], deployment["name"]


def gpu_stack() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "gpu_stack.yaml").read_text())


def test_the_gpu_extra_and_the_node_images_follow_the_one_gpu_stack():
    import tomllib

    from unime.models.loading import minimum_driver

    stack = gpu_stack()
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert f"vllm=={stack['vllm']}" in extra and any(dep.startswith(stack["faiss"]) for dep in extra)
    assert minimum_driver(stack["cuda"]) == stack["min_driver"]  # the runtime check's rule agrees
    for name in ("aws.yaml", "gcp.yaml"):
        config = launcher(name)
        assert config["docker"]["image"] == stack["ray_image"], name
        assert f"cluster/check_gpu_driver.sh {stack['min_driver']}" in config["setup_commands"][0], name
    gcp = launcher("gcp.yaml")["available_node_types"]
    for node_type, spec in gcp.items():
        if spec["node_config"].get("guestAccelerators"):
            image = spec["node_config"]["disks"][0]["initializeParams"]["sourceImage"]
            driver = int(re.search(r"nvidia-(\d+)", image).group(1))
            assert driver >= stack["min_driver"], (node_type, image)
    tag = stack["ray_image"].split(":", 1)[1]
    for name in ("raycluster.yaml", "rayservice.yaml"):
        images = re.findall(r"image: (\S+)", (ROOT / "cluster" / "kuberay" / name).read_text())
        assert images and all(image.endswith(f"ray{tag}") for image in images), (name, images)


@pytest.mark.parametrize(("driver", "passes"), [("570.86.15", False), ("580.65.06", True), ("590.1", True),
                                                (None, True)])
def test_node_setup_stops_on_a_driver_older_than_the_stack_needs(tmp_path, driver, passes):
    import shutil
    import subprocess

    if driver is None and shutil.which("nvidia-smi"):
        pytest.skip("this host has a real nvidia-smi")
    if driver is not None:  # a fake nvidia-smi printing that driver version
        fake = tmp_path / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\necho {driver}\n")
        fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    result = subprocess.run(["bash", str(ROOT / "cluster" / "check_gpu_driver.sh"), str(gpu_stack()["min_driver"])],
                            capture_output=True, text=True, env=env)
    assert (result.returncode == 0) == passes, result
    if not passes:
        assert f"NVIDIA driver {driver}" in result.stderr and "needs >= 580" in result.stderr
