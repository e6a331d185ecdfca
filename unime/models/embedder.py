"""The embedder's forward: MMEB-style inputs in, L2-normalised last-token embeddings out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unime.prompts import MMEB_IMAGE_PLACEHOLDER

QWEN_IMAGE_SEQUENCE = "<|vision_start|><|image_pad|><|vision_end|>"
_PLACEHOLDER = re.compile(re.escape(MMEB_IMAGE_PLACEHOLDER))


@dataclass
class EmbedItem:
    """One query or candidate: text (may be empty) and an image (PIL image or None)."""

    text: str
    image: Any = None


def format_embedding_text(text: str, has_image: bool, image_sequence: str = QWEN_IMAGE_SEQUENCE) -> str:
    """Swap MMEB's ``<|image_1|>`` placeholder for the backbone's own image tokens.

    An image without a placeholder goes first (as MMEB's own rows do); a placeholder
    without an image is dropped, so a text-only item never asks for pixels.
    """
    text = text or ""
    if not has_image:
        return _PLACEHOLDER.sub("", text)
    if _PLACEHOLDER.search(text):
        return _PLACEHOLDER.sub(image_sequence, text, count=1).replace(MMEB_IMAGE_PLACEHOLDER, "")
    return image_sequence + text


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token, for left or right padding."""
    if bool(attention_mask[:, -1].all()):  # left padding: the last position is always real
        return hidden[:, -1]
    last = attention_mask.long().sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class PooledEncoder(torch.nn.Module):
    """The embedding forward as a module (what DDP wraps): last-layer hidden state of the
    last token, L2-normalised. Skips the LM head, which embeddings never need."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch) -> torch.Tensor:
        outputs = self.model.model(**batch, use_cache=False)
        pooled = last_token_pool(outputs.last_hidden_state, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled.float(), dim=-1)


class Embedder:
    """Load a Qwen2-VL-family checkpoint once; embed batches of :class:`EmbedItem`.

    Embedding = L2-normalised last-layer hidden state of the last token (left padding),
    as in VLM2Vec and UniME-V2.
    """

    def __init__(self, name_or_path: str, dtype: str = "float32", device: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None):
        from unime.models.loading import load_model
        from unime.models.processor import load_processor

        self.model = load_model(name_or_path, dtype=dtype, device=device)
        self.processor = load_processor(name_or_path, min_pixels=min_pixels, max_pixels=max_pixels)
        self.encoder = PooledEncoder(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def collate(self, items: list[EmbedItem]) -> dict[str, torch.Tensor]:
        texts = [format_embedding_text(item.text, item.image is not None) for item in items]
        images = [item.image for item in items if item.image is not None]
        batch = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable embeddings ``[B, D]`` of a collated batch."""
        return self.encoder(**batch)

    @torch.inference_mode()
    def encode(self, items: list[EmbedItem]) -> np.ndarray:
        return self.forward(self.collate(items)).cpu().numpy()
