"""Oracles for the evaluate stage's wiring: its numbers recomputed by independent code.

The stage's own tests check ranges (0 <= P@1 <= 100, keys present); a vector filed under the
wrong item, or a reranked slot mapped back to the wrong candidate, passes those. Here:

- Precision@1 (and MRR, hit@5) of a subset recomputed from the parquet rows: each query and
  its candidate list embedded with ``Embedder.encode`` and ranked by plain cosine, none of
  the harness's de-duplication, batching, vector lookup or scoring code involved; and each
  vector the stage stored compared with the oracle's own encoding of that item;
- rerankers whose answers are scripted from the ground truth, plugged in where the stage's
  reranker sits: one that always names the positive must score exactly 100 in every mode,
  one that names a chosen negative must score exactly what its script predicts, and the
  order a reranker returns must map back to the candidates it preferred.

The oracles read the data and the rerank chats themselves; what they share with the stage is
only its interfaces (the parquet layout, ``Embedder``, the documented content id and the
stored embeddings' folder, the chat layout of ``build_listwise_messages`` /
``build_judge_messages``, the "Ans: (n)" answer).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import mining_config
from unime.pipeline import evaluate
from unime.pipeline.evaluate import RerankBatch, rerank_rows
from unime.rerank import MODES, Reranker

# The stage embeds items in batches of its own making (other neighbours, other padding), which
# moves float32 cosines by ~1e-7 against the oracle's batches (measured: at most 1.3e-7 on the
# demo data). A positive closer than this to any other candidate could rank differently on
# the two sides, so such rows are refused rather than guessed (the demo data has none: its
# closest gap is 5e-5, DemoGrounding under unime-v2).
TIE_MARGIN = 1e-5
EMBEDDING_SUBSETS = ["DemoI2T", "DemoT2I", "DemoGrounding"]  # image query; image candidates; both
TRUTH_SUBSETS = ["DemoI2T", "DemoT2I"]  # reranked by the reranker that knows the positive
SCRIPTED_SUBSET = "DemoGrounding"  # reranked by the one that names a negative on odd rows
RERANK_K = 8  # every demo row's whole candidate list: the positive is always on offer


# -- the oracles' own reading of the data -----------------------------------------------------
def parquet_rows(demo_dir: Path, subset: str) -> list[dict]:
    files = sorted((Path(demo_dir) / "eval" / subset).glob("*.parquet"))
    assert files, f"no parquet under {demo_dir}/eval/{subset}"
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def query_of(row: dict) -> tuple[str, str]:
    return row["qry_text"], row["qry_img_path"] or ""


def candidates_of(row: dict) -> list[tuple[str, str]]:
    """(text, image path) of each candidate, in parquet order: the positive first (MMEB)."""
    return [(text or "", image or "") for text, image in zip(row["tgt_text"], row["tgt_img_path"])]


def load(demo_dir: Path, path: str):
    if not path:
        return None
    with Image.open(Path(demo_dir) / path) as image:
        return image.copy()  # decoded now, the file closed


def oracle_row_vectors(embedder, demo_dir: Path, row: dict) -> np.ndarray:
    """The row's query and candidates (in parquet order) embedded by one ``encode`` call, fed
    what MMEB's rows hold: the raw text (instruction and ``<|image_1|>`` included; the
    embedder's input recipe renders it) and the image under the image root."""
    from unime.models import EmbedItem

    return embedder.encode([EmbedItem(text, load(demo_dir, image)) for text, image in [query_of(row), *candidates_of(row)]])


def oracle_positive_ranks(row_vectors: list[np.ndarray]) -> np.ndarray:
    """1-based rank of each row's positive among its own candidates by cosine similarity
    (taken here rather than trusting the vectors to be unit length)."""
    ranks = []
    for index, vectors in enumerate(row_vectors):
        vectors = vectors.astype(np.float64) / np.linalg.norm(vectors, axis=1, keepdims=True)
        cosine = vectors[1:] @ vectors[0]
        positive, others = cosine[0], cosine[1:]
        closest = float(np.abs(others - positive).min())
        assert closest > TIE_MARGIN, f"row {index}: the positive is {closest:.1e} from another candidate, a near tie"
        ranks.append(1 + int(np.sum(others > positive)))
    return np.array(ranks)


def content_id(text: str, image: str) -> str:
    """The content id the stage files an item's vector under: 16 hex digits of SHA-1 over the
    text, a NUL and the image path (written out here from its documented definition)."""
    return hashlib.sha1(f"{text}\x00{image}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def stored_vectors(folder: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(folder, columns=["id", "embedding"])
    return dict(zip(table["id"].to_pylist(), np.array(table["embedding"].to_pylist(), dtype=np.float32)))


# -- a reranker scripted from the ground truth -------------------------------------------------
_NUMBERED = re.compile(r"\((\d+)\) ")


def chat_items(chat: list[dict]) -> tuple[tuple[str, str], dict[int, tuple[str, str]]]:
    """The query and the numbered candidates of a reranker chat, read back from its layout:
    a framing text ("Query:", "Candidate:", "(n) ") opens an item, the item's raw text and
    image fill it. A pairwise chat's one candidate is number 1."""
    items: dict = {}
    current = None
    for part in chat[0]["content"]:
        if part["type"] == "text" and not part.get("raw"):
            numbered = _NUMBERED.fullmatch(part["text"])
            current = {"Query:": "query", "Candidate:": 1}.get(part["text"], int(numbered[1]) if numbered else None)
            continue
        assert current is not None, f"item part outside any item: {part}"
        key = "image" if part["type"] == "image" else "text"
        items.setdefault(current, {"text": "", "image": ""})[key] = part[key]
    query = items.pop("query")
    return (query["text"], query["image"]), {n: (item["text"], item["image"]) for n, item in items.items()}


class PreferenceBackend:
    """A reranker backend that answers from a script: per query, the candidates' contents best
    first. Every mode is answered by content, never by slot, so the reranker code that turns
    answers into an order is the only thing mapping slots back to candidates."""

    def __init__(self, preferences: dict[tuple[str, str], list[tuple[str, str]]]):
        self.preferences = preferences

    def numbers_best_first(self, chat: list[dict]) -> list[int]:
        query, candidates = chat_items(chat)
        number_of = {content: number for number, content in candidates.items()}
        assert len(number_of) == len(candidates), "two candidates with one content: the script cannot tell them apart"
        return [number_of[content] for content in self.preferences[query] if content in number_of]

    def greedy(self, chat: list[dict], max_new_tokens: int = 8) -> str:
        return f"Ans: ({self.numbers_best_first(chat)[0]})"

    def continuation_logprobs(self, chat: list[dict], prefix: str, continuations: list[str]) -> np.ndarray:
        # each continuation names its candidate ("3)"): read the number from it, not its index
        place = {number: rank for rank, number in enumerate(self.numbers_best_first(chat))}
        return np.array([-float(place[int(text.removesuffix(")"))]) for text in continuations])

    def p_yes(self, chats: list[list[dict]]) -> np.ndarray:
        scores = []
        for chat in chats:
            query, candidates = chat_items(chat)
            (candidate,) = candidates.values()
            preferred = self.preferences[query]
            scores.append(1.0 - preferred.index(candidate) / len(preferred))  # distinct: no ties
        return np.array(scores)


class ScriptedReranker(Reranker):
    """The real :class:`Reranker` (modes, answer parsing, ordering) over the scripted backend."""

    def __init__(self, preferences):
        self.backend = PreferenceBackend(preferences)


class PathImages:
    """Images as their paths, so that the script can tell candidates apart by content."""

    def get(self, path):
        return path or None


class ScriptedRerankBatch(RerankBatch):
    """The stage's rerank actor with only its model loading replaced: ``__call__``, which
    builds each row's chat from the embedder's top-k and scores the answer, is the stage's."""

    preferences: dict = {}

    def __init__(self, model, backend, modes, *args, **kwargs):
        self.reranker, self.modes, self.images = ScriptedReranker(self.preferences), list(modes), PathImages()


def scripted_batch_class(preferences) -> type:
    return type("Scripted", (ScriptedRerankBatch,), {"preferences": preferences})


def truth_first(row: dict) -> list[tuple[str, str]]:
    return candidates_of(row)


def last_negative_first(row: dict) -> list[tuple[str, str]]:
    positive, *negatives = candidates_of(row)
    return [negatives[-1], positive, *negatives[:-1]]


def preferences_of(rows: list[dict], script) -> dict:
    preferences = {query_of(row): script(row) for row in rows}
    assert len(preferences) == len(rows), "two rows with one query: the script cannot tell them apart"
    return preferences


# -- the reranked-index mapping on hand-built rows (no Ray) ----------------------------------
def eval_table(rows: int, candidates: int, dataset: str) -> pa.Table:
    """Rows whose candidates are named after their parquet index, some with an image."""
    return pa.Table.from_pylist([
        {"qry_text": f"{dataset} query {r}", "qry_img_path": f"q{r}.png" if r % 2 else "",
         "tgt_text": [f"{dataset} r{r} c{j}" for j in range(candidates)],
         "tgt_img_path": [f"{dataset}/r{r}c{j}.png" if j % 2 else "" for j in range(candidates)]}
        for r in range(rows)])


def test_rerank_rows_offer_each_row_its_own_embedder_top_k_with_parquet_indices():
    rng = np.random.default_rng(0)
    tables = {"A": eval_table(3, 7, "A"), "B": eval_table(2, 5, "B")}
    scores = {name: [rng.permutation(len(row["tgt_text"])).astype(float) for row in table.to_pylist()]
              for name, table in tables.items()}
    out = rerank_rows(tables, scores, k=4).to_pylist()
    assert [(r["dataset"], r["row_index"]) for r in out] == [("A", 0), ("A", 1), ("A", 2), ("B", 0), ("B", 1)]
    for row in out:
        source = tables[row["dataset"]].to_pylist()[row["row_index"]]
        expected = [int(j) for j in np.argsort(-scores[row["dataset"]][row["row_index"]])[:4]]  # distinct scores
        assert row["cand_index"] == expected
        assert row["cand_texts"] == [f"{row['dataset']} r{row['row_index']} c{j}" for j in expected]
        assert row["cand_images"] == [source["tgt_img_path"][j] for j in expected]
        assert (row["qry_text"], row["qry_img_path"]) == (source["qry_text"], source["qry_img_path"])
        assert (row["pos_text"], row["pos_image"]) == (source["tgt_text"][0], source["tgt_img_path"][0])


def test_reranker_that_knows_the_positive_hits_in_every_mode_wherever_the_embedder_ranked_it():
    table = eval_table(6, 6, "D")
    # row r's positive is the embedder's (r+1)-th; with k=4, rows 4 and 5 never offer it
    scores = [np.array([-r] + [-(j + 0.5) if j < r else -(j + 1.5) for j in range(5)]) for r in range(6)]
    for r, row_scores in enumerate(scores):
        assert int(np.sum(row_scores[1:] > row_scores[0])) == r
    rows = rerank_rows({"D": table}, {"D": scores}, k=4)
    batch = scripted_batch_class(preferences_of(table.to_pylist(), truth_first))("unused", "hf", list(MODES))
    out = batch(rows).to_pylist()
    for mode in MODES:
        assert [r[f"{mode}_hit"] for r in out] == [True] * 4 + [False] * 2, mode
        assert all(r[f"{mode}_parsed"] for r in out) and not any(r[f"{mode}_error"] for r in out)


def test_reranked_order_maps_back_to_the_candidates_the_reranker_preferred():
    table = eval_table(1, 6, "D")
    row = table.to_pylist()[0]
    # the embedder's order 1, 5, 3, 0, 4, 2: its top 5 is offered, candidate 2 is not
    rows = rerank_rows({"D": table}, {"D": [np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.8])]}, k=5).to_pylist()
    offered = rows[0]
    assert offered["cand_index"] == [1, 5, 3, 0, 4]
    # a reranker preferring the higher parquet index: by hand, 5, 4, 3, 1, 0 (2 was not offered);
    # listwise-greedy only names its first and keeps the embedder's order for the rest
    expected = {"pairwise": [5, 4, 3, 1, 0], "listwise": [5, 4, 3, 1, 0], "listwise-greedy": [5, 1, 3, 0, 4]}
    reranker = ScriptedReranker(preferences_of([row], lambda r: candidates_of(r)[::-1]))
    query = (offered["qry_text"], offered["qry_img_path"] or None)
    candidates = [(text, image or None) for text, image in zip(offered["cand_texts"], offered["cand_images"])]
    for mode in MODES:
        ranking = reranker.rank(query, candidates, mode)
        assert [offered["cand_index"][slot] for slot in ranking.order] == expected[mode], mode
    # its first choice is a negative, so the stage's actor scores a miss in every mode
    batch = scripted_batch_class(reranker.backend.preferences)("unused", "hf", list(MODES))
    hits = batch(pa.Table.from_pylist(rows)).to_pylist()[0]
    assert not any(hits[f"{mode}_hit"] for mode in MODES) and all(hits[f"{mode}_parsed"] for mode in MODES)


# -- the stage on the local Ray cluster ------------------------------------------------------
# The tests' own recipe, and the released checkpoints' (bare image pad, 1-D positions, images
# squashed to the evaluation's 1344 px rather than training's 672)
@pytest.fixture(scope="module", params=["qwen2-vl-native", "unime-v2"])
def evaluated(request, ray_cluster, demo_dir, tiny_dir, tmp_path_factory):
    """The evaluate stage run once over the oracle subsets with the scripted reranker in its
    actor pool, per input recipe: ``(config, per_dataset)``."""
    from ray import cloudpickle

    subsets = sorted(set(EMBEDDING_SUBSETS) | set(TRUTH_SUBSETS) | {SCRIPTED_SUBSET})
    run_dir = tmp_path_factory.mktemp(f"eval_oracles_{request.param}")
    config = mining_config(demo_dir, tiny_dir, run_dir, f"data.eval_dir={demo_dir}/eval",
                           f"models.input_format={request.param}",
                           f"models.reranker={tiny_dir}/reranker", "eval.groups=demo",
                           f"eval.subsets=[{','.join(subsets)}]", f"eval.rerank_k={RERANK_K}",
                           "eval.rerank_modes=[listwise-greedy,listwise,pairwise]", "eval.actors.num_cpus=0.5")
    preferences = {}
    for subset in subsets:
        rows = parquet_rows(demo_dir, subset)
        assert max(len(row["tgt_text"]) for row in rows) <= RERANK_K
        preferences |= preferences_of(rows, truth_first if subset in TRUTH_SUBSETS else scripted(rows))
    module = sys.modules[__name__]
    # Ray's workers unpickle the scripted actor class by value: they need not import this file
    cloudpickle.register_pickle_by_value(module)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(evaluate, "RerankBatch", scripted_batch_class(preferences))
            evaluate.run(config)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    return config, json.loads(Path(evaluate.output_paths(str(run_dir))["per_dataset"]).read_text())


def scripted(rows: list[dict]):
    """The truth on even parquet rows, the last negative first on odd ones."""
    odd = {query_of(row) for index, row in enumerate(rows) if index % 2}
    return lambda row: last_negative_first(row) if query_of(row) in odd else truth_first(row)


@pytest.fixture(scope="module")
def oracle_embedder(evaluated):
    from unime.models import Embedder

    config = evaluated[0]
    models = config.models
    # what the stage's embedder is given: the checkpoint, precision, pixel bounds and input recipe
    return Embedder(models.embedder, dtype=models.dtype, device=models.device, min_pixels=models.min_pixels,
                    max_pixels=models.max_pixels, input_format=models.input_format,
                    image_resolution=models.image_resolution, use="eval")


@pytest.fixture(scope="module")
def oracle_vectors(oracle_embedder, demo_dir):
    """subset -> the oracle's vectors of each parquet row, encoded once for the tests below."""
    cache: dict[str, list[np.ndarray]] = {}

    def vectors(subset: str) -> list[np.ndarray]:
        if subset not in cache:
            cache[subset] = [oracle_row_vectors(oracle_embedder, demo_dir, row) for row in parquet_rows(demo_dir, subset)]
        return cache[subset]
    return vectors


@pytest.mark.integration
@pytest.mark.parametrize("subset", EMBEDDING_SUBSETS)
def test_stage_precision_at_1_equals_a_from_scratch_recomputation(evaluated, oracle_vectors, subset):
    _, per_dataset = evaluated
    ranks = oracle_positive_ranks(oracle_vectors(subset))
    reported = per_dataset[subset]
    assert reported["rows"] == len(ranks)
    # no near ties (checked above), so these are exact up to float rounding: a tolerance far
    # below one query's worth (100 / rows)
    assert reported["P@1"] == pytest.approx(100 * np.mean(ranks == 1), abs=1e-9)
    # MRR and hit@5 see every row's rank, not just its top: a vector filed under the wrong
    # item moves them even where P@1 happens to survive
    assert reported["MRR"] == pytest.approx(100 * np.mean(1 / ranks), abs=1e-9)
    assert reported["hit@5"] == pytest.approx(100 * np.mean(ranks <= 5), abs=1e-9)


@pytest.mark.integration
@pytest.mark.parametrize("subset", EMBEDDING_SUBSETS)
def test_stage_stored_embeddings_equal_the_oracles_item_by_item(evaluated, oracle_vectors, demo_dir, subset):
    """Beyond ranks: each item's stored vector is what ``encode`` makes of that item, so an
    input fed differently (another image size, another text) fails here even when no rank
    moves."""
    config, _ = evaluated
    stored = stored_vectors(Path(config.run_dir) / "evaluate" / "embeddings")
    for index, (row, vectors) in enumerate(zip(parquet_rows(demo_dir, subset), oracle_vectors(subset))):
        for (text, image), vector in zip([query_of(row), *candidates_of(row)], vectors):
            key = content_id(text, image)
            assert key in stored, f"row {index}: no stored vector for {text!r} {image!r}"
            # float32 batch noise is ~1e-7 (see TIE_MARGIN)
            np.testing.assert_allclose(stored[key], vector, rtol=0, atol=1e-5,
                                       err_msg=f"row {index}: {text!r} {image!r}")


@pytest.mark.integration
@pytest.mark.parametrize("subset", TRUTH_SUBSETS)
def test_stage_reranker_that_always_names_the_positive_scores_100_in_every_mode(evaluated, subset):
    reranked = evaluated[1][subset]["rerank"]
    assert set(reranked) == set(MODES)
    for mode, result in reranked.items():
        assert (result["P@1"], result["parse_rate"], result["too_long"]) == (100.0, 100.0, 0), mode


@pytest.mark.integration
def test_stage_reranker_naming_a_negative_on_odd_rows_scores_exactly_the_even_rows_share(evaluated, demo_dir):
    rows = parquet_rows(demo_dir, SCRIPTED_SUBSET)
    predicted = 100 * len(rows[::2]) / len(rows)  # a hit on every even row, a miss on every odd one
    assert 0 < predicted < 100
    for mode, result in evaluated[1][SCRIPTED_SUBSET]["rerank"].items():
        assert result["P@1"] == pytest.approx(predicted, abs=1e-9), mode
        assert result["parse_rate"] == 100.0, mode
