"""The label judge: scores a pair from the demo corpus's ground truth, not from pixels.

An upper bound for the method experiment: a judge that is never wrong about the
demo corpus. It plugs into the judge stage like the MLLM judges (``judge.backend: label``,
``judge.model``: the corpus folder with ``attributes.parquet``) and scores
``(query_text, query_image, candidate_text, candidate_image)`` tuples (image paths as the
pairs name them) with ``yes`` for a true match and ``no`` otherwise: soft labels for
training, and a false-negative filter that removes exactly the true matches.

Demo scaffolding, not part of the judge library (:mod:`unime.judge`): it knows the demo
corpus's ground truth, so the judge stage picks it by name
(:func:`unime.pipeline.judge.make_stage_judge`) and the library stays free of the demo.
"""

from __future__ import annotations

import numpy as np

from unime.demo.truth import DemoTruth


class LabelJudge:
    needs_pixels = False  # scores image paths, not decoded images
    prepare_image = None

    def warm_up(self) -> None:
        """Nothing to load beyond the ground truth."""

    def __init__(self, corpus_dir: str, yes: float = 0.95, no: float = 0.05, storage_options: dict | None = None):
        self.truth = DemoTruth.load(corpus_dir, storage_options)
        self.yes, self.no = yes, no

    def score(self, pairs: list[tuple[str, str, str, str]]) -> np.ndarray:
        return np.array([self.yes if self.truth.matches(*pair) else self.no for pair in pairs], dtype=np.float64)
