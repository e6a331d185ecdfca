"""The judge's chat (docs/method.md section 3), shared by every judge backend and the reranker."""

from __future__ import annotations

from typing import Any

from unime.prompts import JUDGE_PROMPT


def item_parts(text: str | None, image: Any) -> list[dict]:
    """An item's image and text parts. The text is kept as the data has it (``raw``): the
    model's input recipe cleans it (``InputRecipe.prepare_chat``) before rendering."""
    parts = [] if image is None or image == "" else [{"type": "image", "image": image}]
    return parts + ([{"type": "text", "text": text, "raw": True}] if text else [])



def build_judge_messages(query_text: str | None, query_image: Any, cand_text: str | None, cand_image: Any) -> list[dict]:
    """One user turn: prompt, "Query:", query image, query text, "Candidate:", its image, its text.

    Images are a path, a PIL image or None; absent images and empty texts are omitted; the
    query's and candidate's texts stay raw for the model's input recipe to clean.
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
