"""Model loading and the model-facing pieces shared by embedder, judge and reranker."""

from unime.models.embedder import Embedder, EmbedItem, last_token_pool
from unime.models.loading import load_model, resolve_device, resolve_dtype
from unime.models.processor import load_processor

__all__ = [
    "EmbedItem",
    "Embedder",
    "last_token_pool",
    "load_model",
    "load_processor",
    "resolve_device",
    "resolve_dtype",
]
