"""The transformers judge backend: batched forwards, P(Yes) at the first generated position."""

from __future__ import annotations

import numpy as np
import torch

from unime.judge.prompts import message_images
from unime.prompts import NO, YES


class PromptTooLongError(ValueError):
    """A prompt longer than the model's token budget (``max_model_len``): refused, not truncated
    (a truncated judge or reranker prompt loses its candidates or its question)."""


def over_budget(attention_mask: torch.Tensor, max_model_len: int | None, generated: int = 1) -> list[tuple[int, int]]:
    """(row, length) of each sequence that, with ``generated`` tokens to come (vLLM's rule: at
    least one), exceeds the budget."""
    if max_model_len is None:
        return []
    return [(k, n) for k, n in enumerate(attention_mask.sum(dim=1).tolist()) if n + generated > max_model_len]


def check_prompt_lengths(attention_mask: torch.Tensor, max_model_len: int | None, generated: int = 1) -> None:
    """Raise :class:`PromptTooLongError` naming each prompt of the batch over the budget."""
    over = over_budget(attention_mask, max_model_len, generated)
    if over:
        listed = ", ".join(f"prompt {k}: {n} tokens" for k, n in over[:5])
        raise PromptTooLongError(f"{listed} (+{generated} to generate) exceed max_model_len={max_model_len} "
                                 "(text and image tokens)")


def yes_no_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of "Yes" and "No" as the tokenizer encodes them; each must be one token."""
    ids = []
    for word in (YES, NO):
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"{word!r} is not a single token for this tokenizer: {encoded}")
        ids.append(encoded[0])
    return ids[0], ids[1]


def p_yes(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """softmax([logit(Yes), logit(No)])[0] for next-token logits ``[B, V]``; no temperature."""
    return torch.softmax(logits[:, [yes_id, no_id]].float(), dim=-1)[:, 0]


class ChatInputs:
    """A judge / reranker checkpoint's processor and input recipe: chats in, rendered prompt
    texts and prepared images out (shared by the HF and vLLM backends).

    ``input_format`` names the recipe (:mod:`unime.models.recipes`); ``image_resolution`` its
    image size (None: the recipe's default for ``use``); ``min/max_pixels`` the image budget,
    applied by the recipe before the processor or by the processor, as the recipe says;
    ``max_model_len`` the token budget of one prompt (None: unbounded). ``checkpoint``: the
    local path of the checkpoint (one on an object store is copied to this node first).
    """

    def __init__(self, name_or_path: str, min_pixels: int | None = None, max_pixels: int | None = None,
                 input_format: str = "qwen2-vl-native", image_resolution: str | None = None, use: str = "eval",
                 max_model_len: int | None = None, storage_options: dict | None = None):
        from unime.models.checkpoints import local_checkpoint
        from unime.models.processor import load_processor, log_pixel_bounds
        from unime.models.recipes import get_recipe

        self.checkpoint = name_or_path = local_checkpoint(name_or_path, storage_options)
        self.recipe = get_recipe(input_format)
        self.image_resolution = self.recipe.resolution_for(use, image_resolution)
        # bounds the processor applies (the vLLM engine's processor gets the same) and the budget
        # the recipe fits images into before it
        self.processor_bounds, self.fit_pixels = self.recipe.rerank_pixel_bounds(min_pixels, max_pixels)
        self.processor = load_processor(name_or_path, pil_images=self.recipe.pil_image_processor,
                                        **self.processor_bounds)
        log_pixel_bounds(name_or_path, self.processor, self.recipe.name, self.image_resolution)
        self.max_model_len = max_model_len

    def prepare_image(self, image):
        """One image resized as the recipe feeds it (idempotent: :meth:`prepare` applies it
        again), for caches that keep prepared rather than full-size images."""
        return self.recipe.rerank_image(image, self.image_resolution, self.fit_pixels)

    def prepare(self, chats: list[list[dict]]) -> list[list[dict]]:
        """Chats with raw texts cleaned and PIL images resized as the recipe says (an image
        shared by several chats, e.g. a query's, is prepared once)."""
        shared: dict = {}
        return [self.recipe.prepare_chat(chat, self.image_resolution, self.fit_pixels, shared) for chat in chats]

    def prompt_texts(self, chats: list[list[dict]]) -> list[str]:
        """Prompt texts of chats already :meth:`prepare`-d."""
        return [self.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]


class HFJudge(ChatInputs):
    """A frozen MLLM judge on the transformers path; loads once, scores chats in batches of
    ``batch_size`` (None: all of a call's chats in one forward)."""

    needs_pixels = True

    def __init__(self, name_or_path: str, dtype: str = "float32", device: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None,
                 input_format: str = "qwen2-vl-native", image_resolution: str | None = None,
                 max_model_len: int | None = None, storage_options: dict | None = None,
                 batch_size: int | None = None):
        from unime.models.loading import load_model

        self.batch_size = batch_size

        super().__init__(name_or_path, min_pixels, max_pixels, input_format, image_resolution,
                         max_model_len=max_model_len, storage_options=storage_options)
        self.model = load_model(self.checkpoint, dtype=dtype, device=device)
        self.yes_id, self.no_id = yes_no_token_ids(self.processor.tokenizer)

    def encode(self, chats: list[list[dict]], suffixes: list[str] | None = None) -> dict:
        """Model inputs of raw chats (left padded), each prompt followed by its ``suffix``."""
        chats = self.prepare(chats)
        texts = [text + (suffixes[k] if suffixes else "") for k, text in enumerate(self.prompt_texts(chats))]
        images = [image for chat in chats for image in message_images(chat)]
        batch = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        check_prompt_lengths(batch["attention_mask"], self.max_model_len)
        return batch.to(self.model.device)

    @torch.inference_mode()
    def first_token_logits(self, chats: list[list[dict]]) -> torch.Tensor:
        """Next-token logits ``[B, V]`` after each chat's generation prompt."""
        return self.model(**self.encode(chats), logits_to_keep=1, use_cache=False).logits[:, -1]

    def warm_up(self) -> None:
        """Nothing to compile on the transformers path."""

    @torch.inference_mode()
    def score(self, chats: list[list[dict]], batch_size: int | None = None) -> np.ndarray:
        """P(Yes) for each chat, ``batch_size`` chats per forward (default: the judge's own
        ``batch_size``, else all at once).

        Images in the chats must already be PIL images.
        """
        step = batch_size or self.batch_size or max(1, len(chats))
        scores = [self._score_batch(chats[i: i + step]) for i in range(0, len(chats), step)]
        return np.concatenate(scores) if scores else np.zeros(0)

    def _score_batch(self, chats: list[list[dict]]) -> np.ndarray:
        return p_yes(self.first_token_logits(chats), self.yes_id, self.no_id).double().cpu().numpy()
