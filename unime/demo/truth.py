"""Ground truth of the demo corpus: does a candidate truly answer a query?

The demo corpus (:mod:`unime.demo.corpus`) records what every image shows
(``attributes.parquet``), and its texts come from a few templates, so whether a
(query, candidate) pair matches is decidable: a caption matches every scene that fits it
("red circles" fits any two to four red circles, anywhere), a label matches the scene's
shape or colour, an answer matches the scene's answer to the question, an image matches a
caption it fits, a crop matches the object a grounding query names. Matching is within a
task: a shape label is no caption, so it never answers an image-to-text query.

This is what the method experiment measures against: the false-negative filter's
precision and recall, a judge's AUC, and the upper-bound "label judge".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from unime.demo.corpus import COLOURS, COUNT_WORDS, INSTRUCTIONS, POSITIONS, QUESTIONS, SHAPES, Scene

_PREFIX = {kind: INSTRUCTIONS[kind].split("{")[0] for kind in ("t2i", "vqa", "grounding")}
_WORD_COUNT = {word: count for count, word in COUNT_WORDS.items()}
_CAPTION = re.compile(
    rf"^(?:(a) |({'|'.join(_WORD_COUNT)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})(s?)"
    rf"(?: ({'|'.join(POSITIONS.values())}))?$")
_POSITION_OF = {phrase: key for key, phrase in POSITIONS.items()}


@dataclass(frozen=True)
class Caption:
    """What a caption claims: colour and shape always, counts it allows, a position or any."""

    colour: str
    shape: str
    counts: frozenset[int]
    position: str | None

    def fits(self, scene: Scene) -> bool:
        return (scene.colour == self.colour and scene.shape == self.shape and scene.count in self.counts
                and self.position in (None, scene.position))


def parse_caption(text: str) -> Caption | None:
    """A demo caption at any detail level, or None when ``text`` is not one."""
    found = _CAPTION.match(text.strip())
    if not found:
        return None
    article, count_word, colour, shape, plural, position = found.groups()
    if count_word:
        counts = frozenset({_WORD_COUNT[count_word]})
    elif article or not plural:
        counts = frozenset({1})
    else:  # "red circles": the level-0 caption of any plural scene
        counts = frozenset(c for c in COUNT_WORDS if c > 1)
    if (count_word and (1 in counts) == bool(plural)) or (article and plural):
        return None  # "one red circles", "two red circle", "a red circles" are no captions
    return Caption(colour, shape, counts, _POSITION_OF.get(position) if position else None)


class DemoTruth:
    """Ground truth over one demo corpus, from its ``attributes.parquet`` rows."""

    def __init__(self, attributes: list[dict]):
        self.attributes = {row["image"]: json.loads(row["attributes"]) for row in attributes}

    @classmethod
    def load(cls, corpus_dir: str, storage_options: dict | None = None) -> DemoTruth:
        import io

        import pyarrow.parquet as pq

        from unime.data.storage import join, read_bytes

        table = pq.read_table(io.BytesIO(read_bytes(join(corpus_dir, "attributes.parquet"), storage_options)))
        return cls(table.to_pylist())

    def scene(self, image: str) -> Scene | None:
        attributes = self.attributes.get(image)
        return Scene(**attributes) if attributes and "count" in attributes else None

    def matches(self, query_text: str, query_image: str, candidate_text: str, candidate_image: str) -> bool:
        """Whether the candidate truly answers the query (see the module docstring)."""
        scene = self.scene(query_image) if query_image else None
        if query_text == INSTRUCTIONS["i2t"]:
            caption = parse_caption(candidate_text) if not candidate_image else None
            return bool(scene and caption and caption.fits(scene))
        if query_text.startswith(_PREFIX["t2i"]) and not query_image:
            caption = parse_caption(query_text[len(_PREFIX["t2i"]):].strip())
            target = self.scene(candidate_image) if candidate_text == INSTRUCTIONS["image_target"] else None
            return bool(caption and target and caption.fits(target))
        if query_text in (INSTRUCTIONS["shape_cls"], INSTRUCTIONS["colour_cls"]):
            attribute = "shape" if query_text == INSTRUCTIONS["shape_cls"] else "colour"
            return bool(scene and not candidate_image and candidate_text == getattr(scene, attribute))
        if query_text.startswith(_PREFIX["vqa"]):
            return bool(scene and not candidate_image and candidate_text == self._answer(query_text, scene))
        if query_text.startswith(_PREFIX["grounding"]):
            crop = self.attributes.get(candidate_image, {})
            label = query_text[len(_PREFIX["grounding"]):].split('"')[0]
            return (candidate_text == INSTRUCTIONS["crop_target"] and bool(crop.get("crop"))
                    and label == f"{crop['colour']} {crop['shape']}")
        return False

    @staticmethod
    def _answer(query_text: str, scene: Scene) -> str | None:
        for question, answer_of, _ in QUESTIONS.values():
            if query_text == INSTRUCTIONS["vqa"].format(question=question):
                return answer_of(scene)
        return None


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting half (Mann-Whitney U over average ranks)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both classes: {positives} positives, {negatives} negatives")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    for end in range(1, len(scores) + 1):  # average ranks over ties
        if end == len(scores) or sorted_scores[end] != sorted_scores[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def filter_quality(filtered: np.ndarray, truly_positive: np.ndarray) -> dict[str, float | int]:
    """Precision and recall of a false-negative filter over pool candidates: ``filtered``
    marks the candidates it removed, ``truly_positive`` those that answer their query."""
    filtered, truly_positive = np.asarray(filtered, dtype=bool), np.asarray(truly_positive, dtype=bool)
    hits = int((filtered & truly_positive).sum())
    return {"candidates": len(filtered), "filtered": int(filtered.sum()), "false_negatives": int(truly_positive.sum()),
            "caught": hits, "base_rate": float(truly_positive.mean()) if len(filtered) else float("nan"),
            "precision": hits / filtered.sum() if filtered.any() else float("nan"),
            "recall": hits / truly_positive.sum() if truly_positive.any() else float("nan")}


def pool_truth(pools, items, truth: DemoTruth) -> list[list[bool]]:
    """For each row of a retrieve stage's ``pools`` table, whether each pool candidate truly
    answers the row's query (a false negative if mined); ``items``: ``(id, text, image)``."""
    item = dict(zip(items["id"].to_pylist(), zip(items["text"].to_pylist(), items["image"].to_pylist())))
    return [[truth.matches(*item[query], *item[candidate]) for candidate in pool]
            for query, pool in zip(pools["query_id"].to_pylist(), pools["pool_ids"].to_pylist())]
