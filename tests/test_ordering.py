"""The embed stage and the evaluation harness put the same items in the same order (fast, no Ray)."""

from __future__ import annotations

import pyarrow as pa

from unime.data.ids import item_id
from unime.data.ordering import IMAGE_LENGTH, by_input_length
from unime.eval.harness import eval_items
from unime.pipeline.embed import unique_items

# (text, image): equal estimates on purpose (ties broken by id), an image worth exactly
# IMAGE_LENGTH characters, a non-ASCII text counted in characters, not UTF-8 bytes
ITEMS = [("abc", ""), ("xyz", ""), ("cba", ""), ("", "a.png"), ("", "b.png"), ("a" * IMAGE_LENGTH, ""),
         ("ab", "c.png"), ("ba", "d.png"), ("éé", ""), ("ééé", ""), ("q", ""), ("qq", "e.png")]


def python_order(items: list[tuple[str, str]]) -> list[str]:
    """The order the harness computed in Python before the two call sites shared one function:
    characters plus IMAGE_LENGTH for an image, ties by id."""
    keyed = {item_id(t, i): len(t) + (IMAGE_LENGTH if i else 0) for t, i in items}
    return sorted(keyed, key=lambda k: (keyed[k], k))


def pairs_table(items: list[tuple[str, str]]) -> pa.Table:
    """Training pairs using every item, half as queries, half as positives."""
    queries, positives = items[0::2], items[1::2]
    return pa.table({"query_id": [item_id(*q) for q in queries], "query_text": [q[0] for q in queries],
                     "query_image": [q[1] for q in queries], "pos_id": [item_id(*p) for p in positives],
                     "pos_text": [p[0] for p in positives], "pos_image": [p[1] for p in positives]})


def eval_tables(items: list[tuple[str, str]]) -> dict[str, pa.Table]:
    """The same items as eval rows: the first of each group of three queries two targets."""
    rows = [{"qry_text": group[0][0], "qry_img_path": group[0][1], "tgt_text": [t for t, _ in group[1:]],
             "tgt_img_path": [i for _, i in group[1:]]} for group in (items[k:k + 3] for k in range(0, len(items), 3))]
    return {"Subset": pa.Table.from_pylist(rows)}


def test_the_embed_stage_and_the_harness_order_the_same_items_identically():
    embedded = unique_items(pairs_table(ITEMS))["id"].to_pylist()
    evaluated, references = eval_items(eval_tables(list(reversed(ITEMS))))
    assert references == len(ITEMS)
    assert evaluated["id"].to_pylist() == embedded == python_order(ITEMS)
    ties = [item_id("abc", ""), item_id("cba", ""), item_id("xyz", "")]
    assert [k for k in embedded if k in ties] == sorted(ties)  # equal lengths in id order


def test_the_estimate_counts_characters_and_an_image():
    table = by_input_length(pa.table({"id": ["b", "a", "c", "d"], "text": ["éé", "xy", "", "z"],
                                      "image": ["", "", "p.png", None]}))
    assert table["id"].to_pylist() == ["d", "a", "b", "c"]  # a null image counts as none
    assert table["length"].to_pylist() == [1, 2, 2, IMAGE_LENGTH]


def test_the_harness_keeps_its_table_and_the_embed_stage_its_length_column():
    evaluated, _ = eval_items(eval_tables(ITEMS))
    assert evaluated.column_names == ["id", "text", "image", "is_candidate"]
    assert unique_items(pairs_table(ITEMS)).column_names == ["id", "text", "image", "is_candidate", "length"]
