"""Test oracle: the UniME-V2 authors' input pipeline, re-derived from reading their released
code (GaryGuTC/UniME-v2, ``Embedding/``: ``src/dataset.py``, ``src/model_utils.py``,
``src/vlm_backbone/qwen2_vl``, ``src/vlm_backbone/qwen2_5_vl_Rerank/LamRA_qwen2_5_vision_
process.py``, ``eval_rerank.py``), written without unime's code: only transformers' tokenizer,
PIL image processor, ``smart_resize`` and model classes, which both sides use.

Embedder (``eval.py`` with ``--image_resolution high --max_len 4096``): the MMEB placeholder
becomes a bare ``<|image_pad|>``; images are squashed to 1344x1344 and handed to the
checkpoint's own processor; every item is tokenised alone (truncated at 4,096), then padded;
the authors' Qwen2-VL forward finds no ``<|vision_start|>`` and gives every real token plain
positions 0..n-1 (padding 1); the embedding is the last real token's final hidden state,
L2-normalised.

Reranker (``eval_rerank.py``): texts lose the placeholder and the newline after it; images are
squashed to 1344x1344, RGBA is pasted on white, then the image is resized into 4..300 28x28
patches with Qwen2-VL's ``smart_resize``; one user turn rendered by the chat template with its
default system turn; the checkpoint's processor, left padding.
"""

from __future__ import annotations

import re

import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

EVAL_SIDE = 1344
RERANK_MIN_PIXELS, RERANK_MAX_PIXELS = 4 * 28 * 28, 300 * 28 * 28
PAD = "<|image_pad|>"
JUDGE = ("I will provide you with a query and a candidate. Please evaluate whether the candidate meets the "
         "requirements of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'.")
LISTWISE = ("I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, "
            "etc. Each candidate is independent of the others. Evaluate each candidate against the query, and "
            "respond with the number corresponding to the candidate that best meets the requirements of the query.")


def _expand(text: str, grids: list[torch.Tensor], merge: int = 4) -> str:
    pieces = text.split(PAD)
    assert len(pieces) == len(grids) + 1, "one image per placeholder"
    out = pieces[0]
    for grid, piece in zip(grids, pieces[1:]):
        out += PAD * (int(grid.prod()) // merge) + piece
    return out


# -- embedder ---------------------------------------------------------------------------------
def embedder_inputs(tokenizer, image_processor, items: list[tuple[str, Image.Image | None]],
                    side: int = EVAL_SIDE, max_length: int = 4096) -> dict:
    """Right-padded ids, mask, pixel values and grids as the authors' collator builds them."""
    rows, pixels, grids = [], [], []
    for text, image in items:
        text = text.replace("<|image_1|>", PAD)
        if image is not None:
            processed = image_processor(images=[image.resize((side, side))], return_tensors="pt")
            pixels.append(processed["pixel_values"])
            grids.append(processed["image_grid_thw"][0])
            text = _expand(text, grids[-1:])
        rows.append(tokenizer(text, max_length=max_length, truncation=True)["input_ids"])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, :len(row)] = torch.tensor(row)
        mask[k, :len(row)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if pixels:
        out |= {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.stack(grids)}
    return out


def plain_positions(mask: torch.Tensor) -> torch.Tensor:
    """What the authors' ``get_rope_index`` returns without ``<|vision_start|>``: 0..n-1 over
    each row's real tokens, 1 at padding, on all three M-RoPE axes."""
    positions = torch.ones((3, *mask.shape), dtype=torch.long)
    for row in range(mask.shape[0]):
        real = mask[row] == 1
        positions[:, row, real] = torch.arange(int(real.sum()))
    return positions


@torch.no_grad()
def embed(model, inputs: dict) -> torch.Tensor:
    mask = inputs["attention_mask"]
    kwargs = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_grid_thw")}
    hidden = model.model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=plain_positions(mask),
                         use_cache=False, **kwargs).last_hidden_state
    last = mask.sum(dim=1) - 1
    return torch.nn.functional.normalize(hidden[torch.arange(len(last)), last].float(), dim=-1)


# -- reranker ---------------------------------------------------------------------------------
def clean(text: str) -> str:
    return re.sub(r"<\|image_(?:1|pad)\|>\n?", "", text)


def rerank_image(image: Image.Image, side: int = EVAL_SIDE) -> Image.Image:
    image = image.resize((side, side))
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    else:
        image = image.convert("RGB")
    height, width = smart_resize(image.height, image.width, factor=28, min_pixels=RERANK_MIN_PIXELS,
                                 max_pixels=RERANK_MAX_PIXELS)
    return image.resize((width, height))


def _item(text, image) -> list[dict]:
    parts = [{"type": "image", "image": rerank_image(image)}] if image is not None else []
    return parts + [{"type": "text", "text": clean(text)}]


def pairwise_chat(query, candidate) -> list[dict]:
    content = [{"type": "text", "text": JUDGE}, {"type": "text", "text": "Query:"}, *_item(*query),
               {"type": "text", "text": "Candidate:"}, *_item(*candidate)]
    return [{"role": "user", "content": content}]


def listwise_chat(query, candidates) -> list[dict]:
    content = [{"type": "text", "text": LISTWISE}, {"type": "text", "text": "Query:"}, *_item(*query),
               {"type": "text", "text": "Candidates:"}]
    for number, candidate in enumerate(candidates, start=1):
        content += [{"type": "text", "text": f"({number}) "}, *_item(*candidate)]
    return [{"role": "user", "content": content}]


def reranker_inputs(tokenizer, image_processor, chats: list[list[dict]]) -> dict:
    """Left-padded inputs of the chats, as the checkpoint's processor makes them."""
    texts, pixels, grids = [], [], []
    for chat in chats:
        images = [p["image"] for m in chat for p in m["content"] if p["type"] == "image"]
        chat_grids = []
        for image in images:
            processed = image_processor(images=[image], return_tensors="pt")
            pixels.append(processed["pixel_values"])
            chat_grids.append(processed["image_grid_thw"][0])
        grids += chat_grids
        texts.append(_expand(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                             chat_grids))
    rows = [tokenizer(text)["input_ids"] for text in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, width - len(row):] = torch.tensor(row)
        mask[k, width - len(row):] = 1
    out = {"input_ids": ids, "attention_mask": mask,
           "mm_token_type_ids": (ids == tokenizer.convert_tokens_to_ids(PAD)).long()}
    if pixels:
        out |= {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.stack(grids)}
    return out


@torch.no_grad()
def first_token_logits(model, inputs: dict) -> torch.Tensor:
    return model(**inputs, use_cache=False).logits[:, -1].float()
