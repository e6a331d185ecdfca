"""The response shapes the ecosystem's clients parse, checked against re-derivations of those
clients' own decoding (no running app)."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest

from unime.serving import formats
from unime.serving.api import EmbeddingsRequest, InputError, Item, RerankRequest


def test_base64_embeddings_are_little_endian_float32_as_the_openai_sdk_decodes_them():
    vector = np.array([0.25, -1.5, 3.0e-7, 1.0], dtype=np.float32)
    body = formats.embeddings_body([vector, -vector], [5, 7], "unime", "base64")
    payload = body["data"][0]["embedding"]
    assert isinstance(payload, str)
    decoded = struct.unpack("<4f", base64.b64decode(payload))  # explicit little-endian, not numpy's native order
    assert decoded == tuple(vector.tolist())
    assert body["usage"] == {"prompt_tokens": 12, "total_tokens": 12}
    assert [d["index"] for d in body["data"]] == [0, 1] and body["model"] == "unime"
    floats = formats.embeddings_body([vector], [3], "unime", "float")["data"][0]["embedding"]
    assert floats == vector.tolist() and all(type(x) is float for x in floats)


def test_the_openai_input_forms_become_items():
    assert EmbeddingsRequest(input="red circles").items() == [Item(text="red circles")]
    assert EmbeddingsRequest(input=["a", "b"]).items() == [Item(text="a"), Item(text="b")]
    mixed = EmbeddingsRequest(input=["a", {"text": "b", "image": "iVBO"}]).items()
    assert mixed == [Item(text="a"), Item(text="b", image="iVBO")]
    for tokens in ([1, 2, 3], [[1, 2], [3]]):
        with pytest.raises(InputError, match=r"input\[0\]: token ids are not accepted") as error:
            EmbeddingsRequest(input=tokens).items()
        assert error.value.param == "input[0]"


def test_dimensions_other_than_the_models_own_are_refused():
    formats.checked_dimensions(None, 128)
    formats.checked_dimensions(128, 128)
    for wrong in (64, 256, 0):
        with pytest.raises(InputError, match="128-dimensional and not trained to be truncated") as error:
            formats.checked_dimensions(wrong, 128)
        assert error.value.param == "dimensions" and error.value.status == 400


def test_error_bodies_have_openais_shape():
    assert formats.error_body(400, "input[0].text: empty", "input[0].text") == {
        "error": {"message": "input[0].text: empty", "type": "invalid_request_error", "param": "input[0].text",
                  "code": None}}
    assert formats.error_body(401, "missing API key")["error"]["type"] == "authentication_error"
    assert formats.error_body(404, "no such model", "model", "model_not_found")["error"]["code"] == "model_not_found"
    assert formats.error_body(413, "too long")["error"]["type"] == "invalid_request_error"


def test_validation_errors_name_the_field_a_client_wrote():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        RerankRequest(query="q", documents=[{"text": 5}])
    # FastAPI prefixes body fields with "body"
    errors = [dict(e, loc=("body", *e["loc"])) for e in caught.value.errors()]
    message, param = formats.validation_error(errors)
    assert param.startswith("documents[0]") and "documents[0]" in message and "body" not in message
    assert formats.validation_error([{"loc": ("body",), "msg": "JSON decode error"}]) == ("JSON decode error", None)


def test_rerank_results_are_best_first_in_cohere_and_tei_shapes():
    order, scores = [2, 0, 1], [0.5, 0.1, 0.9]
    assert formats.rerank_results(order, scores, None, None) == [
        {"index": 2, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.5},
        {"index": 1, "relevance_score": 0.1}]
    documents = [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    assert formats.rerank_results(order, scores, documents, 2) == [
        {"index": 2, "relevance_score": 0.9, "document": {"text": "c"}},
        {"index": 0, "relevance_score": 0.5, "document": {"text": "a"}}]
    assert formats.rerank_results(order, scores, None, 10) == formats.rerank_results(order, scores, None, None)
    assert formats.tei_results(order, scores, ["a", "b", "c"]) == [
        {"index": 2, "score": 0.9, "text": "c"}, {"index": 0, "score": 0.5, "text": "a"},
        {"index": 1, "score": 0.1, "text": "b"}]
