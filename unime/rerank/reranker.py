"""Reranker inference: reorder an embedder's top-k with the UniME-V2 reranker.

Modes of :meth:`Reranker.rank`:

- ``pairwise``: each candidate scored alone by P(Yes) (the judge prompt); a full ordering.
- ``listwise``: one listwise prompt with all candidates; the score of candidate k is the
  probability of the answer "Ans: (k)" (read by teacher-forcing each "k)" after "Ans: ("),
  normalised over the candidates; a full ordering.
- ``listwise-greedy``: the paper's inference: greedy-decode the answer and parse the first
  "(number)"; that candidate goes first and the rest keep their order. An unparseable or
  out-of-range answer is a miss (``parsed=False``, order unchanged).

Backends: ``hf`` (transformers) and ``vllm``; both render the same prompts.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unime.config import RERANK_IMAGES_PER_PROMPT
from unime.rerank.prompts import build_listwise_messages, build_pairwise_messages

ANSWER_PREFIX = "Ans: ("
_FIRST_NUMBER = re.compile(r"\((\d+)\)")
MODES = ("pairwise", "listwise", "listwise-greedy")


@dataclass
class Ranking:
    order: list[int]  # candidate indices, best first
    scores: list[float]  # score of each candidate, in the input order
    parsed: bool = True  # listwise-greedy: did the answer name a valid candidate?
    answer: str = ""


def parse_choice(answer: str, num_candidates: int) -> int | None:
    """0-based index named by the first "(number)" in ``answer``, or None."""
    match = _FIRST_NUMBER.search(answer)
    if not match:
        return None
    number = int(match.group(1))
    return number - 1 if 1 <= number <= num_candidates else None


def greedy_order(choice: int | None, num_candidates: int) -> list[int]:
    rest = [k for k in range(num_candidates) if k != choice]
    return rest if choice is None else [choice, *rest]


def answer_tokens(tokenizer, prefix: str, continuations: list[str]) -> list[list[int]]:
    """Token ids of each continuation as it tokenises after ``prefix``; each must start a new
    token there (as the trained answers do: "Ans: (" then "k", ")"), which is checked."""
    head = tokenizer.encode(prefix, add_special_tokens=False)
    answers = []
    for text in continuations:
        ids = tokenizer.encode(text, add_special_tokens=False)
        for end in range(1, len(ids) + 1):  # every partial answer too: the vLLM path feeds them as text
            joined = tokenizer.encode(prefix + tokenizer.decode(ids[:end]), add_special_tokens=False)
            if joined != head + ids[:end]:
                raise ValueError(f"continuation {text!r} does not tokenise on its own after {prefix!r}: "
                                 f"{joined} != {head} + {ids[:end]}")
        if not ids:
            raise ValueError(f"empty continuation after {prefix!r}")
        answers.append(ids)
    return answers


def prompt_positions(model, batch: dict) -> torch.Tensor:
    """The ``[3, B, L]`` rotary positions the model gives a prompt (M-RoPE where it has images),
    computed explicitly so that tokens appended over its cache can continue from them."""
    if batch.get("image_grid_thw") is not None:
        positions, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                                  image_grid_thw=batch["image_grid_thw"],
                                                  attention_mask=batch["attention_mask"])
        return positions
    positions = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return positions[None].expand(3, -1, -1)


@torch.inference_mode()
def score_continuations(model, batch: dict, answers: list[list[int]], pad_id: int = 0, group: int = 4) -> np.ndarray:
    """Sum of log P(answer tokens | prompt) for each answer, over one prompt (batch of one).

    The prompt's last position gives every answer's first token (the LM head runs there only);
    the later tokens of ``group`` answers at a time are scored in one small batch over the
    prompt's cached keys and values (each group holds ``group`` copies of the cache: a 7B
    model's 8k-token prompt is ~0.5 GB a copy). Equal to scoring each full sequence on its own
    (tested), at one prompt's cost instead of k, and never a ``[k, L, vocab]`` logits tensor.
    """
    positions = prompt_positions(model, batch)
    out = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    totals = [float(first[ids[0]]) for ids in answers]
    longer = [k for k, ids in enumerate(answers) if len(ids) > 1]
    for start in range(0, len(longer), group):
        chosen = longer[start: start + group]
        cache = copy.deepcopy(out.past_key_values)  # the expansion below must not touch the prompt's
        for k, value in zip(chosen, _later_tokens(model, [answers[k] for k in chosen], cache, positions, pad_id)):
            totals[k] += value
    return np.array(totals)


def _later_tokens(model, answers: list[list[int]], cache, positions: torch.Tensor, pad_id: int) -> list[float]:
    """Sum of log P(t_j | prompt, t_<j) over j >= 2 for each answer, one batched forward."""
    width, count = max(len(ids) for ids in answers) - 1, len(answers)
    device = positions.device
    inputs = torch.tensor([ids[:-1] + [pad_id] * (width + 1 - len(ids)) for ids in answers], device=device)
    cache.batch_repeat_interleave(count)
    steps = positions[:, :, -1:] + 1 + torch.arange(width, device=device)  # text continues the prompt
    mask = torch.ones(count, positions.shape[-1] + width, dtype=torch.long, device=device)
    logits = model(input_ids=inputs, attention_mask=mask, position_ids=steps.expand(3, count, width),
                   past_key_values=cache, use_cache=False).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [sum(float(logprobs[row, j, ids[j + 1]]) for j in range(len(ids) - 1)) for row, ids in enumerate(answers)]


class HFRerankerBackend:
    def __init__(self, name_or_path: str, dtype: str, device: str, min_pixels, max_pixels,
                 max_model_len: int | None = None, **recipe):
        from unime.judge import HFJudge

        self.judge = HFJudge(name_or_path, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels,
                             max_model_len=max_model_len, **recipe)
        self.processor, self.model = self.judge.processor, self.judge.model

    def p_yes(self, chats: list[list[dict]]) -> np.ndarray:
        return self.judge.score(chats)

    def continuation_logprobs(self, chat: list[dict], prefix: str, continuations: list[str]) -> np.ndarray:
        """log P(continuation | chat + prefix) for each continuation, the prompt computed once
        (:func:`score_continuations`)."""
        answers = answer_tokens(self.processor.tokenizer, prefix, continuations)
        return score_continuations(self.model, self.judge.encode([chat], [prefix]), answers,
                                   self.processor.tokenizer.pad_token_id or 0)

    @torch.inference_mode()
    def greedy(self, chat: list[dict], max_new_tokens: int = 8) -> str:
        batch = self.judge.encode([chat])
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        return self.processor.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


class VLLMRerankerBackend:
    def __init__(self, name_or_path: str, dtype: str, min_pixels, max_pixels, max_model_len: int = 8192,
                 kv_cache_gib: float | None = None, engine: dict | None = None, **recipe):
        from unime.judge.vllm_backend import VLLMJudge

        self.judge = VLLMJudge(name_or_path, dtype=dtype, max_model_len=max_model_len, min_pixels=min_pixels,
                               max_pixels=max_pixels, kv_cache_gib=kv_cache_gib, engine=engine,
                               max_images_per_prompt=RERANK_IMAGES_PER_PROMPT, **recipe)
        self.processor = self.judge.processor

    def p_yes(self, chats: list[list[dict]]) -> np.ndarray:
        return self.judge.score(chats)

    def continuation_logprobs(self, chat: list[dict], prefix: str, continuations: list[str]) -> np.ndarray:
        """log P(continuation | chat + prefix): one token generated per answer prefix, reading
        the next answer token's log-probability; every request shares the cached prompt
        (prefix caching), so the prompt is computed once rather than once per candidate."""
        from vllm import SamplingParams

        tokenizer = self.processor.tokenizer
        answers = answer_tokens(tokenizer, prefix, continuations)
        suffixes, params, owners = [], [], []
        for k, ids in enumerate(answers):
            for j, token in enumerate(ids):
                suffixes.append(prefix + tokenizer.decode(ids[:j]))
                params.append(SamplingParams(max_tokens=1, temperature=0.0, logprobs=1, logprob_token_ids=[token]))
                owners.append((k, token))
        outputs = self.judge.generate(self.judge.engine_prompts([chat] * len(suffixes), suffixes), params)
        totals = np.zeros(len(answers))
        for output, (k, token) in zip(outputs, owners):
            totals[k] += output.outputs[0].logprobs[0][token].logprob
        return totals

    def greedy(self, chat: list[dict], max_new_tokens: int = 8) -> str:
        from vllm import SamplingParams

        output = self.judge.generate(self.judge.engine_prompts([chat]),
                                     SamplingParams(max_tokens=max_new_tokens, temperature=0.0))
        return output[0].outputs[0].text


class Reranker:
    """Loads a reranker checkpoint once; ranks candidates for a query in any of :data:`MODES`.

    ``input_format`` / ``image_resolution``: the input recipe and its image size
    (:mod:`unime.models.recipes`); ``unime-v2`` feeds the released UniME-V2 reranker what its
    authors' evaluation fed it. ``max_model_len``: the token budget of one prompt on either
    backend (a longer one raises :class:`unime.judge.PromptTooLongError`). ``storage_options``
    reach a checkpoint on an object store (copied to this node first). ``vllm_options`` (e.g.
    ``engine``) size a vLLM engine; the HF backend has none and ignores them.
    """

    def __init__(self, name_or_path: str, backend: str = "hf", dtype: str = "float32", device: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None, input_format: str = "qwen2-vl-native",
                 image_resolution: str | None = None, max_model_len: int | None = None,
                 storage_options: dict | None = None, **vllm_options):
        recipe = {"input_format": input_format, "image_resolution": image_resolution,
                  "storage_options": storage_options}
        if backend == "hf":
            self.backend = HFRerankerBackend(name_or_path, dtype, device, min_pixels, max_pixels, max_model_len,
                                             **recipe)
        elif backend == "vllm":
            self.backend = VLLMRerankerBackend(name_or_path, dtype, min_pixels, max_pixels, max_model_len or 8192,
                                               **recipe, **vllm_options)
        else:
            raise ValueError(f"unknown reranker backend {backend!r}; expected 'hf' or 'vllm'")

    def prepare_image(self, image):
        """An image resized as this reranker's recipe feeds it (for image caches)."""
        return self.backend.judge.prepare_image(image)

    def rank_or_refusal(self, query: tuple[str, Any], candidates: list[tuple[str, Any]],
                        mode: str = "listwise") -> tuple[Ranking | None, str]:
        """:meth:`rank`, or None and the reason when the prompt exceeds the token budget (the
        caller's data, not a fault: evaluation counts a miss, Serve answers 413)."""
        from unime.judge import PromptTooLongError

        try:
            return self.rank(query, candidates, mode), ""
        except PromptTooLongError as exc:
            return None, str(exc)

    def rank(self, query: tuple[str, Any], candidates: list[tuple[str, Any]], mode: str = "listwise") -> Ranking:
        """Order ``candidates`` (``(text, image)`` pairs, images PIL or None) for ``query``."""
        if not candidates:
            return Ranking(order=[], scores=[])
        if mode == "pairwise":
            scores = self.backend.p_yes([build_pairwise_messages(*query, *c) for c in candidates])
            return Ranking(order=list(np.argsort(-scores, kind="stable")), scores=scores.tolist())
        chat = build_listwise_messages(*query, candidates)
        if mode == "listwise":
            logprobs = self.backend.continuation_logprobs(chat, ANSWER_PREFIX,
                                                          [f"{k})" for k in range(1, len(candidates) + 1)])
            probs = np.exp(logprobs - logprobs.max())
            probs /= probs.sum()
            return Ranking(order=list(np.argsort(-probs, kind="stable")), scores=probs.tolist())
        if mode == "listwise-greedy":
            answer = self.backend.greedy(chat)
            choice = parse_choice(answer, len(candidates))
            scores = [1.0 if k == choice else 0.0 for k in range(len(candidates))]
            return Ranking(order=greedy_order(choice, len(candidates)), scores=scores, parsed=choice is not None,
                           answer=answer)
        raise ValueError(f"unknown rerank mode {mode!r}; expected one of {MODES}")
