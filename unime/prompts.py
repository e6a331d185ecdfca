"""The method's prompt texts (docs/method.md sections 1, 3 and 6), in one place."""

import re

JUDGE_PROMPT = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate meets "
    "the requirements of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'."
)

LISTWISE_PROMPT = (
    "I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, "
    "etc. Each candidate is independent of the others. Evaluate each candidate against the query, and "
    "respond with the number corresponding to the candidate that best meets the requirements of the query."
)

YES, NO = "Yes", "No"

# MMEB writes image placeholders as "<|image_1|>"; each backbone swaps in its own image token.
MMEB_IMAGE_PLACEHOLDER = "<|image_1|>"

# MMEB's placeholders and the image tokens of the backbones we load.
_IMAGE_PLACEHOLDERS = re.compile(r"<\|image_\d+\|>|<\|vision_start\|>|<\|image_pad\|>|<\|vision_end\|>|<image>")


def strip_image_placeholders(text: str | None) -> str:
    """Text without image placeholders or image tokens, stripped of surrounding whitespace."""
    return _IMAGE_PLACEHOLDERS.sub("", text or "").strip()
