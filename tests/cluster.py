"""The node types of the cluster definitions under ``cluster/``, and their validators.

``launcher_node_types`` reads a Ray cluster-launcher YAML (``cluster/aws.yaml``,
``cluster/gcp.yaml``) and ``kuberay_node_types`` a KubeRay manifest, both into the same
:class:`NodeType`, so tests (and the autoscaling test) compare node types and custom resources
taken from the YAML itself rather than from a copy that could drift.

``validate_launcher_config`` checks a launcher config against the JSON schema Ray ships
(what ``ray up`` checks first); ``validate_kuberay_manifest`` checks a KubeRay custom
resource against its CRD the way the apiserver would, plus the unknown fields that
``kubectl apply --validate=strict`` rejects and the apiserver would otherwise drop silently.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ClusterConfigError(ValueError):
    """A cluster definition that Ray or Kubernetes would reject."""


@dataclass
class NodeType:
    """One node type (launcher) or group (KubeRay) and the Ray resources it offers.

    ``resources`` holds what the YAML declares (custom resources, and CPU/GPU where the YAML
    or the pod's limits state them); on AWS, Ray fills CPU/GPU in from the instance type.
    """

    name: str
    resources: dict[str, float] = field(default_factory=dict)
    min_workers: int = 0
    max_workers: int = 0
    is_head: bool = False
    idle_timeout_s: float | None = None

    @property
    def custom_resources(self) -> dict[str, float]:
        """The resources other than Ray's predefined ones (CPU, GPU, memory, ...)."""
        return {name: amount for name, amount in self.resources.items() if name not in PREDEFINED_RESOURCES}


PREDEFINED_RESOURCES = frozenset({"CPU", "GPU", "TPU", "memory", "object_store_memory"})
# KubeRay has no name for the head group; use the launcher YAMLs' name so both compare.
HEAD_NODE_TYPE = "head"


def load_yaml(path: str | Path) -> Any:
    """Parse one YAML document (the C loader when PyYAML has it: the CRDs are megabytes)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as stream:
        return yaml.load(stream, Loader=loader)


def launcher_node_types(config: dict) -> dict[str, NodeType]:
    """The ``available_node_types`` of a cluster-launcher config, head included.

    Missing ``max_workers`` follow Ray: the global ``max_workers`` for workers, 0 for the head.
    """
    head = config["head_node_type"]
    node_types = {}
    for name, spec in config["available_node_types"].items():
        is_head = name == head
        default_max = 0 if is_head else config.get("max_workers", 0)
        node_types[name] = NodeType(name=name, is_head=is_head,
                                    resources={key: float(value) for key, value in spec.get("resources", {}).items()},
                                    min_workers=int(spec.get("min_workers", 0)),
                                    max_workers=int(spec.get("max_workers", default_max)),
                                    idle_timeout_s=spec.get("idle_timeout_s"))
    return node_types


def local_node_types(node_types: dict[str, NodeType], cpus_per_node: float = 1, max_workers: int | None = None,
                     idle_timeout_s: float | None = None) -> dict[str, dict]:
    """The worker node types of a cluster YAML, scaled to one machine, in the shape Ray's
    fake multi-node provider takes (``ray.cluster_utils.AutoscalingCluster``'s
    ``worker_node_types``; ``resources`` also suits ``Cluster.add_node``).

    Names and custom resources are the YAML's, so a test built from them cannot drift from
    ``cluster/``; CPUs become ``cpus_per_node``, GPUs are left out (each GPU node type's custom
    resource stands for its GPUs here), ``max_workers`` and ``idle_timeout_s`` may be lowered.
    """
    local = {}
    for name, node_type in node_types.items():
        if node_type.is_head:
            continue
        spec = {"resources": {**node_type.custom_resources, "CPU": cpus_per_node}, "node_config": {},
                "min_workers": node_type.min_workers,
                "max_workers": min(node_type.max_workers, max_workers or node_type.max_workers)}
        timeout = idle_timeout_s if idle_timeout_s is not None else node_type.idle_timeout_s
        if timeout is not None:
            spec["idle_timeout_s"] = timeout
        local[name] = spec
    return local


FAKE_HEAD_NODE_TYPE = "ray.head.default"  # the name Ray's fake multi-node provider expects
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def local_autoscaling_config(config: dict, cpus_per_node: float = 1, max_workers: int | None = None,
                             idle_timeout_s: float | None = None) -> dict:
    """A cluster-launcher config turned into one for Ray's fake multi-node provider on this
    machine: the YAML's autoscaling settings and worker types (:func:`local_node_types`),
    a head without CPUs like the YAML's, and no cloud, docker or setup commands."""
    workers = local_node_types(launcher_node_types(config), cpus_per_node, max_workers, idle_timeout_s)
    local = {key: value for key, value in config.items() if key in ("upscaling_speed", "idle_timeout_minutes")}
    if idle_timeout_s is not None:
        local["idle_timeout_minutes"] = idle_timeout_s / 60
    return local | {
        "cluster_name": f"{config['cluster_name']}-local",
        "max_workers": sum(spec["max_workers"] for spec in workers.values()),
        # "external" + module: the same fake provider as type "fake_multinode", without the
        # defaults file that type reads (the ray wheel does not ship it)
        "provider": {"type": "external", "module": FAKE_PROVIDER, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {**workers, FAKE_HEAD_NODE_TYPE: {"resources": {"CPU": 0}, "node_config": {},
                                                                  "max_workers": 0}},
        "head_node_type": FAKE_HEAD_NODE_TYPE, "auth": {}, "docker": {}, "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
    }


def kuberay_node_types(manifest: dict) -> dict[str, NodeType]:
    """The head and worker groups of a RayCluster, or of the cluster a RayService
    (``rayClusterConfig``) or RayJob (``rayClusterSpec``) brings up, as :class:`NodeType`.
    """
    spec = ray_cluster_spec(manifest)
    node_types = {HEAD_NODE_TYPE: NodeType(name=HEAD_NODE_TYPE, is_head=True,
                                           resources=group_resources(spec["headGroupSpec"]))}
    for group in spec.get("workerGroupSpecs", []):
        hosts = int(group.get("numOfHosts", 1))  # a multi-host replica is that many Ray nodes
        node_types[group["groupName"]] = NodeType(name=group["groupName"], resources=group_resources(group),
                                                  min_workers=int(group.get("minReplicas", 0)) * hosts,
                                                  max_workers=int(group.get("maxReplicas", 0)) * hosts)
    return node_types


def ray_cluster_spec(manifest: dict) -> dict:
    """The RayCluster spec inside a RayCluster, RayService or RayJob manifest."""
    spec = manifest.get("spec", {})
    for key in ("rayClusterConfig", "rayClusterSpec"):
        if key in spec:
            return spec[key]
    if "headGroupSpec" not in spec:
        raise ClusterConfigError(f"{manifest.get('kind', 'manifest')} {manifest.get('metadata', {}).get('name')!r} "
                                 "defines no Ray cluster (a RayJob with clusterSelector runs on an existing one)")
    return spec


def group_resources(group: dict) -> dict[str, float]:
    """The Ray resources of one KubeRay group, read as ``ray start`` on its pods would get them:
    ``num-cpus``/``num-gpus`` and the ``resources`` JSON from ``rayStartParams``, else CPU and
    GPU from the Ray container's limits (then requests), as KubeRay and Ray's autoscaler do.
    """
    params = group.get("rayStartParams", {})
    container = group["template"]["spec"]["containers"][0].get("resources", {})
    quantities = {**container.get("requests", {}), **container.get("limits", {})}
    resources: dict[str, float] = {}
    if "num-cpus" in params:
        resources["CPU"] = float(params["num-cpus"])
    elif "cpu" in quantities:
        resources["CPU"] = float(_round_up_cpu(quantities["cpu"]))
    gpus = params.get("num-gpus", next((q for name, q in quantities.items() if name.endswith("/gpu")), None))
    if gpus is not None and float(gpus) > 0:
        resources["GPU"] = float(gpus)
    if "resources" in params:
        resources.update({name: float(amount) for name, amount in ray_start_resources(params["resources"]).items()})
    return resources


def ray_start_resources(value: str) -> dict[str, float]:
    """Parse a ``rayStartParams.resources`` value: the JSON object KubeRay passes to
    ``ray start --resources``, shell-quoted as ``'"{\\"judge_gpu\\": 1}"'`` in the YAML."""
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].replace('\\"', '"')
    try:
        resources = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClusterConfigError(f"rayStartParams.resources {value!r} is not a JSON object: {error}") from None
    if not isinstance(resources, dict):
        raise ClusterConfigError(f"rayStartParams.resources {value!r} is not a JSON object")
    return resources


def _round_up_cpu(quantity: str | int | float) -> int:
    text = str(quantity)
    return math.ceil(int(text[:-1]) / 1000) if text.endswith("m") else math.ceil(float(text))


def validate_launcher_config(config: dict, source: str = "cluster config") -> None:
    """Check a cluster-launcher config against ``ray/autoscaler/ray-schema.json``, the schema
    ``ray up`` validates with. Raises :class:`ClusterConfigError` naming ``source`` and every
    failing field."""
    import jsonschema

    schema = json.loads(_ray_package_dir().joinpath("autoscaler", "ray-schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [f"{_dotted(error.absolute_path) or '<top level>'}: {error.message}"
                for error in sorted(validator.iter_errors(config), key=lambda e: _dotted(e.absolute_path))]
    if problems:
        raise ClusterConfigError(f"{source} does not match Ray's cluster schema:\n  " + "\n  ".join(problems))


def _ray_package_dir() -> Path:
    # find_spec locates the package without running ray/__init__.py (seconds of imports).
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterConfigError("ray is not installed: its cluster schema ships with it")
    return Path(next(iter(spec.submodule_search_locations)))


def validate_kuberay_manifest(manifest: dict, crd: dict) -> list[str]:
    """Problems of a KubeRay manifest against its CRD (empty: valid).

    Validates against the ``openAPIV3Schema`` of the served CRD version that the manifest's
    ``apiVersion`` names (JSON Schema Draft 7; OpenAPI's ``x-kubernetes-*`` extensions and
    CEL rules are not evaluated), then lists every field the schema does not declare.
    """
    import jsonschema

    schema, problems = _served_schema(manifest, crd)
    if schema is None:
        return problems
    validator = jsonschema.Draft7Validator(schema)
    for error in sorted(validator.iter_errors(manifest), key=lambda e: _dotted(e.absolute_path)):
        problems.append(f"{_dotted(error.absolute_path) or '<top level>'}: {error.message}")
    problems.extend(f"{path}: unknown field (kubectl --validate=strict rejects it; the apiserver drops it)"
                    for path in undeclared_fields(manifest, schema))
    return problems


def _served_schema(manifest: dict, crd: dict) -> tuple[dict | None, list[str]]:
    names = crd["spec"]["names"]
    group, _, version = str(manifest.get("apiVersion", "")).rpartition("/")
    if manifest.get("kind") != names["kind"]:
        return None, [f"kind: {manifest.get('kind')!r} is not {names['kind']!r}, which this CRD defines"]
    if group != crd["spec"]["group"]:
        return None, [f"apiVersion: group {group!r} is not {crd['spec']['group']!r}"]
    for candidate in crd["spec"]["versions"]:
        if candidate["name"] == version and candidate.get("served"):
            return candidate["schema"]["openAPIV3Schema"], []
    served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
    return None, [f"apiVersion: version {version!r} is not served by {names['kind']} (served: {served})"]


def undeclared_fields(value: Any, schema: dict, path: str = "") -> Iterator[str]:
    """Dotted paths of keys in ``value`` that ``schema`` does not declare: keys of an object
    schema with ``properties`` but neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields``. Objects declared only as ``type: object`` (as
    ``metadata`` is) accept anything."""
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from undeclared_fields(item, schema["items"], f"{path}[{index}]")
    if not isinstance(value, dict):
        return
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    closed = properties is not None and extra is None and not schema.get("x-kubernetes-preserve-unknown-fields")
    for key, child in value.items():
        child_path = f"{path}.{key}" if path else str(key)
        if properties is not None and key in properties:
            yield from undeclared_fields(child, properties[key], child_path)
        elif isinstance(extra, dict):
            yield from undeclared_fields(child, extra, child_path)
        elif closed:
            yield child_path


def _dotted(parts: Iterable[Any]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
