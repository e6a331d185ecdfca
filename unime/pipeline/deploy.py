"""serve stage: deploy the retrieve-then-rerank app on this Ray cluster and try one search.

Starts Serve on ``serve.host:serve.port``, deploys the run's app (:func:`app_for_run`),
sends one example query over HTTP, reranked and not, and records both answers under
``<run_dir>/serve/`` (``example_search.json``, ``example_search_retrieval.json``). With
``serve.keep_running: false`` (the demo) the app is shut down afterwards; on a cluster it
keeps serving. Never skipped: a deployment is a side effect, not a cached artefact.
"""

from __future__ import annotations

import json
import time

from unime.config import PipelineConfig
from unime.data.storage import join, write_bytes
from unime.pipeline import build_index, manifest, train_embedder, train_reranker
from unime.pipeline.stage import Context, Stage, run_stage

STAGE = "serve"


def served_models(config: PipelineConfig) -> dict[str, str]:
    """What the app serves for a run: ``serve.embedder`` / ``serve.reranker`` when set, else the
    run's trained checkpoint once its training stage finished, else ``models.*``; and
    ``serve.index_dir``, else the run's build_index output."""
    run_dir, options, settings, models = config.run_dir, config.data.storage_options, config.serve, config.models
    return {"embedder": manifest.trained_or(run_dir, train_embedder, settings.embedder, models.embedder, options),
            "reranker": manifest.trained_or(run_dir, train_reranker, settings.reranker, models.reranker, options),
            "index_dir": settings.index_dir or build_index.output_path(run_dir)}


def app_for_run(config: PipelineConfig):
    """The retrieve-then-rerank Serve application of a pipeline run
    (:func:`unime.serving.deployments.build_app` on :func:`served_models`)."""
    # imported when an app is built: the deployments module brings FastAPI and Ray Serve, which
    # the pipeline's other stages (and the runner importing this module) do not need
    from unime.serving.deployments import build_app

    return build_app(config, **served_models(config))


def example_search(base_url: str, query: str, api_key: str | None, timeout_s: float = 60, rerank: bool = True) -> dict:
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.time() + timeout_s
    while True:
        try:
            response = requests.post(f"{base_url}/v1/search", json={"query": {"text": query}, "top_k": 5,
                                                                     "rerank": rerank},
                                     headers=headers, timeout=timeout_s)
            response.raise_for_status()
            return response.json()
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def build(context: Context) -> dict:
    from ray import serve

    config = context.config
    settings = config.serve
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(app_for_run(config), name="unime", route_prefix="/")
    base_url = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '') else settings.host}:{settings.port}"
    answer = example_search(base_url, settings.example_query, settings.api_key)
    retrieval_only = example_search(base_url, settings.example_query, settings.api_key, rerank=False)
    for name, payload in (("example_search.json", answer), ("example_search_retrieval.json", retrieval_only)):
        write_bytes(join(config.run_dir, STAGE, name), json.dumps(payload, indent=2).encode(),
                    config.data.storage_options)
    top = answer["results"][:3]
    if not settings.keep_running:
        serve.shutdown()
    return {"rows": {"url": base_url, "query": settings.example_query, "results": len(answer["results"]),
                     "top3": [r["text"] or r["image"] for r in top], "kept_running": settings.keep_running}}


# a deployment is a side effect, not a cached artefact: it runs every time
stage = Stage(STAGE, build, cached=False)


def run(config: PipelineConfig) -> dict:
    return run_stage(stage, config)
