"""Input recipes: how a model's inputs are rendered, fixed per model family and checkpoint.

A checkpoint is only comparable with its published numbers when it is fed the inputs it was
trained and evaluated with. A recipe fixes, for the embedder and for the reranker / judge:

- how MMEB's ``<|image_1|>`` placeholder becomes image tokens, and which position ids the
  language model sees (the released UniME-V2 embedders were trained with a bare
  ``<|image_pad|>`` and therefore plain 1-D positions, not Qwen2-VL's M-RoPE);
- how images are resized before the processor (squashed to a square side per resolution),
  how they become RGB, and which processor backend turns them into pixel values;
- truncation of the embedder's input, and how the reranker cleans its texts.

Recipes (see ``docs/input_recipes.md``):

``qwen2-vl-native``
    Qwen2-VL's own conventions, for models trained from scratch here: ``<|vision_start|>
    <|image_pad|><|vision_end|>``, M-RoPE positions, aspect ratio kept within the processor's
    bounds, texts stripped of placeholders.
``unime-v2``
    The authors' released code (UniME-V2 paper, Sec. 4.1 and its released ``Embedding/``
    evaluation): bare ``<|image_pad|>``, 1-D positions, images squashed to 1344x1344 (``high``,
    evaluation) / 672x672 (``mid``, training) / 128x128 (``low``), PIL image processor, inputs
    truncated at 4,096 tokens; reranker images squashed, RGBA pasted on white, then fitted into
    4..300 28x28 patches; reranker texts lose only the placeholder and the newline after it.
``vlm2vec``
    VLM2Vec's Qwen2-VL checkpoints (the paper's off-the-shelf mining embedder; UniME-V2's
    embedding code is a fork of VLM2Vec's): the same placeholder, positions, resize and
    processor, but trained at ``high`` and evaluated without truncation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from unime.prompts import MMEB_IMAGE_PLACEHOLDER, strip_image_placeholders

Resolution = Literal["high", "mid", "low", "native"]
# Square side an image is resized to (aspect ratio not kept) per resolution; "native" keeps it.
SQUASH_SIDES: dict[str, int | None] = {"high": 1344, "mid": 672, "low": 128, "native": None}
PATCH_FACTOR = 28  # Qwen2-VL / Qwen2.5-VL: 14-pixel patches merged 2x2
MAX_ASPECT_RATIO = 200

# PIL ``info`` key marking an image as already prepared by a recipe (kept through pickling):
# a cache may hold prepared images, and preparing one again must change nothing (the
# reranker's squash-then-fit is not idempotent: a fitted 476x476 squashed back to 1344 is not
# the same image)
PREPARED = "unime.prepared"
QWEN_IMAGE_PAD = "<|image_pad|>"
QWEN_IMAGE_SEQUENCE = "<|vision_start|><|image_pad|><|vision_end|>"
_MMEB_PLACEHOLDER = re.compile(re.escape(MMEB_IMAGE_PLACEHOLDER))


@dataclass(frozen=True)
class InputRecipe:
    """One family's input conventions; see the module docstring for the named recipes.

    ``stage_resolutions`` is the image resolution each use of a model gets unless the config
    names one (the UniME-V2 authors train at ``mid`` and evaluate at ``high``). The embedder's
    processor keeps the checkpoint's own pixel bounds in every recipe that squashes: the
    authors' trainer passes 256..1280 x 28 x 28 to ``from_pretrained`` beside an already
    loaded image processor, which the transformers versions they used (4.4x) silently
    ignore. ``rerank_fit_pixels`` is the (min, max) pixel budget reranker and judge images are fitted
    into before the processor (None: the processor's bounds do it).
    """

    name: str
    image_sequence: str
    one_d_positions: bool
    pil_image_processor: bool
    max_length: int | None
    stage_resolutions: dict[str, Resolution]
    rerank_fit_pixels: tuple[int, int] | None
    rerank_rgba_on_white: bool
    rerank_strip_text: bool
    global_image_prompt: str
    global_caption_prompt: str = "{caption}"

    # -- embedder -------------------------------------------------------------------------
    def embed_text(self, text: str | None, has_image: bool) -> str:
        """MMEB text -> the text the embedder's processor sees.

        The placeholder becomes this recipe's image sequence; an image without a placeholder
        goes first (as MMEB's own rows do); a placeholder without an image is dropped, so a
        text-only item never asks for pixels.
        """
        text = text or ""
        if not has_image:
            return _MMEB_PLACEHOLDER.sub("", text)
        if _MMEB_PLACEHOLDER.search(text):
            return _MMEB_PLACEHOLDER.sub(self.image_sequence, text, count=1).replace(MMEB_IMAGE_PLACEHOLDER, "")
        return self.image_sequence + text

    def embed_image(self, image: Any, resolution: Resolution):
        """The image as the embedder's processor receives it: squashed in its own mode (the
        processor converts it to RGB afterwards, as the authors' code does). An image this
        recipe already prepared the same way passes through."""
        if image is None:
            return None
        return _prepared_once(image, (self.name, "embed", resolution), lambda: squash(image, resolution))

    def position_ids(self, attention_mask):
        """1-D positions counted over real tokens (padding at 1), or None for the model's own."""
        if not self.one_d_positions:
            return None
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.masked_fill(attention_mask == 0, 1)

    # -- reranker and judge ---------------------------------------------------------------
    def rerank_text(self, text: str | None) -> str:
        if self.rerank_strip_text:
            return strip_image_placeholders(text)
        text = (text or "").replace(MMEB_IMAGE_PLACEHOLDER, QWEN_IMAGE_PAD)
        return text.replace(QWEN_IMAGE_PAD + "\n", "").replace(QWEN_IMAGE_PAD, "")

    def rerank_image(self, image: Any, resolution: Resolution, fit_pixels: tuple[int, int] | None = None):
        """The image as the reranker's processor receives it: squash, RGB, fit the budget."""
        if image is None or isinstance(image, str):
            return image
        bounds = fit_pixels or self.rerank_fit_pixels
        return _prepared_once(image, (self.name, "rerank", resolution, bounds),
                              lambda: self._rerank_resize(image, resolution, bounds))

    def _rerank_resize(self, image, resolution: Resolution, bounds: tuple[int, int] | None):
        image = squash(image, resolution)
        image = rgba_on_white(image) if self.rerank_rgba_on_white else image.convert("RGB")
        if bounds is None:
            return image
        height, width = fit_to_budget(image.height, image.width, *bounds)
        return image.resize((width, height))

    def prepare_chat(self, chat: list[dict], resolution: Resolution, fit_pixels: tuple[int, int] | None = None,
                     prepared_images: dict | None = None) -> list[dict]:
        """A judge / reranker chat with texts cleaned and images prepared by this recipe.

        Text parts that clean to nothing are dropped: the chat template renders them as
        nothing either way. ``prepared_images`` (keyed by ``id``) lets chats that share an
        image, such as a query's ~51 judge chats, resize it once.
        """
        prepared_images = {} if prepared_images is None else prepared_images
        prepared = []
        for message in chat:
            content = message["content"]
            if isinstance(content, str):
                prepared.append(message)
                continue
            parts = []
            for part in content:
                if part.get("type") == "image":
                    key = id(part["image"])
                    if key not in prepared_images:
                        prepared_images[key] = self.rerank_image(part["image"], resolution, fit_pixels)
                    parts.append({**part, "image": prepared_images[key]})
                elif part.get("type") == "text" and part.get("raw"):
                    cleaned = self.rerank_text(part["text"])
                    if cleaned:
                        parts.append({"type": "text", "text": cleaned})
                else:
                    parts.append(part)
            prepared.append({**message, "content": parts})
        return prepared

    def rerank_pixel_bounds(self, min_pixels: int | None, max_pixels: int | None
                            ) -> tuple[dict[str, int], tuple[int, int] | None]:
        """Configured reranker / judge pixel bounds -> (processor overrides, fit budget).

        A recipe that fits images itself (``rerank_fit_pixels``) applies the bounds before the
        processor, which keeps the checkpoint's own bounds; otherwise the processor applies them.
        """
        if self.rerank_fit_pixels is None:
            return {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}, None
        low, high = self.rerank_fit_pixels
        return {}, (min_pixels or low, max_pixels or high)

    def resolution_for(self, use: str, override: Resolution | None = None) -> Resolution:
        """The image resolution of one use of a model (``train_embedder``, ``eval``, ...)."""
        return override or self.stage_resolutions.get(use, self.stage_resolutions["default"])


def _prepared_once(image, key: tuple, prepare):
    """``prepare()`` marked with ``key``, or ``image`` itself when it carries that mark."""
    if image.info.get(PREPARED) == key:
        return image
    prepared = prepare()
    if prepared is image:
        prepared = image.copy()  # never mark the caller's own image
    prepared.info[PREPARED] = key
    return prepared


def squash(image, resolution: Resolution):
    """Resize to the resolution's square side, aspect ratio not kept (PIL's default filter:
    bicubic, nearest for palette images), in the image's own mode."""
    side = SQUASH_SIDES[resolution]
    return image if side is None else image.resize((side, side))


def rgba_on_white(image):
    """RGBA pasted on a white background by its alpha; every other mode converted to RGB."""
    from PIL import Image

    if image.mode != "RGBA":
        return image.convert("RGB")
    background = Image.new("RGB", image.size, (255, 255, 255))
    background.paste(image, mask=image.getchannel("A"))
    return background


def fit_to_budget(height: int, width: int, min_pixels: int, max_pixels: int,
                  factor: int = PATCH_FACTOR) -> tuple[int, int]:
    """Height and width, multiples of ``factor``, with an area in [min_pixels, max_pixels] and
    the aspect ratio kept as closely as those allow (Qwen2-VL's dynamic-resolution rule)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds "
                         f"{MAX_ASPECT_RATIO}: {width}x{height}")
    new_h = max(factor, round(height / factor) * factor)
    new_w = max(factor, round(width / factor) * factor)
    if new_h * new_w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        new_h, new_w = (math.floor(side / scale / factor) * factor for side in (height, width))
    elif new_h * new_w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        new_h, new_w = (math.ceil(side * scale / factor) * factor for side in (height, width))
    return min(new_h, new_w * MAX_ASPECT_RATIO), min(new_w, new_h * MAX_ASPECT_RATIO)


_AUTHORS_EMBEDDER = dict(
    image_sequence=QWEN_IMAGE_PAD, one_d_positions=True, pil_image_processor=True, max_length=4096,
    # the released reranker trainer fits raw images (no squash) into the reranker's budget
    stage_resolutions={"default": "high", "train_embedder": "mid", "train_reranker": "native"},
    rerank_fit_pixels=(4 * 28 * 28, 300 * 28 * 28),
    rerank_rgba_on_white=True, rerank_strip_text=False,
    global_image_prompt="<|image_1|> Find an image caption describing the given image.",
)

RECIPES: dict[str, InputRecipe] = {
    "qwen2-vl-native": InputRecipe(
        name="qwen2-vl-native", image_sequence=QWEN_IMAGE_SEQUENCE, one_d_positions=False,
        pil_image_processor=False, max_length=None, stage_resolutions={"default": "native"},
        rerank_fit_pixels=None, rerank_rgba_on_white=False, rerank_strip_text=True,
        global_image_prompt="<|image_1|>\nRepresent the given image.\n"),
    "unime-v2": InputRecipe(name="unime-v2", **_AUTHORS_EMBEDDER),
    # VLM2Vec (V1 code, its Qwen2-VL release): trained at 1344 ("high") too, and its
    # evaluation sets no max_len (the tokenizer's 32k limit never binds).
    "vlm2vec": InputRecipe(name="vlm2vec", **(_AUTHORS_EMBEDDER | {
        "max_length": None, "stage_resolutions": {"default": "high", "train_reranker": "native"}})),
}
InputFormat = Literal["qwen2-vl-native", "unime-v2", "vlm2vec"]


def get_recipe(name: str) -> InputRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown input_format {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]
