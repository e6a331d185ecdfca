"""Ray Serve deployments, one per concern, composed behind a FastAPI ingress.

- :class:`EmbedderDeployment`: the embedder, requests batched with ``@serve.batch``;
- :class:`RetrieverDeployment`: the index artefact; refuses to start when the index was
  built by another embedder than the one deployed;
- :class:`RerankerDeployment`: the reranker;
- :class:`Ingress`: the HTTP API and the search page at ``/``: OpenAI's ``/v1/embeddings``
  and ``/v1/models``, Cohere's and Jina's ``/v1/rerank`` and ``/v2/rerank``, TEI's ``/rerank``
  and ``/info``, unime's ``/v1/search``, and ``/healthz``. Every 4xx has OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import math
import time
import uuid
from dataclasses import asdict

import numpy as np
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException

from unime.config import ServeLimits
from unime.monitoring import record
from unime.serving.api import (
    EmbeddingsRequest,
    InputError,
    Item,
    RerankRequest,
    SearchRequest,
    TeiRerankRequest,
    check_item,
    check_range,
)
from unime.serving.formats import (
    checked_dimensions,
    embeddings_body,
    error_body,
    rerank_results,
    tei_results,
    validation_error,
)
from unime.serving.page import SEARCH_PAGE

app = FastAPI(title="unime", description="UniME-V2 retrieve-then-rerank, with OpenAI-, Cohere- and TEI-shaped "
              "routes", version="0.1.0")


class BodyLimit:
    """ASGI middleware: a body over ``app.state.max_body_bytes`` is a 413 before anything parses
    it, by its Content-Length or, when chunked, as it arrives (the body is read once, then
    replayed to the app)."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        limit = getattr(scope.get("app") and scope["app"].state, "max_body_bytes", None) if scope["type"] == "http" else None
        if limit is None:
            return await self.inner(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await too_large(send, limit)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > limit:
                return await too_large(send, limit)
        replayed = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal replayed
            message, replayed = replayed, None
            return message if message is not None else await receive()

        return await self.inner(scope, replay, send)


async def too_large(send, limit: int) -> None:
    body = json.dumps(error_body(413, f"request body larger than max_body_bytes={limit}", None,
                                 "payload_too_large")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


app.add_middleware(BodyLimit)


@app.exception_handler(InputError)
async def _input_error(_: Request, exc: InputError):
    headers = {"Retry-After": str(math.ceil(exc.retry_after_s))} if exc.retry_after_s is not None else None
    return JSONResponse(status_code=exc.status, content=error_body(exc.status, str(exc), exc.param, exc.code),
                        headers=headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError):
    """A body of the wrong shape is a 400 (as OpenAI answers it), not FastAPI's raw 422 list."""
    message, param = validation_error(exc.errors())
    return JSONResponse(status_code=400, content=error_body(400, message, param))


@app.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException):
    return JSONResponse(status_code=exc.status_code, content=error_body(exc.status_code, str(exc.detail)))


@serve.deployment
class EmbedderDeployment:
    def __init__(self, model: str, dtype: str = "float32", device: str = "auto", batch_size: int = 16,
                 batch_wait_s: float = 0.01, inputs: dict | None = None, storage_options: dict | None = None,
                 max_input_tokens: int | None = None):
        from unime.models import Embedder

        self.embedder = Embedder(model, dtype=dtype, device=device, storage_options=storage_options, **(inputs or {}))
        self.model, self.max_input_tokens = model, max_input_tokens
        self.embed.set_max_batch_size(batch_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_s)
        self.batch_sizes: list[int] = []

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def embed(self, items: list) -> list[dict]:
        """The forward runs in a thread: the replica's event loop keeps gathering the next
        batch and answering health checks meanwhile."""
        self.batch_sizes.append(len(items))
        return await asyncio.to_thread(self.encode_batch, items)

    def encode_batch(self, items: list[tuple]) -> list[dict]:
        """``{"vector", "tokens"}`` per ``(text, image)``. A prompt over ``max_input_tokens`` gets
        a 413 ``{"error"}`` before the forward and its batch-mates are encoded without it; when
        the forward fails, each item alone, so one input the model refuses gives its own
        request an ``{"error"}`` and its batch-mates their vectors."""
        from unime.models import EmbedItem
        from unime.models.embedder import PromptTooLong

        batch = [EmbedItem(text, image) for text, image in items]
        try:
            return embedded(*self.embedder.encode_counted(batch, self.max_input_tokens))
        except PromptTooLong as exc:
            return self._without(items, exc)
        except Exception as exc:
            if len(batch) == 1:
                return [refusal(exc)]
        return [self.encode_batch([item])[0] for item in items]

    def _without(self, items: list[tuple], too_long) -> list[dict]:
        rest = [k for k in range(len(items)) if k not in too_long.over]
        answers = dict(zip(rest, self.encode_batch([items[k] for k in rest]) if rest else []))
        for k, tokens in too_long.over.items():
            answers[k] = {"error": f"{tokens} tokens, over max_input_tokens={too_long.limit} (image tokens "
                                   "included)", "status": 413}
        return [answers[k] for k in range(len(items))]

    def facts(self) -> dict:
        """What ``/info`` reports of this replica's model."""
        return {"model_id": self.model, "embedding_dimension": self.embedder.dimension,
                "model_dtype": str(self.embedder.model.dtype).removeprefix("torch."),
                "input_recipe": self.embedder.recipe.name,
                "max_input_tokens": self.embedder.token_budget(self.max_input_tokens) or self.embedder.recipe.max_length}

    def stats(self) -> dict:
        return {"batches": len(self.batch_sizes), "mean_batch": float(np.mean(self.batch_sizes or [0]))}


def embedded(vectors: np.ndarray, tokens: list[int]) -> list[dict]:
    return [{"vector": vector, "tokens": int(count)} for vector, count in zip(vectors, tokens)]


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
        self.model, self.backend = model, backend
        self.one_at_a_time = asyncio.Lock()  # a vLLM engine takes one caller at a time

    def facts(self) -> dict:
        return {"model_id": self.model, "backend": self.backend}

    async def rank(self, query: tuple, candidates: list[tuple], mode: str) -> dict:
        """Off the event loop, so health checks are answered while a prompt runs."""
        async with self.one_at_a_time:
            return await asyncio.to_thread(self._rank, query, candidates, mode)

    def _rank(self, query: tuple, candidates: list[tuple], mode: str) -> dict:
        ranking, error = self.reranker.rank_or_refusal(query, candidates, mode)
        if ranking is None:  # the request's fault: a 413 at the ingress, not a 500
            return {"error": error}
        return {"order": [int(k) for k in ranking.order], "scores": [float(s) for s in ranking.scores],
                "parsed": ranking.parsed}


async def answer_of(response, timeout_s: float, retry_after_s: float):
    """A model deployment's answer (a handle call's response). Its queue full
    (``max_queued_requests``) is a 503 with Retry-After, as the proxy answers when the ingress's
    own queue is full; no answer within ``timeout_s`` a 504, and the call is cancelled."""
    from ray.serve.exceptions import BackPressureError

    async def answer():
        return await response

    try:
        return await asyncio.wait_for(answer(), timeout_s)
    except BackPressureError as exc:
        raise InputError(f"overloaded, retry later ({exc})", 503, code="overloaded",
                         retry_after_s=retry_after_s) from exc
    except asyncio.TimeoutError as exc:
        response.cancel()
        raise InputError(f"no answer within request_timeout_s={timeout_s:g}", 504, code="timeout") from exc


def refusal(exc: Exception) -> dict:
    """The embedder's answer for an input it cannot encode."""
    logging.getLogger("unime.serving").warning("embedder refused an input: %s: %s", type(exc).__name__, exc)
    return {"error": f"{type(exc).__name__}: {exc}"}


def vector_or_refusal(answer: dict, field: str) -> dict:
    """An answer of :meth:`EmbedderDeployment.embed` (``{"vector", "tokens"}``), or its refusal
    naming the field: a 413 for a prompt over the token budget, else a 422."""
    if answer.get("status") == 413:
        raise InputError(f"{field}: {answer['error']}", 413, param=field, code="prompt_too_long")
    if "error" in answer:
        raise InputError(f"{field}: the embedder cannot encode it ({answer['error']})", 422, param=field)
    return answer


def checked(ranking: dict) -> dict:
    """The reranker's answer, or its refusal (a prompt over the token budget) as a 413."""
    if "error" in ranking:
        raise InputError(f"rerank prompt too long: {ranking['error']}", 413, code="prompt_too_long")
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
    """``names``: the served model names (``{"embedder", "reranker"}``), which ``/v1/models``
    lists and requests' ``model`` must match; the rest as :class:`unime.config.ServeConfig`."""

    def __init__(self, embedder, retriever, reranker, limits: dict, api_key: str | None, rerank_mode: str,
                 image_root: str, storage_options: dict | None, *, names: dict, retry_after_s: float,
                 request_timeout_s: float):
        from unime.data.images import ImageCache, ImageLimits

        self.embedder, self.retriever, self.reranker = embedder, retriever, reranker
        self.limits, self.api_key, self.rerank_mode = ServeLimits(**limits), api_key, rerank_mode
        self.names = names
        self.corpus_images = ImageCache(image_root, ImageLimits(), storage_options)
        self.indexed_images: set[str] | None = None
        self.started = int(time.time())
        self.embedder_facts: dict | None = None
        self.retry_after_s, self.request_timeout_s = retry_after_s, request_timeout_s
        app.state.max_body_bytes = self.limits.max_body_bytes  # read by BodyLimit

    async def _call(self, response):
        return await answer_of(response, self.request_timeout_s, self.retry_after_s)

    def _authorise(self, authorization: str | None, x_api_key: str | None) -> None:
        if self.api_key is None:
            return
        given = x_api_key or (authorization[7:] if authorization and authorization.startswith("Bearer ") else None)
        if given is None:
            raise InputError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'", 401,
                             code="missing_api_key")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):  # constant time
            raise InputError("invalid API key", 401, code="invalid_api_key")  # 401, as OpenAI and Cohere answer

    def _model(self, role: str, requested: str | None) -> str:
        """The served name of ``role``'s model; a request naming another model is a 404, as OpenAI answers."""
        name = self.names[role]
        if requested is not None and requested != name:
            raise InputError(f"model {requested!r}: this server's {role} is {name!r} (GET /v1/models)", 404,
                             param="model", code="model_not_found")
        return name

    def _mode(self, mode: str | None) -> str:
        from unime.rerank import MODES

        mode = mode or self.rerank_mode
        if mode not in MODES:
            raise InputError(f"rerank mode {mode!r}: expected one of {list(MODES)}", param="mode")
        return mode

    async def _embedder(self) -> dict:
        """The embedder replica's facts, asked once (every replica serves the same checkpoint)."""
        if self.embedder_facts is None:
            self.embedder_facts = await self._call(self.embedder.facts.remote())
        return self.embedder_facts

    async def _embed_all(self, items: list[tuple], fields: list[str]) -> list[dict]:
        """Every item sent at once, so ``@serve.batch`` can batch a request's items together."""
        answers = await asyncio.gather(*[self._call(self.embedder.embed.remote(item)) for item in items])
        return [vector_or_refusal(answer, field) for answer, field in zip(answers, fields)]

    async def _ranked(self, query: Item, documents: list[Item], mode: str | None,
                      field: str = "documents") -> tuple[dict, str]:
        check_range(field, len(documents), 1, self.limits.max_rerank_k)
        mode = self._mode(mode)
        query_input = check_item(query, self.limits, "query")
        inputs = [check_item(d, self.limits, f"{field}[{k}]") for k, d in enumerate(documents)]
        return checked(await self._call(self.reranker.rank.remote(query_input, inputs, mode))), mode

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return SEARCH_PAGE

    @app.get("/v1/models")
    async def models(self, authorization: str | None = Header(None), x_api_key: str | None = Header(None)) -> dict:
        """OpenAI's model list: the deployed embedder and reranker by their served names."""
        self._authorise(authorization, x_api_key)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": self.started,
                                            "owned_by": "unime", "role": role} for role, name in self.names.items()]}

    @app.get("/info")
    async def info(self, authorization: str | None = Header(None), x_api_key: str | None = Header(None)) -> dict:
        """The deployed models' facts, as TEI's ``/info`` gives them, and the request limits."""
        import ray
        import torch
        import transformers

        import unime

        self._authorise(authorization, x_api_key)
        embedder = await self._embedder()
        reranker = await self._call(self.reranker.facts.remote())
        return {"model_name": self.names["embedder"], **embedder,
                "model_type": {"embedding": {"pooling": "last_token"}}, "max_client_batch_size": self.limits.max_batch,
                "reranker": {"model_name": self.names["reranker"], **reranker, "mode": self.rerank_mode},
                "limits": asdict(self.limits), "version": unime.__version__,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "ray": ray.__version__}}

    @app.get("/images/{path:path}")
    async def corpus_image(self, path: str, authorization: str | None = Header(None),
                           x_api_key: str | None = Header(None)) -> Response:
        """Thumbnails of indexed records only: never an arbitrary path, and behind the API key
        like every other route that reads the corpus (checked before the path, so a caller
        without the key cannot probe which images are indexed)."""
        self._authorise(authorization, x_api_key)
        if self.indexed_images is None:
            self.indexed_images = set(await self._call(self.retriever.image_paths.remote()))
        if path not in self.indexed_images:
            raise InputError(f"no indexed image {path!r}", 404)
        buffer = io.BytesIO()
        self.corpus_images.get(path).save(buffer, format="PNG")
        return Response(content=buffer.getvalue(), media_type="image/png")

    @app.post("/v1/embeddings")
    async def embeddings(self, request: EmbeddingsRequest, authorization: str | None = Header(None),
                         x_api_key: str | None = Header(None)) -> dict:
        """OpenAI's embeddings: float lists or base64 float32, ``usage`` in prompt tokens."""
        with observed("embeddings"):
            self._authorise(authorization, x_api_key)
            model = self._model("embedder", request.model)
            inputs = request.items()
            check_range("input", len(inputs), 1, self.limits.max_batch)
            checked_dimensions(request.dimensions, (await self._embedder())["embedding_dimension"])
            fields = [f"input[{k}]" for k in range(len(inputs))]
            items = [check_item(item, self.limits, field, request.instruction) for item, field in zip(inputs, fields)]
            answers = await self._embed_all(items, fields)
        return embeddings_body([a["vector"] for a in answers], [a["tokens"] for a in answers], model,
                               request.encoding_format)

    @app.post("/v1/search")
    async def search(self, request: SearchRequest, authorization: str | None = Header(None),
                     x_api_key: str | None = Header(None)) -> dict:
        with observed("search") as started:
            self._authorise(authorization, x_api_key)
            check_range("top_k", request.top_k, 1, self.limits.max_top_k)
            check_range("rerank_k", request.rerank_k, 1, self.limits.max_rerank_k)
            mode = self._mode(request.rerank_mode)
            query = check_item(request.query, self.limits, "query", request.instruction)
            vector = (await self._embed_all([query], ["query"]))[0]["vector"]
            embedded = time.perf_counter()
            wanted, rerank_error = max(request.top_k, request.rerank_k if request.rerank else 0), None
            hits = await self._call(self.retriever.search.remote(vector, wanted))
            retrieved = time.perf_counter()
            for rank, hit in enumerate(hits):
                hit["retrieval_rank"], hit["rerank_score"] = rank, None
            if request.rerank and hits:
                head = hits[: request.rerank_k]
                candidates = [(h["text"], self.corpus_images.get(h["image"])) for h in head]
                ranking = await self._call(self.reranker.rank.remote((query[0], query[1]), candidates, mode))
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
        """Cohere's (v1) and Jina's rerank: ``results`` of ``{index, relevance_score, document?}``."""
        return await self._cohere_rerank(request, authorization, x_api_key, "1")

    @app.post("/v2/rerank")
    async def rerank_v2(self, request: RerankRequest, authorization: str | None = Header(None),
                        x_api_key: str | None = Header(None)) -> dict:
        """Cohere's v2 rerank (its SDK's ``ClientV2.rerank``)."""
        return await self._cohere_rerank(request, authorization, x_api_key, "2")

    async def _cohere_rerank(self, request: RerankRequest, authorization, x_api_key, version: str) -> dict:
        with observed("rerank"):
            self._authorise(authorization, x_api_key)
            model = self._model("reranker", request.model)
            if request.max_tokens_per_doc is not None:
                raise InputError("max_tokens_per_doc: documents are never cut; a prompt over the reranker's token "
                                 "budget is refused with a 413", param="max_tokens_per_doc")
            if request.top_n is not None and request.top_n < 1:  # above the documents' count: all of them
                raise InputError(f"top_n: {request.top_n} is not positive", param="top_n")
            documents = request.document_items()
            ranking, mode = await self._ranked(request.query_item(), documents, request.mode)
        echoed = [d.model_dump(exclude_none=True) for d in documents] if request.return_documents else None
        return {"id": str(uuid.uuid4()), "model": model,
                "results": rerank_results(ranking["order"], ranking["scores"], echoed, request.top_n),
                "meta": {"api_version": {"version": version}}, "mode": mode, "parsed": ranking["parsed"]}

    @app.post("/rerank")
    async def rerank_tei(self, request: TeiRerankRequest, authorization: str | None = Header(None),
                         x_api_key: str | None = Header(None)) -> list[dict]:
        """TEI's rerank: ``[{index, score, text?}]`` best first, scored in the configured mode."""
        with observed("rerank"):
            self._authorise(authorization, x_api_key)
            if request.raw_scores:
                raise InputError("raw_scores: not supported; scores are probabilities in [0, 1]", param="raw_scores")
            if request.truncate:
                raise InputError("truncate: texts are never cut; a prompt over the reranker's token budget is "
                                 "refused with a 413", param="truncate")
            ranking, _ = await self._ranked(Item(text=request.query), [Item(text=t) for t in request.texts], None,
                                            "texts")
        return tei_results(ranking["order"], ranking["scores"], request.texts if request.return_text else None)


def embedder_inputs(config, index_dir: str) -> dict:
    """How the served embedder reads queries: exactly as the index's items were embedded (its
    manifest's recipe, resolution and pixel bounds; the config's for an index built before
    manifests recorded them)."""
    from unime.data.storage import join, read_json

    recorded = read_json(join(index_dir, "manifest.json"), config.data.storage_options) or {}
    return config.embedder_inputs() | (recorded.get("inputs") or {})


def build_app(config, *, embedder: str, reranker: str, index_dir: str):
    """The composed application serving ``embedder`` and ``reranker`` (checkpoint paths or hub
    ids) over the index in ``index_dir``, set up by a :class:`unime.config.PipelineConfig`'s
    ``serve``, ``models``, ``data`` and ``eval.rerank_engine`` sections.

    The paths come resolved: which checkpoint a pipeline run trained and where it put its index
    is the pipeline's knowledge (:func:`unime.pipeline.deploy.app_for_run`), not the library's.
    """
    options, serve_config, models = config.data.storage_options, config.serve, config.models
    light = {"num_cpus": serve_config.replica_cpus} | (
        {"resources": dict(serve_config.replica_resources)} if serve_config.replica_resources else {})
    model = {"num_cpus": serve_config.replica_cpus} | (
        {"num_gpus": serve_config.model_gpus} if serve_config.model_gpus else {}) | (
        {"resources": dict(serve_config.model_resources)} if serve_config.model_resources else {})
    inputs = embedder_inputs(config, index_dir)
    if serve_config.host in ("0.0.0.0", "::") and not serve_config.api_key:
        logging.getLogger("unime.serving").warning(
            "serving on %s without serve.api_key: anyone who reaches the port can search and embed", serve_config.host)
    queues = {"max_queued_requests": serve_config.max_queued_requests,
              "backpressure_config": {"status_code": 503, "retry_after_s": serve_config.retry_after_s}}
    return Ingress.options(ray_actor_options=light, max_ongoing_requests=serve_config.max_ongoing_requests,
                           **queues).bind(
        EmbedderDeployment.options(ray_actor_options=model, max_ongoing_requests=max(2 * serve_config.batch_size, 8),
                                   **queues).bind(
            embedder, models.dtype, models.device, serve_config.batch_size, serve_config.batch_wait_s, inputs,
            options, serve_config.limits.max_input_tokens),
        RetrieverDeployment.options(ray_actor_options=light, max_ongoing_requests=serve_config.max_ongoing_requests,
                                    **queues).bind(index_dir, embedder, options, inputs),
        RerankerDeployment.options(ray_actor_options=model, max_ongoing_requests=2, **queues).bind(
            reranker, models.dtype, models.device, config.reranker_inputs(), serve_config.rerank_backend,
            asdict(config.eval.rerank_engine), options),
        asdict(serve_config.limits), serve_config.api_key, serve_config.rerank_mode,
        config.data.image_root, options, names={"embedder": serve_config.model_name,
                                                "reranker": serve_config.reranker_name},
        retry_after_s=serve_config.retry_after_s, request_timeout_s=serve_config.request_timeout_s)
