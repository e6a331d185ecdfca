"""HTTP request models, and input validation that turns bad input into 4xx.

The embeddings request is OpenAI's (``/v1/embeddings``), the rerank requests are Cohere's and
Jina's (``/v1/rerank``, ``/v2/rerank``) and TEI's (``/rerank``); unime's own extensions
(multimodal items, ``instruction``, ``mode``) are optional fields. Images arrive as base64 or
``data:`` URLs only: the server never fetches URLs or reads local paths named in a request.
"""

from __future__ import annotations

import base64
import binascii
import functools
import inspect
import io
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from unime.config import ServeLimits

_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)


class InputError(ValueError):
    """Bad request content; the message goes back to the client with a 4xx. ``param``: the
    request field at fault (OpenAI's error ``param``), ``code``: a machine-readable reason."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.retry_after_s = status, param, code, retry_after_s


class Item(BaseModel):
    text: str | None = Field(default=None, description="text of the query or candidate")
    image: str | None = Field(default=None, description="image as base64 or a data: URL (no remote URLs)")


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request; ``input`` items may also be unime's ``{text, image}`` objects."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "unime", "input": ["two red circles", "a blue square"]},
        {"model": "unime", "input": [{"text": "a red circle", "image": "data:image/png;base64,iVBORw0..."}],
         "encoding_format": "base64", "instruction": "Represent the given image with the following question:"}]})

    input: str | list[str | Item | int | list[int]] = Field(
        description="a string, a list of strings, or a list of {text, image} items (token ids are not accepted)")
    model: str | None = Field(default=None, description="the deployed embedder's name (GET /v1/models)")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float lists, or base64 of little-endian float32 (as the OpenAI SDK decodes)")
    dimensions: int | None = Field(default=None, description="the model's own dimension only (see GET /info)")
    user: str | None = Field(default=None, description="accepted and ignored, as OpenAI's end-user id")
    instruction: str | None = Field(default=None, description="unime: task instruction prepended to each text")

    def items(self) -> list[Item]:
        """``input`` as unime items, or :class:`InputError` for token ids."""
        inputs = [self.input] if isinstance(self.input, str) else self.input
        items = []
        for k, value in enumerate(inputs):
            if isinstance(value, int | list):
                raise InputError(f"input[{k}]: token ids are not accepted; send the text", param=f"input[{k}]")
            items.append(Item(text=value) if isinstance(value, str) else value)
        return items


class SearchRequest(BaseModel):
    """unime's retrieve-then-rerank search over the index."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"query": {"text": "two red circles"}, "top_k": 5, "rerank": True, "rerank_k": 10}]})

    query: Item
    instruction: str | None = None
    top_k: int = 10
    rerank: bool = True
    rerank_k: int = 10
    rerank_mode: str | None = None


class RerankRequest(BaseModel):
    """Cohere's and Jina's rerank request; the query and documents may also be unime's
    ``{text, image}`` objects (Cohere v1 sends documents as ``{text}`` objects)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "unime-reranker", "query": "two red circles", "documents": ["two red circles", "a blue square"],
         "top_n": 1, "return_documents": True}]})

    model: str | None = Field(default=None, description="the deployed reranker's name (GET /v1/models)")
    query: str | Item
    documents: list[str | Item]
    top_n: int | None = Field(default=None, description="how many results; all when omitted")
    return_documents: bool = Field(default=False, description="echo each result's document")
    max_tokens_per_doc: int | None = Field(
        default=None, description="not supported: a prompt over the reranker's budget is refused (413), not cut")
    mode: str | None = Field(default=None, description="unime: pairwise, listwise or listwise-greedy")

    def query_item(self) -> Item:
        return Item(text=self.query) if isinstance(self.query, str) else self.query

    def document_items(self) -> list[Item]:
        return [Item(text=d) if isinstance(d, str) else d for d in self.documents]


class TeiRerankRequest(BaseModel):
    """Text Embeddings Inference's rerank request."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"query": "two red circles", "texts": ["two red circles", "a blue square"], "return_text": True}]})

    query: str
    texts: list[str]
    return_text: bool = False
    raw_scores: bool = Field(default=False, description="not supported: scores are probabilities in [0, 1]")
    truncate: bool | None = Field(default=None, description="not supported: over-budget prompts are refused (413)")


def blames_field(function):
    """An :class:`InputError` that ``function`` raises names its ``field`` argument as the
    error's ``param``, unless it names one already."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except InputError as exc:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            exc.param = exc.param or bound.arguments["field"]
            raise

    return checked


@blames_field
def decode_image(value: str, limits: ServeLimits, field: str = "image"):
    """base64 / data URL -> RGB PIL image, or :class:`InputError` naming the problem."""
    from PIL import Image

    if value.startswith(("http://", "https://", "file:", "/", "s3://", "gs://")):
        raise InputError(f"{field}: send the image as base64 or a data URL; URLs and paths are not fetched")
    payload = _DATA_URL.sub("", value, count=1)
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise InputError(f"{field}: image larger than max_image_bytes={limits.max_image_bytes}", 413)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{field}: not valid base64 ({exc})") from exc
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise InputError(f"{field}: image of {width}x{height} exceeds max_image_pixels={limits.max_image_pixels}", 413)
        if max(width, height) > limits.max_image_aspect * min(width, height):
            raise InputError(f"{field}: image of {width}x{height}: its long side must be at most "
                             f"max_image_aspect={limits.max_image_aspect:g} times its short side")
        return image.convert("RGB")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{field}: cannot decode image ({type(exc).__name__})") from exc


@blames_field
def check_item(item: Item, limits: ServeLimits, field: str, instruction: str | None = None) -> tuple[str, object]:
    """(text, PIL image or None) for an item, or :class:`InputError`. ``max_text_chars``
    bounds the text the model reads: the instruction, when given, counts."""
    text = item.text or ""
    if len(text) > limits.max_text_chars:
        raise InputError(f"{field}.text: longer than max_text_chars={limits.max_text_chars}", 413)
    image = decode_image(item.image, limits, f"{field}.image") if item.image else None
    if not text.strip() and image is None:
        raise InputError(f"{field}: empty: give text, an image or both")
    check_unicode(text, f"{field}.text")
    if instruction:
        check_unicode(instruction, "instruction")
        text = f"{instruction}\n{text}" if text else instruction
        if len(text) > limits.max_text_chars:
            raise InputError(f"instruction: with {field}.text, longer than max_text_chars={limits.max_text_chars}",
                             413)
    return text, image


def check_unicode(text: str, field: str) -> None:
    """JSON can carry lone surrogates (``"\\ud800"``), which no tokenizer encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{field}: not valid Unicode (a lone surrogate at character {exc.start})") from exc


def check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InputError(f"{name}: {value} is outside {low}..{high}", param=name)
