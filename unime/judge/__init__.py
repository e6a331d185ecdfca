"""MLLM-as-a-judge: the judge prompt and P(Yes) scoring of query-candidate pairs.

Two MLLM backends behind one interface, ``score(chats) -> P(Yes) per chat``: ``hf``
(transformers, batched forwards) and ``vllm`` (an engine per Ray actor with prefix caching).
The judge stage's third backend, ``label`` (the demo corpus's ground truth as a judge), is
demo scaffolding and lives outside the library, in :mod:`unime.demo.label_judge`.
"""

from unime.judge.hf import HFJudge, PromptTooLongError, p_yes, yes_no_token_ids
from unime.judge.prompts import build_judge_messages, message_images
from unime.judge.protocol import Judge
from unime.prompts import strip_image_placeholders


def make_judge(backend: str, name_or_path: str, dtype: str = "float32", device: str = "auto", **options):
    """A judge backend by name; ``options`` carry backend-specific settings."""
    inputs = {k: options.get(k) for k in ("min_pixels", "max_pixels", "image_resolution", "storage_options")}
    inputs["input_format"] = options.get("input_format") or "qwen2-vl-native"
    if backend == "hf":
        return HFJudge(name_or_path, dtype=dtype, device=device, max_model_len=options.get("max_model_len"),
                       batch_size=options.get("batch_size"), **inputs)
    if backend == "vllm":
        from unime.judge.vllm_backend import VLLMJudge

        return VLLMJudge(name_or_path, dtype=dtype, max_model_len=options.get("max_model_len", 8192),
                         engine=options.get("engine"),
                         prefix_caching=options.get("prefix_caching", True), **inputs)
    raise ValueError(f"unknown judge backend {backend!r}; expected 'hf' or 'vllm' (the demo's 'label' "
                     "backend is the judge stage's: unime.pipeline.judge.make_stage_judge)")


__all__ = ["HFJudge", "Judge", "PromptTooLongError", "build_judge_messages", "make_judge", "message_images", "p_yes",
           "strip_image_placeholders", "yes_no_token_ids"]
