"""Pure pieces of the MMEB harness: unique items of eval rows, per-row scoring, rerank inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from unime.data.ids import item_id
from unime.data.ordering import by_input_length
from unime.eval import metrics


def eval_items(tables: dict[str, pa.Table], extra: list[tuple[str, str]] = ()) -> tuple[pa.Table, int]:
    """Every query and target of every subset (and ``extra`` items) as one item table, each
    content id once.

    Returns the table (shortest first, as the embed stage wants) and the number of item
    references before de-duplication, so the saving can be reported.
    """
    pairs = [pair for table in tables.values() for row in table.to_pylist()
             for pair in [(row["qry_text"], row["qry_img_path"]), *zip(row["tgt_text"], row["tgt_img_path"])]]
    pairs += list(extra)
    seen: dict[str, tuple[str, str]] = {}
    for text, image in pairs:
        seen.setdefault(item_id(text, image), (text, image))
    references = len(pairs)
    # the embed stage's order (unime.data.ordering), computed on typed columns; the table
    # returned is built from the plain lists as before, so its schema does not change
    keyed = pa.table({"id": pa.array(list(seen), pa.string()),
                      "text": pa.array([text for text, _ in seen.values()], pa.string()),
                      "image": pa.array([image for _, image in seen.values()], pa.string())})
    ids = by_input_length(keyed)["id"].to_pylist()
    items = pa.table({"id": ids, "text": [seen[i][0] for i in ids], "image": [seen[i][1] for i in ids],
                      "is_candidate": [True] * len(ids)})
    return items, references


def row_scores(row: dict, vectors: dict[str, np.ndarray]) -> np.ndarray:
    """Cosine similarity of a row's query with each of its own candidates (positive at 0)."""
    query = vectors[item_id(row["qry_text"], row["qry_img_path"])]
    targets = np.stack([vectors[item_id(t, i)] for t, i in zip(row["tgt_text"], row["tgt_img_path"])])
    return targets @ query


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best candidates, ties ordered against the positive (index 0)."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j == 0, j))
    return order[:k]


def reranked_hit(order: list[int], parsed: bool, candidates: list[tuple[str, str]],
                 positive: tuple[str, str], positive_slot: int | None) -> bool:
    """Did the reranker put the positive first? (The authors' rerank evaluation.)

    An answer that names no valid candidate (``parsed`` False: listwise-greedy output with no
    "(n)" or n out of range) is a miss, whatever the embedder's order was. The top candidate
    counts when it is the positive's slot, or has the positive's content (text and image
    path): MMEB lists sometimes repeat the positive under another index.
    """
    if not parsed or not order:
        return False
    top = order[0]
    return top == positive_slot or tuple(candidates[top]) == tuple(positive)


def headline_mode(modes: list[str]) -> str:
    """The reranked score the summary leads with: the paper's inference (listwise-greedy) when
    it was run, else the first configured mode; never the best mode on the test data."""
    return "listwise-greedy" if "listwise-greedy" in modes else modes[0]


def subset_metrics(score_rows: list[np.ndarray]) -> dict[str, float]:
    ranks = metrics.ranks_with_positive_first(score_rows)
    return {"P@1": 100 * metrics.precision_at_1(ranks), "hit@5": 100 * metrics.hit_at_k(ranks, 5),
            "MRR": 100 * metrics.mrr(ranks), "NDCG@10": 100 * metrics.ndcg_at_k(ranks, 10), "rows": len(ranks)}


def global_items(rows: list[dict], caption_prompt: str, image_prompt: str) -> tuple[list, list, np.ndarray]:
    """Caption items (one per row), image items (one per distinct image), caption -> image index."""
    images = list(dict.fromkeys(row["image"] for row in rows))
    index = {image: k for k, image in enumerate(images)}
    captions = [(caption_prompt.format(caption=row["caption"]), "") for row in rows]
    return captions, [(image_prompt, image) for image in images], np.array([index[row["image"]] for row in rows])


def global_recall(captions: list, images: list, caption_image: np.ndarray, vectors: dict) -> dict[str, float]:
    caption_vectors = np.stack([vectors[item_id(*c)] for c in captions])
    image_vectors = np.stack([vectors[item_id(*i)] for i in images])
    recall = metrics.image_text_recall(caption_vectors @ image_vectors.T, caption_image)
    return {k: 100 * v for k, v in recall.items()} | {"captions": len(captions), "images": len(images)}
