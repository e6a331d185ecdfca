"""Qwen2-VL family processors that work with or without torchvision.

``Qwen2VLProcessor`` insists on a video processor, and the video processor needs
torchvision. Embedding, judging and reranking only ever see images, so where torchvision
is missing we build the same processor with its image half only: the PIL image processor
(no torchvision) plus the tokenizer, with identical image-token expansion.
"""

from __future__ import annotations

import importlib.util

from transformers import AutoTokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video half (serves Qwen2-VL and Qwen2.5-VL)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


def torchvision_available() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA build beside CPU torch fails at import time
        return False
    return True


def load_processor(name_or_path: str, min_pixels: int | None = None, max_pixels: int | None = None,
                   pil_images: bool = False, **kwargs):
    """Load the processor of a Qwen2-VL / Qwen2.5-VL checkpoint (hub id or local path).

    ``min_pixels`` / ``max_pixels`` override the checkpoint's image resolution bounds.
    Uses the checkpoint's own processor class when torchvision works, the image-only
    processor otherwise; both expand image tokens the same way. ``pil_images`` asks for the
    PIL image processor even where torchvision works (an input recipe's choice: its pixel
    values are those of transformers' original, pre-torchvision processor).
    """
    pixel_bounds = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    tokenizer.padding_side = "left"  # last-token pooling and batched next-token scoring
    if torchvision_available() and not pil_images:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(name_or_path, tokenizer=tokenizer, **pixel_bounds, **kwargs)
        if hasattr(processor, "image_processor"):
            return processor
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path, **pixel_bounds, **kwargs)
    return ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


def log_pixel_bounds(name_or_path: str, processor, recipe: str, resolution: str) -> None:
    """Say which pixel bounds the processor applies: a released checkpoint's preprocessor
    config sets them, and they decide how many tokens an image becomes."""
    import logging

    image_processor = processor.image_processor
    bounds = getattr(image_processor, "size", None) or {}
    logging.getLogger("unime.models").info(
        "%s: input recipe %s, image resolution %s, processor %s pixels %s..%s", name_or_path, recipe, resolution,
        type(image_processor).__name__, bounds.get("shortest_edge", getattr(image_processor, "min_pixels", None)),
        bounds.get("longest_edge", getattr(image_processor, "max_pixels", None)))
