"""The judge's chat (METHOD.md section 3), shared by every judge backend and the reranker."""

from __future__ import annotations

from typing import Any

from unime.prompts import JUDGE_PROMPT, strip_image_placeholders


def item_parts(text: str | None, image: Any) -> list[dict]:
    parts = [] if image is None or image == "" else [{"type": "image", "image": image}]
    text = strip_image_placeholders(text)
    return parts + ([{"type": "text", "text": text}] if text else [])


def build_judge_messages(query_text: str | None, query_image: Any, cand_text: str | None, cand_image: Any) -> list[dict]:
    """One user turn: prompt, "Query:", query image, query text, "Candidate:", its image, its text.

    Images are a path, a PIL image or None; absent images and empty texts are omitted and
    image placeholders are stripped from the texts.
    """
    content = [{"type": "text", "text": JUDGE_PROMPT}, {"type": "text", "text": "Query:"}]
    content += item_parts(query_text, query_image)
    content.append({"type": "text", "text": "Candidate:"})
    content += item_parts(cand_text, cand_image)
    return [{"role": "user", "content": content}]


def message_images(messages: list[dict]) -> list[Any]:
    """The images of a chat in the order the chat template places their tokens."""
    return [part["image"] for message in messages for part in message["content"]
            if isinstance(part, dict) and part.get("type") == "image"]
