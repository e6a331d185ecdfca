"""Global retrieval of the potential hard-negative pool (docs/method.md section 2), on FAISS.

For each query the pool is the ``k`` most similar candidates among those strictly less
similar than the query's own positive: the positive is never returned, and anything at
least as similar as the positive is a likely false negative and is dropped first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

ShardSource = np.ndarray | Sequence["np.ndarray | Callable[[], np.ndarray]"]
GPU_MAX_K = 2048  # the largest k (and nprobe) FAISS's GPU k-selection takes


@dataclass(frozen=True)
class IndexSpec:
    """A FAISS inner-product index, for the mining retrieval and the search index alike.

    ``flat`` is exact; ``ivf`` clusters into ``nlist`` lists and probes ``nprobe`` of them,
    its coarse quantiser learning from ``train_size`` rows drawn uniformly from the whole pool
    in ``train_iterations`` k-means passes (FAISS's own default is 25); ``hnsw`` links each
    vector to ``hnsw_m`` neighbours and searches ``hnsw_ef_search`` wide (search index only:
    the mining retrieval widens its searches, which HNSW cannot do exactly).
    """

    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: int = 1024
    nprobe: int = 32
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    use_gpu: bool | None = None  # None: on when CUDA and faiss GPU support are both present
    train_size: int = 262_144
    train_iterations: int = 25
    # the widest search one index call makes (None: GPU_MAX_K on a GPU, unbounded on the CPU);
    # queries that need a wider one are finished on the index's CPU copy
    max_search_k: int | None = None

    def __post_init__(self):
        if self.kind not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"index kind {self.kind!r}: expected 'flat', 'ivf' or 'hnsw'")


def _shards(candidates: ShardSource) -> Iterable[np.ndarray]:
    """Yield candidate shards one at a time; callables are loaded only when reached."""
    if isinstance(candidates, np.ndarray):
        yield candidates
        return
    for shard in candidates:
        yield np.asarray(shard() if callable(shard) else shard)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def use_faiss_gpu(requested: bool | None) -> bool:
    """Whether to put a FAISS index on the GPU: ``None`` means when this faiss build sees one;
    ``True`` without one is an error rather than a silent CPU fallback."""
    import faiss

    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if requested and not available:
        import socket

        raise RuntimeError(f"FAISS on a GPU was asked for (a task given a GPU, or use_gpu=True), but this faiss "
                           f"build sees none on node {socket.gethostname()}: install faiss-gpu (the gpu extra)")
    return available if requested is None else requested


def _placed(index, spec: IndexSpec) -> tuple[object, int | None]:
    """The index where the spec puts it (a GPU copy, or the CPU index itself) and the widest
    search it takes."""
    import faiss

    if not use_faiss_gpu(spec.use_gpu):
        return index, spec.max_search_k
    if hasattr(index, "nprobe"):
        index.nprobe = min(index.nprobe, GPU_MAX_K)
    return faiss.index_cpu_to_all_gpus(index), min(spec.max_search_k or GPU_MAX_K, GPU_MAX_K)


def positive_similarities(queries: np.ndarray, candidates: ShardSource, positive_ids: np.ndarray) -> np.ndarray:
    """<q_i, c_{positive_ids[i]}> for every query, streaming the shards once."""
    sims = np.full(len(queries), np.nan, dtype=np.float32)
    offset = 0
    for shard in _shards(candidates):
        inside = (positive_ids >= offset) & (positive_ids < offset + len(shard))
        rows = positive_ids[inside] - offset
        sims[inside] = np.einsum("ij,ij->i", _f32(queries[inside]), _f32(shard[rows]))
        offset += len(shard)
    if np.isnan(sims).any() or (positive_ids < 0).any():
        bad = np.flatnonzero(np.isnan(sims) | (positive_ids < 0))[:5]
        raise IndexError(f"positive_ids out of range for {offset} candidates (queries {bad.tolist()} ...)")
    return sims


def _search_below(index, queries, pos_sims, pos_rows, row_offset: int, k: int, max_width: int | None = None,
                  cpu_index=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` per query among results with sim < the positive's and row != the positive's.

    Everything at least as similar as the positive ranks first, so the search widens
    (doubling) for the queries whose valid results run short until the index is exhausted.
    Searches stay within ``max_width`` (a GPU index's limit); queries that need more are
    finished on ``cpu_index``, which has none.
    """
    n_queries, total = len(queries), index.ntotal
    rows, sims = np.full((n_queries, k), -1, np.int64), np.full((n_queries, k), -np.inf, np.float32)
    pending, width = np.arange(n_queries), min(total, k + 8, max_width or total)
    while pending.size and width > 0:
        if max_width is not None and width > max_width:
            rows[pending], sims[pending] = _search_below(cpu_index, queries[pending], pos_sims[pending],
                                                         pos_rows[pending], row_offset, k)
            break
        found_sims, found = index.search(queries[pending], width)
        found = np.where(found >= 0, found + row_offset, -1)
        valid = (found >= 0) & (found_sims < pos_sims[pending, None]) & (found != pos_rows[pending, None])
        done = (valid.sum(1) >= k) | (width >= total)
        for local in np.flatnonzero(done):
            keep = np.flatnonzero(valid[local])[:k]
            rows[pending[local], : keep.size] = found[local, keep]
            sims[pending[local], : keep.size] = found_sims[local, keep]
        wider = min(total, width * 2)
        pending, width = pending[~done], (max_width if max_width is not None and width < max_width < wider else wider)
    return rows, sims


def _merge(rows_a, sims_a, rows_b, sims_b, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows, sims = np.concatenate([rows_a, rows_b], 1), np.concatenate([sims_a, sims_b], 1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(rows, order, 1), np.take_along_axis(sims, order, 1)


def _flat_streaming(queries, candidates, pos_sims, pos_rows, k, spec):
    import faiss

    rows = np.full((len(queries), k), -1, np.int64)
    sims = np.full((len(queries), k), -np.inf, np.float32)
    offset = 0
    for shard in _shards(candidates):  # one shard in memory at a time
        index = faiss.IndexFlatIP(shard.shape[1])
        index.add(_f32(shard))
        placed, max_width = _placed(index, spec)
        shard_rows, shard_sims = _search_below(placed, queries, pos_sims, pos_rows, offset, k, max_width, index)
        rows, sims = _merge(rows, sims, shard_rows, shard_sims, k)
        offset += len(shard)
    return rows, sims


def uniform_sample(candidates: ShardSource, size: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """``size`` rows drawn uniformly without replacement from all shards together (every row
    when there are fewer), and the total row count, in one pass with ``size`` rows held: each
    row gets a random key and the ``size`` smallest keys are kept."""
    rng = np.random.default_rng(seed)
    keys, kept, total = np.empty(0), None, 0
    for shard in _shards(candidates):
        shard = _f32(shard)
        total += len(shard)
        keys = np.concatenate([keys, rng.random(len(shard))])
        kept = shard if kept is None else np.concatenate([kept, shard])
        if len(keys) > size:
            keep = np.argpartition(keys, size - 1)[:size]
            keys, kept = keys[keep], kept[keep]
    return kept, total


def build_ivf(candidates: ShardSource, spec: IndexSpec):
    """An IVF-flat inner-product index over every shard, ``nprobe`` set; built on the GPU when
    the spec says so (:func:`use_faiss_gpu`), returned on the CPU."""
    import faiss

    # The coarse quantiser learns from a uniform sample of the whole pool: shards come sorted
    # (the embed stage orders items by length), so the first shard alone would place every
    # cluster among short text items and recall would drop with no error.
    sample, _ = uniform_sample(candidates, spec.train_size)
    nlist = max(1, min(spec.nlist, len(sample) // 39))  # FAISS wants >= 39 training points per list
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(sample.shape[1]), sample.shape[1], nlist,
                               faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = spec.train_iterations
    on_gpu = use_faiss_gpu(spec.use_gpu)
    building = faiss.index_cpu_to_all_gpus(index) if on_gpu else index
    if on_gpu and hasattr(building, "cp"):
        building.cp.niter = spec.train_iterations
    building.train(sample)
    for shard in _shards(candidates):  # a second pass: shard loaders run again
        building.add(_f32(shard))
    index = faiss.index_gpu_to_cpu(building) if on_gpu else index
    index.nprobe = min(spec.nprobe, index.nlist)
    return index


def search_ivf(index, queries, pos_sims, pos_rows, k: int, spec: IndexSpec) -> tuple[np.ndarray, np.ndarray]:
    """:func:`retrieve_pool`'s search on a :func:`build_ivf` index."""
    placed, max_width = _placed(index, spec)
    return _search_below(placed, queries, pos_sims, pos_rows, 0, k, max_width, index)


def _ivf(queries, candidates, pos_sims, pos_rows, k, spec):
    return search_ivf(build_ivf(candidates, spec), queries, pos_sims, pos_rows, k, spec)


def retrieve_pool(query_embeddings: np.ndarray, candidate_embeddings: ShardSource, positive_ids,
                  k: int = 50, index: IndexSpec | str = "flat") -> tuple[np.ndarray, np.ndarray]:
    """The potential hard-negative pool of every query.

    Args:
        query_embeddings: ``[Q, D]`` L2-normalised query embeddings.
        candidate_embeddings: ``[N, D]`` L2-normalised candidates, or a sequence of shards
            (arrays, or zero-argument callables that load one) whose concatenation is the
            pool; shards are visited one at a time.
        positive_ids: ``[Q]`` row of each query's positive in the concatenated pool.
        k: pool size per query.
        index: ``"flat"`` (exact), ``"ivf"``, or an :class:`IndexSpec`.

    Returns:
        ``(rows, similarities)``, each ``[Q, k]``, best first; row -1 and similarity -inf
        where fewer than ``k`` candidates qualify. Inner product, the positive never
        appears, and candidates with similarity >= the query-positive similarity are
        dropped before the top-k.
    """
    spec = IndexSpec(kind=index) if isinstance(index, str) else index
    if spec.kind == "hnsw":
        raise ValueError("the pool retrieval needs a 'flat' or 'ivf' index: it widens its searches past "
                         "everything at least as similar as the positive, which HNSW cannot do exactly")
    queries = _f32(query_embeddings)
    positive_ids = np.asarray(positive_ids, dtype=np.int64)
    if len(positive_ids) != len(queries):
        raise ValueError(f"{len(positive_ids)} positive ids for {len(queries)} queries")
    pos_sims = positive_similarities(queries, candidate_embeddings, positive_ids)
    search = _flat_streaming if spec.kind == "flat" else _ivf
    return search(queries, candidate_embeddings, pos_sims, positive_ids, k, spec)
