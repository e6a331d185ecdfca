from pathlib import Path

import pytest

from tests.helpers import ROOT, config_classes
from unime.config import ConfigError, PipelineConfig, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
CONFIG_CLASSES = config_classes()


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "qwen2vl_2b.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_yaml_loads_and_validates(path):
    cls = CONFIG_CLASSES.get(path.name, PipelineConfig)
    config = load_config(path, cls=cls)
    assert isinstance(config, cls)
    assert cls is not PipelineConfig or config.stages


def test_paper_settings_in_the_cluster_config():
    config = load_config(Path(__file__).parent.parent / "configs" / "qwen2vl_2b.yaml")
    assert (config.mining.pool_size, config.mining.num_negatives, config.mining.beta) == (50, 10, 0.01)
    train = config.train_embedder
    assert (train.lora.r, train.lora.alpha, train.lora.dropout, train.lora.use_dora) == (16, 64, 0.1, True)
    assert (train.optim.lr, train.warmup_steps, train.max_steps, train.temperature) == (1e-4, 200, 2000, 0.02)
    assert (config.train_reranker.lora.r, config.train_reranker.lora.alpha) == (128, 256)


def test_dotted_overrides_are_typed():
    config = load_config(None, ["train_embedder.optim.lr=3e-5", "mining.beta=0", "data.train=[a, s3://b/c]",
                                "models.min_pixels=null", "ray.num_cpus=2"])
    assert config.train_embedder.optim.lr == 3e-5 and isinstance(config.mining.beta, float)
    assert config.data.train == ["a", "s3://b/c"]
    assert config.models.min_pixels is None and config.ray.num_cpus == 2


@pytest.mark.parametrize(("override", "message"), [
    ("mining.beta=-0.5", "mining.beta: must be >= 0"),
    ("mining.colour=red", "mining: unknown key(s) ['colour']"),
    ("models.dtype=fp8", "models.dtype: 'fp8' is not one of"),
    ("train_embedder.max_steps=lots", "train_embedder.max_steps: expected int, got str"),
    ("ray.num_cpus=true", "ray.num_cpus"),
    ("data.limits.max_pixels=[1]", "data.limits.max_pixels: expected int, got list"),
    ("mining.pool_size=5", "mining.pool_size: needs pool_size >= num_negatives"),
    ("nonsense", "expected dotted.key=value"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mining: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_serve_config_validates_against_rays_schema():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).parent.parent / "serve" / "config.yaml"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    app = schema.applications[0]
    assert app.import_path == "serve.app:build"
    assert {d.name for d in app.deployments} == {"Ingress", "EmbedderDeployment", "RetrieverDeployment",
                                                  "RerankerDeployment"}
    from unime.serving import deployments

    for name in ("Ingress", "EmbedderDeployment", "RetrieverDeployment", "RerankerDeployment"):
        assert hasattr(deployments, name)  # the YAML names deployments that exist


def test_serve_app_builder_binds_the_composed_app():
    import sys

    from ray.serve import Application

    sys.path.insert(0, str(Path(__file__).parent.parent))
    from serve.app import build

    app = build({"config": str(Path(__file__).parent.parent / "configs" / "demo.yaml"),
                 "overrides": ["serve.api_key=k"]})
    assert isinstance(app, Application)


def test_unime_v2_configs_feed_the_authors_inputs():
    """The paper's configs use the released models' input recipe; the mining embedder VLM2Vec's."""
    cluster = load_config(Path(__file__).parent.parent / "configs" / "qwen2vl_2b.yaml")
    assert (cluster.models.input_format, cluster.embed.input_format) == ("unime-v2", "vlm2vec")
    assert cluster.models.max_pixels is None  # the checkpoint's own processor bounds
    released = load_config(Path(__file__).parent.parent / "configs" / "eval_unime_v2_qwen2vl_2b.yaml")
    assert (released.models.input_format, released.models.image_resolution) == ("unime-v2", "high")
    assert released.eval.rerank_modes[0] == "listwise-greedy"
    assert load_config(None).models.input_format == "qwen2-vl-native"


def test_vllm_engine_options_apply_per_device():
    """GPU-only sizing only on a GPU; eager (no CUDA graphs) on CPUs unless the config says."""
    from unime.config import VLLMEngineConfig
    from unime.judge.vllm_backend import engine_arguments

    engine = VLLMEngineConfig(gpu_memory_utilization=0.8, max_num_batched_tokens=16384, max_num_seqs=256)
    assert engine_arguments(engine, on_gpu=True) == {"enforce_eager": False, "gpu_memory_utilization": 0.8,
                                                     "max_num_batched_tokens": 16384, "max_num_seqs": 256}
    assert engine_arguments(engine, on_gpu=False) == {"enforce_eager": True, "max_num_batched_tokens": 16384,
                                                      "max_num_seqs": 256}
    assert engine_arguments(VLLMEngineConfig(enforce_eager=True), on_gpu=True)["enforce_eager"] is True
    config = load_config(Path(__file__).parent.parent / "configs" / "qwen2vl_2b.yaml")
    assert config.judge.engine.gpu_memory_utilization == 0.9 and config.judge.engine.max_num_seqs == 256
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        load_config(None, ["judge.engine.gpu_memory_utilization=1.5"])


def test_where_and_how_big_work_runs_never_reaches_a_fingerprint():
    """Placement, engine sizes, caches and checkpoint cadence change no stage's fingerprint;
    what a stage computes with does."""
    from unime.config import fingerprint_view

    base = load_config(None)
    moved = load_config(None, [
        "embed.actors.num_actors=4", "embed.image_cpus=0.25", "judge.actors.resources={judge_gpu: 1}",
        "judge.engine.max_num_seqs=64", "mining.placement.num_gpus=1", "index.placement.resources={cpu_node: 1}",
        "data.image_cache_mib=64", "train_embedder.placement.num_workers=2", "train_embedder.checkpoint_every=7",
        "train_reranker.gradient_checkpointing=true", "eval.actors.num_cpus=3", "eval.rerank_engine.kv_cache_gib=9"])
    sections = ("data", "models", "embed", "mining", "judge", "train_embedder", "train_reranker", "eval", "index")
    for name in sections:
        assert fingerprint_view(getattr(base, name)) == fingerprint_view(getattr(moved, name)), name
    changed = load_config(None, ["mining.beta=0.05", "judge.max_pixels=1000", "train_reranker.optim.lr=1e-3",
                                 "eval.rerank_k=5", "index.faiss.nprobe=4", "data.limits.max_pixels=99"])
    for name in ("mining", "judge", "train_reranker", "eval", "index", "data"):
        assert fingerprint_view(getattr(base, name)) != fingerprint_view(getattr(changed, name)), name


def test_a_section_given_in_part_keeps_its_fields_defaults():
    """``train_reranker.lora.r=8`` changes the rank only: the reranker's own alpha, dropout and
    weight decay stay (not LoraConfig's or OptimConfig's class defaults, the embedder's), and
    so does the judge's GPU per actor when only its actor count is set."""
    config = load_config(None, ["train_reranker.lora.r=8", "train_reranker.optim.lr=1e-3",
                                "judge.actors.num_actors=4", "train_embedder.placement.num_workers=2"])
    reranker = config.train_reranker
    assert (reranker.lora.r, reranker.lora.alpha, reranker.lora.dropout, reranker.lora.use_dora) == (8, 256, 0.05, False)
    assert (reranker.optim.lr, reranker.optim.weight_decay) == (1e-3, 0.01)
    assert (config.judge.actors.num_actors, config.judge.actors.num_gpus) == (4, 1.0)
    assert (config.train_embedder.placement.num_workers, config.train_embedder.placement.use_gpu) == (2, True)
    assert (config.train_embedder.optim.weight_decay, config.train_embedder.lora.use_dora) == (0.0, True)


def test_training_fingerprints_keep_use_gpu_but_not_the_rest_of_placement():
    from unime.pipeline import train_embedder

    base = load_config(ROOT / "configs" / "demo.yaml")
    moved = load_config(ROOT / "configs" / "demo.yaml", ["train_embedder.placement.num_workers=4",
                                                          "train_embedder.placement.max_failures=0"])
    on_gpu = load_config(ROOT / "configs" / "demo.yaml", ["train_embedder.placement.use_gpu=true"])
    payload = train_embedder.stage.fingerprint
    assert payload(base) == payload(moved)
    assert payload(base) != payload(on_gpu)
