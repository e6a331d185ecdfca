"""MLLM-as-a-judge: the judge prompt and P(Yes) scoring of query-candidate pairs."""

from unime.judge.hf import HFJudge, yes_no_token_ids
from unime.judge.prompts import build_judge_messages, message_images, strip_image_placeholders

__all__ = ["HFJudge", "build_judge_messages", "message_images", "strip_image_placeholders", "yes_no_token_ids"]
