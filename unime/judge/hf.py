"""The transformers judge backend: batched forwards, P(Yes) at the first generated position."""

from __future__ import annotations

import numpy as np
import torch

from unime.judge.prompts import message_images
from unime.prompts import NO, YES


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


class HFJudge:
    """A frozen MLLM judge on the transformers path; loads once, scores chats in batches."""

    def __init__(self, name_or_path: str, dtype: str = "float32", device: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None):
        from unime.models.loading import load_model
        from unime.models.processor import load_processor

        self.model = load_model(name_or_path, dtype=dtype, device=device)
        self.processor = load_processor(name_or_path, min_pixels=min_pixels, max_pixels=max_pixels)
        self.yes_id, self.no_id = yes_no_token_ids(self.processor.tokenizer)

    def prompt_texts(self, chats: list[list[dict]]) -> list[str]:
        return [self.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]

    @torch.inference_mode()
    def score(self, chats: list[list[dict]], batch_size: int | None = None) -> np.ndarray:
        """P(Yes) for each chat, ``batch_size`` chats per forward (all at once by default).

        Images in the chats must already be PIL images.
        """
        step = batch_size or max(1, len(chats))
        scores = [self._score_batch(chats[i: i + step]) for i in range(0, len(chats), step)]
        return np.concatenate(scores) if scores else np.zeros(0)

    def _score_batch(self, chats: list[list[dict]]) -> np.ndarray:
        images = [image for chat in chats for image in message_images(chat)]
        batch = self.processor(text=self.prompt_texts(chats), images=images or None, padding=True,
                               return_tensors="pt").to(self.model.device)
        logits = self.model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1]
        return p_yes(logits, self.yes_id, self.no_id).double().cpu().numpy()
