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

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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


class HFRerankerBackend:
    def __init__(self, name_or_path: str, dtype: str, device: str, min_pixels, max_pixels, **recipe):
        from unime.judge import HFJudge

        self.judge = HFJudge(name_or_path, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels,
                             **recipe)
        self.processor, self.model = self.judge.processor, self.judge.model

    def p_yes(self, chats: list[list[dict]]) -> np.ndarray:
        return self.judge.score(chats)

    @torch.inference_mode()
    def continuation_logprobs(self, chat: list[dict], prefix: str, continuations: list[str]) -> np.ndarray:
        """log P(continuation | chat + prefix) for each continuation, in one batch."""
        tokenizer = self.processor.tokenizer
        lengths = [len(tokenizer.encode(c, add_special_tokens=False)) for c in continuations]
        batch = self.judge.encode([chat] * len(continuations), [prefix + c for c in continuations])
        logprobs = torch.log_softmax(self.model(**batch, use_cache=False).logits[:, :-1].float(), dim=-1)
        targets = batch["input_ids"][:, 1:]
        token_logprobs = logprobs.gather(-1, targets[..., None])[..., 0]
        return np.array([float(token_logprobs[row, -n:].sum()) for row, n in enumerate(lengths)])

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
                               max_pixels=max_pixels, kv_cache_gib=kv_cache_gib, max_images_per_prompt=16,
                               engine=engine, **recipe)
        self.processor = self.judge.processor

    def p_yes(self, chats: list[list[dict]]) -> np.ndarray:
        return self.judge.score(chats)

    def continuation_logprobs(self, chat: list[dict], prefix: str, continuations: list[str]) -> np.ndarray:
        from vllm import SamplingParams

        tokenizer = self.processor.tokenizer
        lengths = [len(tokenizer.encode(c, add_special_tokens=False)) for c in continuations]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        prompts = self.judge.engine_prompts([chat] * len(continuations), [prefix + c for c in continuations])
        outputs = self.judge.llm.generate(prompts, params, use_tqdm=False)
        sums = []
        for output, n in zip(outputs, lengths):
            ids, logprobs = output.prompt_token_ids, output.prompt_logprobs
            sums.append(sum(logprobs[pos][ids[pos]].logprob for pos in range(len(ids) - n, len(ids))))
        return np.array(sums)

    def greedy(self, chat: list[dict], max_new_tokens: int = 8) -> str:
        from vllm import SamplingParams

        output = self.judge.llm.generate(self.judge.engine_prompts([chat]),
                                         SamplingParams(max_tokens=max_new_tokens, temperature=0.0), use_tqdm=False)
        return output[0].outputs[0].text


class Reranker:
    """Loads a reranker checkpoint once; ranks candidates for a query in any of :data:`MODES`.

    ``input_format`` / ``image_resolution``: the input recipe and its image size
    (:mod:`unime.models.recipes`); ``unime-v2`` feeds the released UniME-V2 reranker what its
    authors' evaluation fed it.
    """

    def __init__(self, name_or_path: str, backend: str = "hf", dtype: str = "float32", device: str = "auto",
                 min_pixels: int | None = None, max_pixels: int | None = None, input_format: str = "qwen2-vl-native",
                 image_resolution: str | None = None, **vllm_options):
        recipe = {"input_format": input_format, "image_resolution": image_resolution}
        if backend == "hf":
            self.backend = HFRerankerBackend(name_or_path, dtype, device, min_pixels, max_pixels, **recipe)
        elif backend == "vllm":
            self.backend = VLLMRerankerBackend(name_or_path, dtype, min_pixels, max_pixels, **recipe, **vllm_options)
        else:
            raise ValueError(f"unknown reranker backend {backend!r}; expected 'hf' or 'vllm'")

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
