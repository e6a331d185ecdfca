"""Chats with target answers -> model inputs whose labels cover the answer tokens only."""

from __future__ import annotations

import torch

from unime.judge.prompts import message_images
from unime.losses import IGNORE_INDEX


def encode_with_answers(processor, chats: list[list[dict]], answers: list[str]) -> dict[str, torch.Tensor]:
    """Tokenise ``chat + answer + end-of-turn`` (left padded); labels mask every prompt token.

    The chat template ends with the assistant header ("...assistant\\n"), after which the
    answer starts a new pre-token, so the answer's tokens are exactly the tokenizer's
    encoding of ``answer + eos``; this is checked, not assumed.
    """
    tokenizer = processor.tokenizer
    prompts = [processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    answer_ids = [tokenizer.encode(answer + tokenizer.eos_token, add_special_tokens=False) for answer in answers]
    images = [image for chat in chats for image in message_images(chat)]
    batch = processor(text=[p + a + tokenizer.eos_token for p, a in zip(prompts, answers)], images=images or None,
                      padding=True, return_tensors="pt")
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for row, ids in enumerate(answer_ids):
        tail = batch["input_ids"][row, -len(ids):].tolist()
        if tail != ids:
            raise ValueError(f"answer {answers[row]!r} does not tokenise on its own after the prompt: {tail} != {ids}")
        labels[row, -len(ids):] = batch["input_ids"][row, -len(ids):]
    batch["labels"] = labels
    return dict(batch)
