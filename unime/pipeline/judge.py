"""Judge stage: P(Yes) of every (query, candidate) pair that mining needs (docs/method.md section 3).

Each query is judged against its positive and its pool (~51 pairs). Pairs are grouped by
query, queries are cut into shards of ``judge.shard_size``, and an actor pool (one judge
engine per actor, loaded once) scores shard after shard, writing each shard's scores to its
own file as it finishes. A rerun after a crash scores only the shards without a file.

Layout under ``<run_dir>/judge/``: ``requests/shard-NNNNN.parquet`` (what to judge),
``scores/shard-NNNNN.parquet`` (``query_id, candidate_id, score``), ``progress.json``
(the fingerprint the shards belong to) and, when all shards are in, ``manifest.json``.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from unime.config import PipelineConfig, fingerprint_view
from unime.data.images import ImageCache, ImageLimits
from unime.data.storage import exists, filesystem, join, read_bytes, write_bytes
from unime.judge import Judge, PromptTooLongError, build_judge_messages, make_judge
from unime.monitoring import record
from unime.pipeline import embed, ingest, registry, retrieve
from unime.pipeline.common import actor_options, read_parquet_dir, write_parquet
from unime.pipeline.stage import Context, Stage, model_versions, run_stage

STAGE = "judge"
SCORES = pa.schema([("query_id", pa.string()), ("candidate_id", pa.string()), ("score", pa.float64())])


def judge_requests(pools: pa.Table, items: pa.Table) -> pa.Table:
    """One row per query: its text and image, and every candidate to judge (positive first)."""
    text_of = dict(zip(items["id"].to_pylist(), items["text"].to_pylist()))
    image_of = dict(zip(items["id"].to_pylist(), items["image"].to_pylist()))
    candidates: dict[str, dict[str, None]] = {}
    for query, pos, pool in zip(pools["query_id"].to_pylist(), pools["pos_id"].to_pylist(),
                                pools["pool_ids"].to_pylist()):
        candidates.setdefault(query, {}).update(dict.fromkeys([pos, *pool]))
    queries = sorted(candidates)
    cand_lists = [list(candidates[q]) for q in queries]
    return pa.table({
        "query_id": queries,
        "query_text": [text_of[q] for q in queries],
        "query_image": [image_of[q] for q in queries],
        "candidate_ids": cand_lists,
        "candidate_texts": [[text_of[c] for c in cands] for cands in cand_lists],
        "candidate_images": [[image_of[c] for c in cands] for cands in cand_lists],
    })


def make_stage_judge(backend: str, model: str, **options):
    """The judge stage's backend by name: the library's MLLM judges (:func:`unime.judge.make_judge`)
    or ``label``, the demo corpus's ground truth (``model``: the corpus folder)."""
    if backend in registry.STAGE_JUDGES:
        # the judge library knows nothing of the demo corpus: the stage finds it by name
        judge_class = registry.resolve(registry.STAGE_JUDGES, backend, "judge.backend")
        return judge_class(model, storage_options=options.get("storage_options"))
    return make_judge(backend, model, **options)


def shard_path(run_dir: str, kind: str, shard: int) -> str:
    return join(run_dir, STAGE, kind, f"shard-{shard:05d}.parquet")


class JudgeShards:
    """Ray Data callable class: one judge engine per actor; scores and commits whole shards.

    An async actor: several shards are in flight per actor, and while the engine (on its
    own thread, one call at a time) scores one group of queries, the event loop reads the
    next requests, decodes their images and renders their prompts on other threads.
    """

    def __init__(self, backend: str, model: str, dtype: str, device: str, judge_options: dict, run_dir: str,
                 image_root: str, limits: dict, storage_options: dict, queries_per_call: int,
                 hf_batch_size: int, image_cache_mib: int = 2048):
        self.judge: Judge = make_stage_judge(backend, model, dtype=dtype, device=device,
                                             storage_options=storage_options, batch_size=hf_batch_size, **judge_options)
        self.judge.warm_up()
        self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge-engine")
        self.run_dir, self.storage_options = run_dir, storage_options
        self.images = ImageCache(image_root, ImageLimits(**limits), storage_options, image_cache_mib << 20,
                                 prepare=self.judge.prepare_image)
        self.queries_per_call = queries_per_call

    def build_chats(self, rows: list[dict]) -> tuple[list, list[str], list[str]]:
        """The judge's inputs: chats with decoded images, or path tuples for a judge that
        needs no pixels (the label judge)."""
        pixels = self.judge.needs_pixels
        chats, query_ids, candidate_ids = [], [], []
        for row in rows:
            query_image = self.images.get(row["query_image"]) if pixels else None
            for cand, text, image in zip(row["candidate_ids"], row["candidate_texts"], row["candidate_images"]):
                chats.append(build_judge_messages(row["query_text"], query_image, text, self.images.get(image))
                             if pixels else (row["query_text"], row["query_image"], text, image))
                query_ids.append(row["query_id"])
                candidate_ids.append(cand)
        return chats, query_ids, candidate_ids

    def _score(self, chats: list) -> np.ndarray:
        # the backend batches: vLLM all chats of these queries in one call (shared prefixes
        # cached), HF in fixed batches of judge.hf_batch_size
        started = time.perf_counter()
        scores = self.judge.score(chats)
        record("unime_judge_call_seconds", time.perf_counter() - started)
        record("unime_judge_pairs_total", len(chats))
        return scores

    async def score_requests(self, requests: pa.Table) -> pa.Table:
        loop = asyncio.get_running_loop()
        rows = requests.to_pylist()
        query_ids, candidate_ids, scores = [], [], []
        for start in range(0, len(rows), self.queries_per_call):
            chats, queries, cands = await asyncio.to_thread(self.build_chats, rows[start: start + self.queries_per_call])
            scores.append(await loop.run_in_executor(self.engine, self._score, chats))
            query_ids += queries
            candidate_ids += cands
        values = np.concatenate(scores) if scores else np.zeros(0)
        return pa.table({"query_id": query_ids, "candidate_id": candidate_ids, "score": values}, schema=SCORES)

    async def judge_shard(self, shard: int) -> tuple[int, float, float]:
        started = time.time()
        requests = await asyncio.to_thread(
            read_parquet_dir, shard_path(self.run_dir, "requests", shard), self.storage_options)
        try:
            scores = await self.score_requests(requests)
        except PromptTooLongError as exc:  # name the shard; judge.max_model_len is the knob
            raise PromptTooLongError(f"{shard_path(self.run_dir, 'requests', shard)}: {exc}; raise "
                                     "judge.max_model_len or lower judge.max_pixels") from exc
        await asyncio.to_thread(write_parquet, scores, shard_path(self.run_dir, "scores", shard),
                                self.storage_options)
        return scores.num_rows, started, time.time()

    async def __call__(self, batch: dict) -> dict:
        shards = batch["shard"].tolist()
        results = [await self.judge_shard(shard) for shard in shards]
        return {"shard": np.array(shards), "pairs": np.array([r[0] for r in results]),
                "started_at": np.array([r[1] for r in results]), "finished_at": np.array([r[2] for r in results])}


def fingerprint_payload(config: PipelineConfig) -> dict:
    model = judge_model(config)
    return {"judge": fingerprint_view(config.judge), "model": model, "version": model_versions(config, model),
            "dtype": config.models.dtype, "inputs": config.model_inputs()}


def judge_model(config: PipelineConfig) -> str:
    return config.judge.model or config.models.judge


def _prepare_shards(config: PipelineConfig, stage_fingerprint: str) -> int:
    """Write the request shards once per fingerprint; discard shards of any other fingerprint."""
    run_dir, options = config.run_dir, config.data.storage_options
    progress_path = join(run_dir, STAGE, "progress.json")
    if exists(progress_path, options):
        progress = json.loads(read_bytes(progress_path, options))
        if progress["fingerprint"] == stage_fingerprint:
            return progress["shards"]
    fs, inner = filesystem(join(run_dir, STAGE), options)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)
    pools = read_parquet_dir(retrieve.output_path(run_dir), options)
    pairs = read_parquet_dir(ingest.output_paths(run_dir)["pairs"], options)
    requests = judge_requests(pools, embed.unique_items(pairs))
    size = config.judge.shard_size
    shards = (requests.num_rows + size - 1) // size
    for shard in range(shards):
        write_parquet(requests.slice(shard * size, size), shard_path(run_dir, "requests", shard), options)
    write_bytes(progress_path, json.dumps({"fingerprint": stage_fingerprint, "shards": shards}).encode(), options)
    return shards


def build(context: Context) -> dict:
    import ray.data

    config = context.config
    data, run_dir, options = config.data, config.run_dir, config.data.storage_options
    model = context.payload["model"]
    shards = _prepare_shards(config, context.fingerprint)
    pending = [s for s in range(shards) if not exists(shard_path(run_dir, "scores", s), options)]
    scored = []
    if pending:
        judge = config.judge
        dataset = ray.data.from_items([{"shard": s} for s in pending], override_num_blocks=len(pending))
        scored = dataset.map_batches(JudgeShards, batch_size=1, batch_format="numpy", fn_constructor_kwargs={
            "backend": judge.backend, "model": model, "dtype": config.models.dtype, "device": config.models.device,
            "judge_options": {"max_model_len": judge.max_model_len, "min_pixels": judge.min_pixels,
                              "max_pixels": judge.max_pixels, "engine": asdict(judge.engine),
                              **config.model_inputs()},
            "run_dir": run_dir, "image_root": data.image_root, "limits": asdict(data.limits),
            "image_cache_mib": data.image_cache_mib,
            "storage_options": options, "queries_per_call": judge.queries_per_call,
            "hf_batch_size": judge.hf_batch_size,
        }, **actor_options(judge.actors)).take_all()
    missing = [s for s in range(shards) if not exists(shard_path(run_dir, "scores", s), options)]
    if missing:
        raise RuntimeError(f"judge shards missing after the run: {missing[:10]}")
    scores = read_parquet_dir(join(run_dir, STAGE, "scores"), options, ["query_id"])
    counts = {"shards": shards, "shards_scored_this_run": len(scored), "shards_reused": shards - len(pending),
              "pairs": scores.num_rows,
              "queries": len(set(scores["query_id"].to_pylist())),
              "seconds_judging": (float(max(r["finished_at"] for r in scored) - min(r["started_at"] for r in scored))
                                  if scored else 0.0)}
    return {"rows": counts, "model": model, "backend": config.judge.backend}


stage = Stage(STAGE, build, fingerprint_payload, inputs=(retrieve.STAGE,))


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)


def read_scores(run_dir: str, storage_options: dict | None = None) -> pa.Table:
    return read_parquet_dir(join(run_dir, STAGE, "scores"), storage_options)
