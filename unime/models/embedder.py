"""The embedder's forward: MMEB-style inputs in, L2-normalised last-token embeddings out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unime.models.recipes import Resolution, get_recipe


@dataclass
class EmbedItem:
    """One query or candidate: text (may be empty) and an image (PIL image or None)."""

    text: str
    image: Any = None


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token, for left or right padding."""
    if bool(attention_mask[:, -1].all()):  # left padding: the last position is always real
        return hidden[:, -1]
    last = attention_mask.long().sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class PromptTooLong(ValueError):
    """Items whose prompts exceed a token budget: ``over`` maps an item's position to its length."""

    def __init__(self, over: dict[int, int], limit: int):
        super().__init__(f"{len(over)} prompt(s) over {limit} tokens: {over}")
        self.over, self.limit = over, limit


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
    as in VLM2Vec and UniME-V2. ``input_format`` names the input recipe (placeholder, positions,
    image resize, truncation; :mod:`unime.models.recipes`) and ``image_resolution`` its image
    size (None: the recipe's default for ``use``, e.g. ``train_embedder``). A checkpoint on an
    object store is copied to this node first (:func:`unime.models.checkpoints.local_checkpoint`,
    with ``storage_options``).
    """

    def __init__(self, name_or_path: str, dtype: str = "float32", device: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None,
                 input_format: str = "qwen2-vl-native", image_resolution: Resolution | None = None,
                 use: str = "eval", storage_options: dict | None = None):
        from unime.models.checkpoints import local_checkpoint
        from unime.models.loading import load_model
        from unime.models.processor import load_processor, log_pixel_bounds

        name_or_path = local_checkpoint(name_or_path, storage_options)
        self.recipe = get_recipe(input_format)
        self.image_resolution = self.recipe.resolution_for(use, image_resolution)
        self.model = load_model(name_or_path, dtype=dtype, device=device)
        self.processor = load_processor(name_or_path, min_pixels=min_pixels, max_pixels=max_pixels,
                                        pil_images=self.recipe.pil_image_processor)
        log_pixel_bounds(name_or_path, self.processor, self.recipe.name, self.image_resolution)
        self.encoder = PooledEncoder(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare_image(self, image):
        """The image resized as this embedder's recipe feeds it (idempotent: :meth:`collate`
        applies it again), for caches that keep prepared rather than full-size images."""
        return self.recipe.embed_image(image, self.image_resolution)

    def collate(self, items: list[EmbedItem], truncate: bool = True) -> dict[str, torch.Tensor]:
        """The processor's batch; ``truncate=False`` keeps prompts the recipe would cut whole."""
        recipe = self.recipe
        texts = [recipe.embed_text(item.text, item.image is not None) for item in items]
        images = [recipe.embed_image(item.image, self.image_resolution) for item in items if item.image is not None]
        cut = truncate and recipe.max_length
        truncation = {"truncation": True, "max_length": recipe.max_length} if cut else {}
        batch = dict(self.processor(text=texts, images=images or None, padding=True, return_tensors="pt",
                                    **truncation))
        positions = recipe.position_ids(batch["attention_mask"])
        if positions is not None:
            batch["position_ids"] = positions
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable embeddings ``[B, D]`` of a collated batch."""
        return self.encoder(**batch)

    @torch.inference_mode()
    def encode(self, items: list[EmbedItem]) -> np.ndarray:
        return self.encode_counted(items)[0]

    @torch.inference_mode()
    def encode_counted(self, items: list[EmbedItem], max_tokens: int | None = None) -> tuple[np.ndarray, list[int]]:
        """The embeddings and each item's prompt length in tokens (image tokens included).

        ``max_tokens``: a budget checked before the forward, on prompts as templated and
        before any truncation; the items over it (or over the recipe's own ``max_length``,
        which would cut them) raise :class:`PromptTooLong`. Accepted items are never cut, so
        their embeddings equal :meth:`encode`'s.
        """
        batch = self.collate(items, truncate=max_tokens is None)
        tokens = batch["attention_mask"].sum(dim=1).tolist()
        limit = self.token_budget(max_tokens)
        if limit is not None and (over := {k: int(n) for k, n in enumerate(tokens) if n > limit}):
            raise PromptTooLong(over, limit)
        return self.forward(batch).cpu().numpy(), tokens

    def token_budget(self, max_tokens: int | None) -> int | None:
        """The longest prompt accepted under ``max_tokens``: the recipe's ``max_length`` caps it
        (a longer prompt would be cut). None: no budget."""
        if max_tokens is None:
            return None
        return min(max_tokens, self.recipe.max_length or max_tokens)

    @property
    def dimension(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

