"""What the judge stage needs of a judge backend, whatever scores the pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Judge(Protocol):
    """A judge of (query, candidate) pairs.

    ``needs_pixels``: whether :meth:`score` takes chats with decoded images (the MLLM judges)
    or ``(query_text, query_image, candidate_text, candidate_image)`` path tuples.
    ``prepare_image``: applied once to each decoded image before it is cached (the model's
    own resizing), or None. :meth:`warm_up` runs once after loading, so that compilation does
    not land in the first timed call; :meth:`score` returns P(Yes) per pair, batching as the
    backend sees fit (an HF judge in fixed batches, a vLLM engine all at once).
    """

    needs_pixels: bool
    prepare_image: Callable[[Any], Any] | None

    def warm_up(self) -> None: ...

    def score(self, chats: Sequence[Any]) -> np.ndarray: ...
