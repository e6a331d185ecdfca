"""Ray Serve deployments, one per concern, composed behind a FastAPI ingress.

- :class:`EmbedderDeployment`: the embedder, requests batched with ``@serve.batch``;
- :class:`RetrieverDeployment`: the index artefact; refuses to start when the index was
  built by another embedder than the one deployed;
- :class:`RerankerDeployment`: the reranker;
- :class:`Ingress`: the HTTP API (``/v1/embeddings``, ``/v1/search``, ``/v1/rerank``,
  ``/healthz``) and the search page at ``/``.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import logging
import time
from dataclasses import asdict

import numpy as np
from fastapi import FastAPI, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from unime.config import ServeLimits
from unime.monitoring import record
from unime.serving.api import (
    EmbeddingsRequest,
    InputError,
    RerankRequest,
    SearchRequest,
    check_item,
    check_range,
)
from unime.serving.page import SEARCH_PAGE

app = FastAPI(title="unime", description="UniME-V2 retrieve-then-rerank", version="0.1.0")


@app.exception_handler(InputError)
async def _input_error(_: Request, exc: InputError):
    return JSONResponse(status_code=exc.status, content={"error": str(exc)})


@serve.deployment
class EmbedderDeployment:
    def __init__(self, model: str, dtype: str = "float32", device: str = "auto", batch_size: int = 16,
                 batch_wait_s: float = 0.01, inputs: dict | None = None, storage_options: dict | None = None):
        from unime.models import Embedder

        self.embedder = Embedder(model, dtype=dtype, device=device, storage_options=storage_options, **(inputs or {}))
        self.model = model
        self.embed.set_max_batch_size(batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_s)
        self.batch_sizes: list[int] = []

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def embed(self, items: list) -> list[np.ndarray | dict]:
        self.batch_sizes.append(len(items))
        return self.encode_batch(items)

    def encode_batch(self, items: list[tuple]) -> list[np.ndarray | dict]:
        """One vector per ``(text, image)``; when the batch fails, each item alone, so one input
        the model refuses gives its own request an ``{"error"}`` and its batch-mates their vectors."""
        from unime.models import EmbedItem

        batch = [EmbedItem(text, image) for text, image in items]
        try:
            return list(self.embedder.encode(batch))
        except Exception as exc:
            if len(batch) == 1:
                return [refusal(exc)]
        return [self._alone(item) for item in batch]

    def _alone(self, item) -> np.ndarray | dict:
        try:
            return self.embedder.encode([item])[0]
        except Exception as exc:
            return refusal(exc)

    def stats(self) -> dict:
        return {"batches": len(self.batch_sizes), "mean_batch": float(np.mean(self.batch_sizes or [0]))}


@serve.deployment
class RetrieverDeployment:
    def __init__(self, index_dir: str, embedder: str, storage_options: dict | None = None,
                 inputs: dict | None = None):
        from unime.index import load_index

        self.artifact = load_index(index_dir, storage_options)
        self.artifact.check_embedder(embedder, inputs, storage_options)  # refuse another embedder's vectors
        self.records = self.artifact.records.to_pylist()

    def image_paths(self) -> list[str]:
        return sorted({r["image"] for r in self.records if r["image"]})

    def search(self, vector: np.ndarray, k: int) -> list[dict]:
        scores, rows = self.artifact.search(vector[None], k)
        return [self.records[r] | {"score": float(s)} for s, r in zip(scores[0], rows[0]) if r >= 0]


@serve.deployment
class RerankerDeployment:
    """The reranker (``backend`` hf or vllm; a vLLM engine sized by ``engine``), fed the run's
    reranker inputs: recipe, image budget and token budget."""

    def __init__(self, model: str, dtype: str = "float32", device: str = "auto", inputs: dict | None = None,
                 backend: str = "hf", engine: dict | None = None, storage_options: dict | None = None):
        from unime.rerank import Reranker

        self.reranker = Reranker(model, backend=backend, dtype=dtype, device=device, storage_options=storage_options,
                                 engine=engine, **(inputs or {}))

    def rank(self, query: tuple, candidates: list[tuple], mode: str) -> dict:
        ranking, error = self.reranker.rank_or_refusal(query, candidates, mode)
        if ranking is None:  # the request's fault: a 413 at the ingress, not a 500
            return {"error": error}
        return {"order": [int(k) for k in ranking.order], "scores": [float(s) for s in ranking.scores],
                "parsed": ranking.parsed}


def refusal(exc: Exception) -> dict:
    """The embedder's answer for an input it cannot encode."""
    logging.getLogger("unime.serving").warning("embedder refused an input: %s: %s", type(exc).__name__, exc)
    return {"error": f"{type(exc).__name__}: {exc}"}


def vector_or_422(vector, field: str) -> np.ndarray:
    """A vector from :meth:`EmbedderDeployment.embed`, or its refusal as a 422 naming the field."""
    if isinstance(vector, dict):
        raise InputError(f"{field}: the embedder cannot encode it ({vector['error']})", 422)
    return vector


def checked(ranking: dict) -> dict:
    """The reranker's answer, or its refusal (a prompt over the token budget) as a 413."""
    if "error" in ranking:
        raise InputError(f"rerank prompt too long: {ranking['error']}", 413)
    return ranking


@contextlib.contextmanager
def observed(route: str):
    """Time one request into ``unime_serve_request_seconds`` by route (rejected ones too)."""
    started = time.perf_counter()
    try:
        yield started
    finally:
        record("unime_serve_request_seconds", time.perf_counter() - started, route=route)


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, embedder, retriever, reranker, limits: dict, api_key: str | None, rerank_mode: str,
                 image_root: str = "", storage_options: dict | None = None):
        from unime.data.images import ImageCache, ImageLimits

        self.embedder, self.retriever, self.reranker = embedder, retriever, reranker
        self.limits, self.api_key, self.rerank_mode = ServeLimits(**limits), api_key, rerank_mode
        self.corpus_images = ImageCache(image_root, ImageLimits(), storage_options)
        self.indexed_images: set[str] | None = None

    def _authorise(self, authorization: str | None, x_api_key: str | None) -> None:
        if self.api_key is None:
            return
        given = x_api_key or (authorization[7:] if authorization and authorization.startswith("Bearer ") else None)
        if given is None:
            raise InputError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'", 401)
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):  # constant time
            raise InputError("invalid API key", 403)

    def _mode(self, mode: str | None) -> str:
        from unime.rerank import MODES

        mode = mode or self.rerank_mode
        if mode not in MODES:
            raise InputError(f"rerank mode {mode!r}: expected one of {list(MODES)}")
        return mode

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return SEARCH_PAGE

    @app.get("/images/{path:path}")
    async def corpus_image(self, path: str, authorization: str | None = Header(None),
                           x_api_key: str | None = Header(None)) -> Response:
        """Thumbnails of indexed records only: never an arbitrary path, and behind the API key
        like every other route that reads the corpus (checked before the path, so a caller
        without the key cannot probe which images are indexed)."""
        self._authorise(authorization, x_api_key)
        if self.indexed_images is None:
            self.indexed_images = set(await self.retriever.image_paths.remote())
        if path not in self.indexed_images:
            raise InputError(f"no indexed image {path!r}", 404)
        buffer = io.BytesIO()
        self.corpus_images.get(path).save(buffer, format="PNG")
        return Response(content=buffer.getvalue(), media_type="image/png")

    @app.post("/v1/embeddings")
    async def embeddings(self, request: EmbeddingsRequest, authorization: str | None = Header(None),
                         x_api_key: str | None = Header(None)) -> dict:
        with observed("embeddings"):
            self._authorise(authorization, x_api_key)
            check_range("input", len(request.input), 1, self.limits.max_batch)
            items = [check_item(item, self.limits, f"input[{k}]", request.instruction)
                     for k, item in enumerate(request.input)]
            vectors = [vector_or_422(await self.embedder.embed.remote(item), f"input[{k}]") for k, item in enumerate(items)]
        return {"object": "list", "model": request.model or "unime-embedder",
                "data": [{"object": "embedding", "index": k, "embedding": v.tolist()} for k, v in enumerate(vectors)],
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    @app.post("/v1/search")
    async def search(self, request: SearchRequest, authorization: str | None = Header(None),
                     x_api_key: str | None = Header(None)) -> dict:
        with observed("search") as started:
            self._authorise(authorization, x_api_key)
            check_range("top_k", request.top_k, 1, self.limits.max_top_k)
            check_range("rerank_k", request.rerank_k, 1, self.limits.max_rerank_k)
            mode = self._mode(request.rerank_mode)
            query = check_item(request.query, self.limits, "query", request.instruction)
            vector = vector_or_422(await self.embedder.embed.remote(query), "query")
            embedded = time.perf_counter()
            wanted, rerank_error = max(request.top_k, request.rerank_k if request.rerank else 0), None
            hits = await self.retriever.search.remote(vector, wanted)
            retrieved = time.perf_counter()
            for rank, hit in enumerate(hits):
                hit["retrieval_rank"], hit["rerank_score"] = rank, None
            if request.rerank and hits:
                head = hits[: request.rerank_k]
                candidates = [(h["text"], self.corpus_images.get(h["image"])) for h in head]
                ranking = await self.reranker.rank.remote((query[0], query[1]), candidates, mode)
                if "error" in ranking:  # the corpus's own items overflow the budget: retrieval order
                    rerank_error = ranking["error"]
                else:
                    for k, score in enumerate(ranking["scores"]):
                        head[k]["rerank_score"] = score
                    hits = [head[k] for k in ranking["order"]] + hits[request.rerank_k:]
            done = time.perf_counter()
        return {"results": hits[: request.top_k], "rerank_mode": mode if request.rerank and not rerank_error else None,
                "rerank_error": rerank_error,
                "timings_ms": {"embed": 1000 * (embedded - started), "retrieve": 1000 * (retrieved - embedded),
                               "rerank": 1000 * (done - retrieved), "total": 1000 * (done - started)}}

    @app.post("/v1/rerank")
    async def rerank(self, request: RerankRequest, authorization: str | None = Header(None),
                     x_api_key: str | None = Header(None)) -> dict:
        with observed("rerank"):
            self._authorise(authorization, x_api_key)
            check_range("candidates", len(request.candidates), 1, self.limits.max_rerank_k)
            mode = self._mode(request.mode)
            query = check_item(request.query, self.limits, "query")
            candidates = [check_item(c, self.limits, f"candidates[{k}]") for k, c in enumerate(request.candidates)]
            ranking = checked(await self.reranker.rank.remote(query, candidates, mode))
        return {"mode": mode, "order": ranking["order"], "scores": ranking["scores"], "parsed": ranking["parsed"]}


def build_app(config):
    """The composed application for a :class:`unime.config.PipelineConfig`."""
    from unime.data.storage import join, read_json
    from unime.pipeline import build_index, manifest, train_embedder, train_reranker

    run_dir, options, serve_config, models = config.run_dir, config.data.storage_options, config.serve, config.models
    embedder = manifest.trained_or(run_dir, train_embedder, serve_config.embedder, models.embedder, options)
    reranker = manifest.trained_or(run_dir, train_reranker, serve_config.reranker, models.reranker, options)
    index_dir = serve_config.index_dir or build_index.output_path(run_dir)
    light = {"num_cpus": serve_config.replica_cpus} | (
        {"resources": dict(serve_config.replica_resources)} if serve_config.replica_resources else {})
    model = {"num_cpus": serve_config.replica_cpus} | (
        {"num_gpus": serve_config.model_gpus} if serve_config.model_gpus else {}) | (
        {"resources": dict(serve_config.model_resources)} if serve_config.model_resources else {})
    # queries are embedded exactly as the index's items were: its manifest's recipe, resolution
    # and pixel bounds (the config's for an index built before manifests recorded them)
    inputs = config.embedder_inputs() | ((read_json(join(index_dir, "manifest.json"), options) or {}).get("inputs") or {})
    if serve_config.host in ("0.0.0.0", "::") and not serve_config.api_key:
        logging.getLogger("unime.serving").warning(
            "serving on %s without serve.api_key: anyone who reaches the port can search and embed", serve_config.host)
    return Ingress.options(ray_actor_options=light).bind(
        EmbedderDeployment.options(ray_actor_options=model).bind(
            embedder, models.dtype, models.device, serve_config.batch_size, serve_config.batch_wait_s, inputs,
            options),
        RetrieverDeployment.options(ray_actor_options=light).bind(index_dir, embedder, options, inputs),
        RerankerDeployment.options(ray_actor_options=model).bind(reranker, models.dtype, models.device,
                                                                 config.reranker_inputs(), serve_config.rerank_backend,
                                                                 asdict(config.eval.rerank_engine), options),
        asdict(serve_config.limits), serve_config.api_key, serve_config.rerank_mode,
        config.data.image_root, options)
