"""serve stage: deploy the retrieve-then-rerank app on this Ray cluster and try one search.

Starts Serve on ``serve.host:serve.port``, deploys :func:`unime.serving.deployments.build_app`,
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

STAGE = "serve"


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


def run(config: PipelineConfig) -> dict:
    from ray import serve

    from unime.serving.deployments import build_app

    settings = config.serve
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(config), name="unime", route_prefix="/")
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
                     "top3": [r["text"] or r["image"] for r in top], "kept_running": settings.keep_running},
            "skipped": False}
