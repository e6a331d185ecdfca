"""Response bodies in the shapes the ecosystem's clients parse: OpenAI's embeddings and errors,
Cohere's and Jina's rerank results, TEI's rerank list. Pure functions, testable without Serve."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from unime.serving.api import InputError

ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 504: "timeout",
               429: "rate_limit_error", 503: "service_unavailable"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body, which its SDK raises as a typed exception carrying ``message``."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def field_path(location: tuple | list) -> str:
    """A pydantic error location as the field a client wrote: ``input[0].text``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_error(errors: list[dict]) -> tuple[str, str | None]:
    """(message, param) for FastAPI's request-validation errors, without their raw ``detail``;
    ``param`` is the first error's field."""
    paths = [field_path([p for p in error.get("loc", ()) if p != "body"]) for error in errors]
    messages = [f"{path}: {error.get('msg', 'invalid')}" if path else error.get("msg", "invalid")
                for path, error in zip(paths, errors)]
    return "; ".join(messages) or "invalid request", (paths[0] or None) if paths else None


def checked_dimensions(dimensions: int | None, dimension: int) -> None:
    """UniME-V2 embeddings are pooled last hidden states, not trained for truncation (no
    Matryoshka loss): only the model's own dimension is served."""
    if dimensions is not None and dimensions != dimension:
        raise InputError(f"dimensions: this model's embeddings are {dimension}-dimensional and not trained to be "
                         f"truncated; omit dimensions or send {dimension}", param="dimensions")


def encoded_embedding(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A float list, or base64 of the little-endian float32 bytes (what the OpenAI SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()


def embeddings_body(vectors: list[np.ndarray], tokens: list[int], model: str, encoding_format: str) -> dict:
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": k, "embedding": encoded_embedding(v, encoding_format)}
                     for k, v in enumerate(vectors)],
            "usage": {"prompt_tokens": int(sum(tokens)), "total_tokens": int(sum(tokens))}}


def ranked(order: list[int], scores: list[float], top_n: int | None) -> list[tuple[int, float]]:
    """(document index, score) best first, the first ``top_n`` (all when None)."""
    best = [(int(k), float(scores[k])) for k in order]
    return best if top_n is None else best[:top_n]


def rerank_results(order: list[int], scores: list[float], documents: list[dict] | None,
                   top_n: int | None) -> list[dict[str, Any]]:
    """Cohere's and Jina's ``results``: ``{index, relevance_score, document?}`` best first."""
    results = []
    for index, score in ranked(order, scores, top_n):
        result: dict[str, Any] = {"index": index, "relevance_score": score}
        if documents is not None:
            result["document"] = documents[index]
        results.append(result)
    return results


def tei_results(order: list[int], scores: list[float], texts: list[str] | None) -> list[dict[str, Any]]:
    """TEI's rerank answer: ``[{index, score, text?}]`` best first."""
    return [{"index": index, "score": score} | ({"text": texts[index]} if texts is not None else {})
            for index, score in ranked(order, scores, None)]
