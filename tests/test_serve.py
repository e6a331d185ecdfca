"""The Serve app over HTTP on 127.0.0.1: every endpoint, ordering, bad requests as 4xx, and the
ecosystem's real clients (the OpenAI SDK, LangChain's OpenAI embeddings, the Cohere SDK) against
unime's own models loaded in this process."""

from __future__ import annotations

import base64
import io
import time
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
def served(ray_cluster, demo_dir, tiny_dir, tmp_path_factory):
    """(base URL, config) of the app over a small index."""
    from ray import serve

    from tests.helpers import mining_config
    from unime.pipeline import build_index, ingest
    from unime.pipeline.deploy import app_for_run

    run_dir = tmp_path_factory.mktemp("serve")
    config = mining_config(demo_dir, tiny_dir, run_dir, f"models.reranker={tiny_dir}/reranker", "serve.api_key=secret",
                           "serve.replica_cpus=0.1", "serve.limits.max_image_bytes=20000", "serve.limits.max_top_k=20",
                           "serve.rerank_mode=pairwise", "eval.rerank_max_model_len=700",
                           # small queues, so the overload test sees them shed
                           "serve.max_ongoing_requests=8", "serve.max_queued_requests=8",
                           "serve.limits.max_body_bytes=1100000")
    ingest.run(config.data, config.run_dir)
    build_index.run(config)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_for_run(config), name="unime", route_prefix="/")
    yield f"http://127.0.0.1:{port}", config
    serve.shutdown()


@pytest.fixture(scope="module")
def base_url(served):
    return served[0]


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
    assert body["model"] == "unime" and body["usage"]["prompt_tokens"] > 3 * 5


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


def test_rerank_endpoint_takes_multimodal_documents(base_url):
    documents = [{"text": "a red circle"}, {"text": "blue squares"}, {"image": png_data_url()}]
    response = post(base_url, "/v1/rerank", {"query": {"text": "a red circle"}, "documents": documents,
                                             "mode": "listwise", "return_documents": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2] and body["mode"] == "listwise"
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5  # listwise: a softmax
    assert all(r["document"] == documents[r["index"]] for r in body["results"])


@pytest.mark.parametrize(("payload", "headers", "status", "message"), [
    ({"query": {"text": "x"}}, {}, 401, "missing API key"),
    ({"query": {"text": "x"}}, {"X-API-Key": "wrong"}, 401, "invalid API key"),
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
    ({"query": {"text": 5}}, KEY, 400, "query.text: Input should be a valid string"),
    ({"query": "not an object"}, KEY, 400, "query"),
])
def test_bad_requests_are_4xx_with_a_message(base_url, payload, headers, status, message):
    response = post(base_url, "/v1/search", payload, headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]  # OpenAI's error body, whatever the route
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}


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
        assert requests.get(f"{base_url}/images/{path}", headers={"X-API-Key": "wrong"}, timeout=10).status_code == 401
    image = requests.get(f"{base_url}/images/{indexed}", headers=KEY, timeout=10)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert requests.get(f"{base_url}/images/not/indexed.png", headers=KEY, timeout=10).status_code == 404


def test_request_latency_reaches_the_metrics_endpoint(base_url, metrics_port):
    for route, payload in (("/v1/search", {"query": {"text": "a red circle"}, "top_k": 3}),
                           ("/v1/embeddings", {"input": [{"text": "a red circle"}]})):
        assert post(base_url, route, payload).status_code == 200
    found = scrape_metrics(metrics_port, ["ray_unime_serve_request_seconds_count"],
                           until=lambda series: all(f'route="{route}"' in " ".join(series)
                                                    for route in ("search", "embeddings")))
    routes = " ".join(found["ray_unime_serve_request_seconds_count"])
    assert 'route="search"' in routes and 'route="embeddings"' in routes, found


def test_a_rerank_prompt_over_the_token_budget_is_a_413_and_the_app_keeps_serving(base_url):
    """The reranker's token budget (eval.rerank_max_model_len) holds in Serve too: refused with
    its length, not truncated, not a 500."""
    long_query = {"text": " ".join(["red circle blue square green"] * 130)}  # under max_text_chars
    for mode in ("pairwise", "listwise"):
        response = post(base_url, "/v1/rerank", {"query": long_query, "documents": ["a", "b"], "mode": mode})
        assert response.status_code == 413, response.text
        assert "max_model_len=700" in response.json()["error"]["message"]
    assert post(base_url, "/v1/rerank", {"query": "red", "documents": ["a", "b"]}).status_code == 200


def one_bit_png_data_url(size) -> str:
    """A 1-bit PNG: many pixels in few bytes (a decompression-bomb shape)."""
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


PARROTS = "\U0001F99C" * 2000  # under max_text_chars=4000, ~8,000 byte-level tokens: over max_input_tokens=4096
LONG = "y" * 1_000_000
NOISE = {"image": png_data_url((400, 400), noise=True)}  # over max_image_bytes=20000
THIN = {"image": png_data_url((1, 300))}
HUGE = {"image": one_bit_png_data_url((4100, 4100))}  # 16.8M pixels in a few kB


@pytest.mark.parametrize(("route", "payload", "status", "param", "message"), [
    ("/v1/search", {"query": {"text": LONG}}, 413, "query", "max_text_chars=4000"),
    ("/v1/search", {"query": {"text": "red"}, "instruction": LONG}, 413, "query", "max_text_chars=4000"),
    ("/v1/embeddings", {"input": ["red", LONG]}, 413, "input[1]", "max_text_chars=4000"),
    ("/v1/embeddings", {"input": ["red"], "instruction": LONG}, 413, "input[0]", "max_text_chars=4000"),
    ("/v1/rerank", {"query": LONG, "documents": ["a"]}, 413, "query", "max_text_chars=4000"),
    ("/v1/rerank", {"query": "red", "documents": ["a", LONG]}, 413, "documents[1]", "max_text_chars=4000"),
    ("/v2/rerank", {"query": "red", "documents": [LONG]}, 413, "documents[0]", "max_text_chars=4000"),
    ("/rerank", {"query": "red", "texts": ["a", LONG]}, 413, "texts[1]", "max_text_chars=4000"),
    ("/v1/search", {"query": {"text": PARROTS}}, 413, "query", "over max_input_tokens=4096"),
    ("/v1/search", {"query": {"text": "red"}, "instruction": PARROTS}, 413, "query", "over max_input_tokens=4096"),
    ("/v1/embeddings", {"input": ["red", PARROTS, "blue"]}, 413, "input[1]", "over max_input_tokens=4096"),
    ("/v1/search", {"query": NOISE}, 413, "query.image", "max_image_bytes=20000"),
    ("/v1/embeddings", {"input": [NOISE]}, 413, "input[0].image", "max_image_bytes=20000"),
    ("/v1/rerank", {"query": "red", "documents": [NOISE]}, 413, "documents[0].image", "max_image_bytes=20000"),
    ("/v1/search", {"query": HUGE}, 413, "query.image", "max_image_pixels=16000000"),
    ("/v1/embeddings", {"input": [HUGE]}, 413, "input[0].image", "max_image_pixels=16000000"),
    ("/v1/rerank", {"query": HUGE, "documents": ["a"]}, 413, "query.image", "max_image_pixels=16000000"),
    ("/v1/embeddings", {"input": [THIN]}, 400, "input[0].image", "max_image_aspect=200"),
    ("/v1/rerank", {"query": "red", "documents": [THIN]}, 400, "documents[0].image", "max_image_aspect=200"),
    ("/v1/search", {"query": {"text": "red"}, "top_k": 21}, 400, "top_k", "outside 1..20"),
    ("/v1/search", {"query": {"text": "red"}, "rerank_k": 21}, 400, "rerank_k", "outside 1..20"),
    ("/v1/rerank", {"query": "red", "documents": ["a"] * 21}, 400, "documents", "outside 1..20"),
    ("/v2/rerank", {"query": "red", "documents": ["a"] * 21}, 400, "documents", "outside 1..20"),
    ("/rerank", {"query": "red", "texts": ["a"] * 21}, 400, "texts", "outside 1..20"),
    ("/v1/embeddings", {"input": ["a"] * 33}, 400, "input", "outside 1..32"),
])
def test_every_limit_is_a_quick_4xx_on_every_route_and_the_next_search_is_normal(base_url, route, payload, status,
                                                                                 param, message):
    """Each ``serve.limits`` bound on each route that takes it: refused within a second, naming
    the field, before any model work that the bound exists to prevent; a search right after is
    answered in normal time."""
    started = time.perf_counter()
    response = post(base_url, route, payload)
    refused_in = time.perf_counter() - started
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert message in error["message"] and error["param"].startswith(param), error
    assert refused_in < 1.0, refused_in
    started = time.perf_counter()
    assert post(base_url, "/v1/search", {"query": {"text": "a red circle"}, "rerank": False}).status_code == 200
    assert time.perf_counter() - started < 2.0


# ----- the ecosystem's clients, pointed at 127.0.0.1

TEXTS = ["two red circles", "a blue square on the left", "three green triangles"]


@pytest.fixture(scope="module")
def local_models(served, tiny_dir):
    """unime's own embedder and reranker in this process, fed as the deployments feed them."""
    from unime.models import Embedder
    from unime.pipeline import build_index
    from unime.rerank import Reranker
    from unime.serving.deployments import embedder_inputs

    config = served[1]
    embedder = Embedder(str(tiny_dir / "embedder"), device="cpu",
                        **embedder_inputs(config, build_index.output_path(config.run_dir)))
    return embedder, Reranker(str(tiny_dir / "reranker"), device="cpu", **config.reranker_inputs())


def own_vectors(embedder, texts) -> np.ndarray:
    from unime.models import EmbedItem

    return np.stack([embedder.encode([EmbedItem(text)])[0] for text in texts])


def test_the_openai_sdk_embeds_str_and_lists_in_float_and_base64(base_url, local_models):
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="secret", max_retries=0)
    expected = own_vectors(local_models[0], TEXTS)
    one = client.embeddings.create(model="unime", input=TEXTS[0])  # the SDK asks for base64 and decodes it
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-6)
    for encoding in ("float", "base64"):
        many = client.embeddings.create(model="unime", input=TEXTS, encoding_format=encoding, dimensions=128)
        got = [base64_floats(d.embedding) if encoding == "base64" else d.embedding for d in many.data]
        np.testing.assert_allclose(np.array(got), expected, atol=1e-6)
        assert many.usage.prompt_tokens > 0 and many.model == "unime"
    assert [m.id for m in client.models.list()] == ["unime", "unime-reranker"]


def base64_floats(payload: str) -> list[float]:
    import struct

    raw = base64.b64decode(payload)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_the_openai_sdk_raises_its_typed_errors_with_unimes_message(base_url):
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="secret", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="not trained to be truncated"):
        client.embeddings.create(model="unime", input="red", dimensions=64)
    with pytest.raises(openai.BadRequestError, match=r"input: 33 is outside 1..32"):
        client.embeddings.create(model="unime", input=["red"] * 33)
    with pytest.raises(openai.APIStatusError, match="longer than max_text_chars") as too_long:
        client.embeddings.create(model="unime", input="red " * 2000)
    assert too_long.value.status_code == 413 and too_long.value.body["param"] == "input[0]"
    with pytest.raises(openai.NotFoundError, match="this server's embedder is 'unime'"):
        client.embeddings.create(model="text-embedding-3-small", input="red")
    with pytest.raises(openai.BadRequestError, match="token ids are not accepted"):
        client.embeddings.create(model="unime", input=[[1, 2, 3]])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="unime", input="red")


def test_langchains_openai_embeddings_wrapper_gets_unimes_vectors(base_url, local_models):
    from langchain_openai import OpenAIEmbeddings

    # no tiktoken pre-tokenisation: that is OpenAI's own tokenizer, not the served model's
    wrapper = OpenAIEmbeddings(model="unime", base_url=f"{base_url}/v1", api_key="secret",
                               check_embedding_ctx_length=False, max_retries=0)
    expected = own_vectors(local_models[0], TEXTS)
    np.testing.assert_allclose(wrapper.embed_documents(TEXTS), expected, atol=1e-6)
    np.testing.assert_allclose(wrapper.embed_query(TEXTS[1]), expected[1], atol=1e-6)


def test_the_cohere_sdk_and_tei_rerank_in_unimes_order(base_url, local_models):
    import cohere

    reranker = local_models[1]
    query, documents = "two red circles", [*TEXTS, "one red circle", "red squares"]
    own = reranker.rank((query, None), [(d, None) for d in documents], mode="pairwise")  # the app's mode
    client = cohere.ClientV2(api_key="secret", base_url=base_url)
    answer = client.rerank(model="unime-reranker", query=query, documents=documents, top_n=3)
    assert [r.index for r in answer.results] == own.order[:3]
    np.testing.assert_allclose([r.relevance_score for r in answer.results],
                               [own.scores[k] for k in own.order[:3]], atol=1e-5)
    with pytest.raises(cohere.NotFoundError):
        client.rerank(model="rerank-v3.5", query=query, documents=documents)
    tei = post(base_url, "/rerank", {"query": query, "texts": documents, "return_text": True})
    assert tei.status_code == 200, tei.text
    assert [r["index"] for r in tei.json()] == own.order
    assert [r["text"] for r in tei.json()] == [documents[k] for k in own.order]
    refused = post(base_url, "/rerank", {"query": query, "texts": documents, "raw_scores": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "raw_scores"


def test_info_and_models_describe_the_deployment(base_url, tiny_dir):
    info = requests.get(base_url + "/info", headers=KEY, timeout=30).json()
    assert info["model_name"] == "unime" and info["embedding_dimension"] == 128
    assert info["model_id"] == str(tiny_dir / "embedder") and info["model_dtype"] == "float32"
    assert info["input_recipe"] == "qwen2-vl-native" and info["max_client_batch_size"] == 32
    assert info["reranker"] == {"model_name": "unime-reranker", "model_id": str(tiny_dir / "reranker"),
                                "backend": "hf", "mode": "pairwise"}
    assert info["limits"]["max_image_bytes"] == 20000 and info["versions"]["torch"]
    models = requests.get(base_url + "/v1/models", headers=KEY, timeout=30).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["unime", "unime-reranker"]
    assert requests.get(base_url + "/v1/models", timeout=30).status_code == 401
    schema = requests.get(base_url + "/openapi.json", timeout=30).json()
    for route in ("/v1/embeddings", "/v1/rerank", "/v2/rerank", "/rerank", "/v1/search", "/v1/models", "/info"):
        assert route in schema["paths"], route
    assert schema["components"]["schemas"]["EmbeddingsRequest"]["examples"]


def test_a_body_over_max_body_bytes_is_a_413_before_it_is_parsed(base_url):
    junk = {"query": {"text": "red"}, "padding": "x" * 1_200_000}
    response = post(base_url, "/v1/search", junk)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"query": {"text": "red"}, "padding": "'
        for _ in range(12):
            yield b"x" * 100_000
        yield b'"}'

    response = requests.post(base_url + "/v1/search", data=chunked(), timeout=60,
                             headers=KEY | {"Content-Type": "application/json"})
    assert response.status_code == 413 and "max_body_bytes=1100000" in response.text
    assert post(base_url, "/v1/search", {"query": {"text": "red"}, "rerank": False}).status_code == 200


def test_overload_is_shed_with_503_and_retry_after_and_the_app_recovers(base_url):
    """400 searches from 64 threads against queues of 8 + 8: each answered 200 or 503 with
    Retry-After, none waits without bound; right after, the app serves normally."""
    from concurrent.futures import ThreadPoolExecutor

    def search(k: int) -> tuple[int, str | None]:
        response = post(base_url, "/v1/search", {"query": {"text": f"red circles {k}"}, "rerank": False})
        return response.status_code, response.headers.get("Retry-After")

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(search, range(400)))
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) > 0 and statuses.count(503) > 0, statuses.count(200)
    assert all(retry is not None and int(retry) >= 1 for status, retry in answers if status == 503)
    assert requests.get(base_url + "/healthz", timeout=10).status_code == 200
    assert post(base_url, "/v1/search", {"query": {"text": "a red circle"}, "rerank": False}).status_code == 200


def replica_memory() -> dict[str, int]:
    """Resident memory (bytes) of every running replica of the app, by deployment and pid (the
    controller's own account of its replicas, which needs no dashboard)."""
    import psutil
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployments = details["applications"]["unime"]["deployments"]
    return {f"{name}/{replica['pid']}": psutil.Process(replica["pid"]).memory_info().rss
            for name, deployment in deployments.items() for replica in deployment["replicas"]
            if replica["state"] == "RUNNING"}


SOAK_VALID = [
    ("/v1/search", {"query": {"text": "two red circles"}, "rerank": False}),
    ("/v1/search", {"query": {"text": "blue squares"}, "top_k": 5, "rerank": True, "rerank_k": 3}),
    ("/v1/embeddings", {"input": ["a red circle", "green triangles"], "model": "unime"}),
    ("/v1/rerank", {"query": {"text": "a red circle"}, "documents": [{"text": "red circle"}, {"text": "blue"}]}),
]
SOAK_MALFORMED = [
    ("/v1/search", {"query": {"text": "red \ud800 circles"}}),
    ("/v1/search", {"query": {"image": png_data_url((1, 300))}}),
    ("/v1/search", {"query": {"text": "x"}, "instruction": "y" * 200_000}),
    ("/v1/search", {"query": {"text": 5}}),
    ("/v1/embeddings", {"input": [], "model": "unime"}),
    ("/v1/rerank", {"query": {"text": "x"}, "documents": []}),
    ("/v1/search", "{not json"),
]


def test_a_minute_of_mixed_valid_and_malformed_traffic_gives_no_5xx_and_bounded_memory(base_url):
    """5000 requests or 60 s, whichever ends first, from 8 threads, one in three malformed:
    every valid request 200 (or a deliberate 503/504 shed), every malformed one a 4xx, and no
    replica's resident memory grows by more than half (both printed)."""
    from concurrent.futures import ThreadPoolExecutor

    before = replica_memory()
    assert before, "no Serve replica found"
    deadline = time.monotonic() + 60

    def send(k: int) -> tuple[bool, int] | None:
        if time.monotonic() > deadline:
            return None
        valid = k % 3 != 2
        route, payload = SOAK_VALID[k % 4] if valid else SOAK_MALFORMED[k % len(SOAK_MALFORMED)]
        if isinstance(payload, str):
            response = requests.post(base_url + route, data=payload, timeout=60,
                                     headers=KEY | {"Content-Type": "application/json"})
        else:
            response = post(base_url, route, payload)
        return valid, response.status_code

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = [a for a in pool.map(send, range(5000)) if a is not None]
    seconds = time.monotonic() - started
    after = replica_memory()
    print(f"soak: {len(answers)} requests in {seconds:.0f} s")
    for name in sorted(before):
        print(f"  {name}: RSS {before[name] / 2**20:.0f} MiB -> {after.get(name, 0) / 2**20:.0f} MiB")
    valid = [status for ok, status in answers if ok]
    malformed = [status for ok, status in answers if not ok]
    assert len(answers) >= 500 and valid.count(200) >= len(valid) // 2
    assert set(valid) <= {200, 503, 504}, sorted(set(valid))
    assert all(400 <= status < 500 for status in malformed), sorted(set(malformed))
    assert after.keys() == before.keys(), "a replica died or was replaced during the soak"
    for name, rss in before.items():
        assert after[name] < 1.5 * rss, (name, rss, after[name])
    assert post(base_url, "/v1/search", {"query": {"text": "a red circle"}, "rerank": False}).status_code == 200
