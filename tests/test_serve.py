"""The Serve app over HTTP on 127.0.0.1: every endpoint, ordering, and bad requests as 4xx."""

from __future__ import annotations

import base64
import io
from urllib.parse import quote_plus

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import chromium_dom, free_port, scrape_metrics

pytestmark = pytest.mark.integration

KEY = {"Authorization": "Bearer secret"}


def png_data_url(size=(64, 64), noise: bool = False) -> str:
    buffer = io.BytesIO()
    if noise:  # incompressible: the encoded size tracks the pixel count
        pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
    else:
        Image.new("RGB", size, (220, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def base_url(ray_cluster, demo_dir, tiny_dir, tmp_path_factory):
    from ray import serve

    from tests.helpers import mining_config
    from unime.pipeline import build_index, ingest
    from unime.serving.deployments import build_app

    run_dir = tmp_path_factory.mktemp("serve")
    config = mining_config(demo_dir, tiny_dir, run_dir, f"models.reranker={tiny_dir}/reranker", "serve.api_key=secret",
                           "serve.replica_cpus=0.1", "serve.limits.max_image_bytes=20000", "serve.limits.max_top_k=20",
                           "serve.rerank_mode=pairwise", "eval.rerank_max_model_len=700")
    ingest.run(config.data, config.run_dir)
    build_index.run(config)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="unime", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def post(base_url, route, payload, headers=KEY):
    return requests.post(base_url + route, json=payload, headers=headers, timeout=60)


def test_health_and_page(base_url):
    assert requests.get(base_url + "/healthz", timeout=10).json() == {"status": "ok"}
    page = requests.get(base_url + "/", timeout=10)
    assert page.status_code == 200 and "unime search" in page.text


def test_embeddings_openai_shape(base_url):
    response = post(base_url, "/v1/embeddings", {"input": [{"text": "a red circle"}, {"image": png_data_url()},
                                                           {"text": "both", "image": png_data_url()}],
                                                 "instruction": "Represent the given item."})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    for item in body["data"]:
        assert item["object"] == "embedding" and abs(np.linalg.norm(item["embedding"]) - 1) < 1e-4


def test_search_orders_and_rerank_permutes_the_head(base_url):
    plain = post(base_url, "/v1/search", {"query": {"text": "two red circles"}, "top_k": 8, "rerank": False})
    assert plain.status_code == 200, plain.text
    results = plain.json()["results"]
    scores = [r["score"] for r in results]
    assert len(results) == 8 and scores == sorted(scores, reverse=True)
    assert all(r["rerank_score"] is None for r in results) and set(results[0]) >= {"id", "text", "image", "score"}
    reranked = post(base_url, "/v1/search", {"query": {"text": "two red circles"}, "top_k": 8, "rerank": True,
                                             "rerank_k": 5}).json()
    head = [r["id"] for r in reranked["results"][:5]]
    assert sorted(head) == sorted(r["id"] for r in results[:5])
    assert [r["id"] for r in reranked["results"][5:]] == [r["id"] for r in results[5:]]
    rerank_scores = [r["rerank_score"] for r in reranked["results"][:5]]
    assert rerank_scores == sorted(rerank_scores, reverse=True)
    assert set(reranked["timings_ms"]) == {"embed", "retrieve", "rerank", "total"}


def test_rerank_endpoint(base_url):
    response = post(base_url, "/v1/rerank", {"query": {"text": "a red circle"},
                                             "candidates": [{"text": "a red circle"}, {"text": "blue squares"},
                                                            {"image": png_data_url()}], "mode": "listwise"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(body["order"]) == [0, 1, 2] and abs(sum(body["scores"]) - 1) < 1e-5


@pytest.mark.parametrize(("payload", "headers", "status", "message"), [
    ({"query": {"text": "x"}}, {}, 401, "missing API key"),
    ({"query": {"text": "x"}}, {"X-API-Key": "wrong"}, 403, "invalid API key"),
    ({"query": {"text": "   "}}, KEY, 400, "empty"),
    ({"query": {"text": "x"}, "top_k": 0}, KEY, 400, "top_k"),
    ({"query": {"text": "x"}, "top_k": 999}, KEY, 400, "top_k"),
    ({"query": {"image": "bm90IGFuIGltYWdl"}}, KEY, 400, "cannot decode image"),
    ({"query": {"image": "%%%not-base64%%%"}}, KEY, 400, "not valid base64"),
    ({"query": {"image": "https://example.com/cat.png"}}, KEY, 400, "not fetched"),
    ({"query": {"image": "/etc/passwd"}}, KEY, 400, "not fetched"),
    ({"query": {"text": "x"}, "rerank_mode": "bogus"}, KEY, 400, "rerank mode"),
    ({"query": {"text": "x"}, "instruction": "y" * 1_000_000}, KEY, 413, "instruction: with query.text"),
    ({"query": {"text": "red \ud800 circles"}}, KEY, 400, "not valid Unicode"),
    ({"query": {"image": png_data_url((1, 300))}}, KEY, 400, "max_image_aspect"),
    ({"query": {"text": 5}}, KEY, 422, "string"),
    ({"query": "not an object"}, KEY, 422, ""),
])
def test_bad_requests_are_4xx_with_a_message(base_url, payload, headers, status, message):
    response = post(base_url, "/v1/search", payload, headers)
    assert response.status_code == status, response.text
    assert message in response.text


def test_oversized_image_and_malformed_json_then_still_serving(base_url):
    big = post(base_url, "/v1/search", {"query": {"image": png_data_url((400, 400), noise=True)}})
    assert big.status_code == 413 and "max_image_bytes" in big.text
    malformed = requests.post(base_url + "/v1/search", data="{not json", headers=KEY | {"Content-Type": "application/json"},
                              timeout=10)
    assert 400 <= malformed.status_code < 500
    assert post(base_url, "/v1/search", {"query": {"text": "a red circle"}, "rerank": False}).status_code == 200


def test_search_page_renders_results_in_headless_chromium(base_url, tmp_path):
    """Chromium loads the page, which runs a search (?q=) and renders the hits, their images
    fetched with the page's API key."""
    dom = chromium_dom(f"{base_url}/?q=two+red+circles&key=secret", tmp_path / "profile")
    assert "unime search" in dom
    assert dom.count('class="hit"') == 10, dom[-2000:]
    assert "results in" in dom and "retrieval " in dom and "rerank " in dom
    query, images = image_search(base_url)
    dom = chromium_dom(f"{base_url}/?q={quote_plus(query)}&key=secret", tmp_path / "profile")
    assert dom.count('src="blob:') == images, dom[-2000:]


def image_search(base_url) -> tuple[str, int]:
    """A query whose top 10 hold images (the random-init embedder ranks arbitrarily), and how many."""
    for query in ("two red circles", "Find an image that matches the given caption: red circles", "a blue square",
                  "green triangles", "Represent the given image."):
        hits = post(base_url, "/v1/search", {"query": {"text": query}, "top_k": 10, "rerank": False}).json()["results"]
        if any(h["image"] for h in hits):
            return query, sum(bool(h["image"]) for h in hits)
    raise AssertionError("no query found whose top 10 hold an image")


def test_corpus_images_need_the_api_key_before_the_path_is_looked_at(base_url):
    query, _ = image_search(base_url)
    hits = post(base_url, "/v1/search", {"query": {"text": query}, "top_k": 10, "rerank": False}).json()["results"]
    indexed = next(h["image"] for h in hits if h["image"])
    for path in (indexed, "not/indexed.png"):
        assert requests.get(f"{base_url}/images/{path}", timeout=10).status_code == 401
        assert requests.get(f"{base_url}/images/{path}", headers={"X-API-Key": "wrong"}, timeout=10).status_code == 403
    image = requests.get(f"{base_url}/images/{indexed}", headers=KEY, timeout=10)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert requests.get(f"{base_url}/images/not/indexed.png", headers=KEY, timeout=10).status_code == 404


def test_request_latency_reaches_the_metrics_endpoint(base_url, metrics_port):
    for route, payload in (("/v1/search", {"query": {"text": "a red circle"}, "top_k": 3}),
                           ("/v1/embeddings", {"input": [{"text": "a red circle"}]})):
        assert post(base_url, route, payload).status_code == 200
    found = scrape_metrics(metrics_port, ["ray_unime_serve_request_seconds_count"])
    routes = " ".join(found["ray_unime_serve_request_seconds_count"])
    assert 'route="search"' in routes and 'route="embeddings"' in routes, found


def test_a_rerank_prompt_over_the_token_budget_is_a_413_and_the_app_keeps_serving(base_url):
    """The reranker's token budget (eval.rerank_max_model_len) holds in Serve too: refused with
    its length, not truncated, not a 500."""
    long_query = {"text": " ".join(["red circle blue square green"] * 130)}  # under max_text_chars
    for mode in ("pairwise", "listwise"):
        response = post(base_url, "/v1/rerank", {"query": long_query, "candidates": [{"text": "a"}, {"text": "b"}],
                                                  "mode": mode})
        assert response.status_code == 413, response.text
        assert "max_model_len=700" in response.json()["error"]
    assert post(base_url, "/v1/rerank", {"query": {"text": "red"}, "candidates": [{"text": "a"}, {"text": "b"}]}
                ).status_code == 200
