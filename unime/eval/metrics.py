"""Ranking metrics. Ties are broken against the correct candidate, so an embedder that gives
every candidate the same score ranks the positive last (P@1 = 0, never 100)."""

from __future__ import annotations

import numpy as np


def positive_rank(scores: np.ndarray, positive: int = 0) -> int:
    """1-based rank of ``scores[positive]`` among ``scores``, ties counted against it."""
    scores = np.asarray(scores, dtype=np.float64)
    others = np.delete(scores, positive)
    return 1 + int(np.sum(others >= scores[positive]))


def ranks_with_positive_first(score_rows: list[np.ndarray]) -> np.ndarray:
    """MMEB rows: each row's candidates with the positive at index 0."""
    return np.array([positive_rank(row, 0) for row in score_rows], dtype=np.int64)


def precision_at_1(ranks: np.ndarray) -> float:
    return float(np.mean(np.asarray(ranks) == 1)) if len(ranks) else float("nan")


def hit_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(ranks) <= k)) if len(ranks) else float("nan")


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / np.asarray(ranks))) if len(ranks) else float("nan")


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """One relevant item per query: 1 / log2(rank + 1) when it is within the top k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0))) if len(ranks) else float("nan")


def best_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> int:
    """Rank of the best-scored relevant item; irrelevant items tying with it rank above it."""
    scores, relevant = np.asarray(scores, dtype=np.float64), np.asarray(relevant, dtype=bool)
    best = scores[relevant].max()
    return 1 + int(np.sum(scores[~relevant] >= best))


def image_text_recall(similarity: np.ndarray, caption_image: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Flickr30K / MS-COCO style recall@k in both directions.

    Args:
        similarity: ``[n_captions, n_images]`` caption-image similarities over the whole pool.
        caption_image: ``[n_captions]`` index of the image each caption describes (images have
            several captions).

    Returns:
        ``t2i_R@k`` (a caption finds its image) and ``i2t_R@k`` (an image finds any of its
        captions) for each k, plus each direction's MRR and NDCG@10, as fractions.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    caption_image = np.asarray(caption_image)
    n_captions, n_images = similarity.shape
    t2i = np.array([best_relevant_rank(similarity[c], np.arange(n_images) == caption_image[c])
                    for c in range(n_captions)])
    i2t = np.array([best_relevant_rank(similarity[:, i], caption_image == i) for i in range(n_images)])
    out = {}
    for k in ks:
        out[f"t2i_R@{k}"] = hit_at_k(t2i, k)
        out[f"i2t_R@{k}"] = hit_at_k(i2t, k)
    for direction, ranks in (("t2i", t2i), ("i2t", i2t)):
        out[f"{direction}_MRR"] = mrr(ranks)
        out[f"{direction}_NDCG@10"] = ndcg_at_k(ranks, 10)
    return out
