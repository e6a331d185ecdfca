"""The released UniME-V2 record format (docs/method.md section 1) round-trips byte-for-byte."""

from __future__ import annotations

import json

import pytest

from unime.data import JsonStyle, mined_table, read_mined, write_mined
from unime.data.mined import detect_style, dumps

QUERY = "<|image_1|>\nRepresent the given image with the following question: What is prohibited in the shade?\n"


def sample_records() -> list[dict]:
    """Two records as the released training JSON has them: 10 [text, image] hard negatives each."""
    first = {
        "query_text": QUERY,
        "query_image": "images/OK-VQA/Train/COCO_train2014_000000000139.jpg",
        "pos_text": "parking",
        "pos_image": "",
        "query_pos_scores": 0.9999998807907104,
        "hard_negatives": [[f"candidate answer {k}", ""] for k in range(10)],
        "hard_negatives_scores": [0.0001 * (k + 1) for k in range(9)] + [1e-07],
    }
    second = {
        "query_text": "Find an image that matches the given caption: Un café à Paris ☕\n",
        "query_image": "",
        "pos_text": "<|image_1|>\nRepresent the given image.\n",
        "pos_image": "images/VisualNews_t2i/0001.jpg",
        "query_pos_scores": 0.5,
        "hard_negatives": [["<|image_1|>\nRepresent the given image.\n", f"images/VisualNews_t2i/{k:04d}.jpg"]
                           for k in (7, 9)] * 5,
        "hard_negatives_scores": [0.25, 0.125] * 5,
    }
    return [first, second]


STYLES = {
    "indent4": lambda recs: json.dumps(recs, indent=4, ensure_ascii=False),
    "indent2-ascii": lambda recs: json.dumps(recs, indent=2) + "\n",
    "compact": lambda recs: json.dumps(recs, ensure_ascii=False),
    "jsonl": lambda recs: "\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n",
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_released_format_round_trips_byte_for_byte(tmp_path, style):
    suffix = "jsonl" if style == "jsonl" else "json"
    original = STYLES[style](sample_records()).encode("utf-8")
    source = tmp_path / f"released.{suffix}"
    source.write_bytes(original)
    records, detected, result = read_mined(str(source), check_images=False)
    assert result.input_rows == 2 and not result.quarantine
    copy = tmp_path / f"copy.{suffix}"
    write_mined(records, str(copy), style=detected)
    assert copy.read_bytes() == original


def test_integer_scores_keep_their_spelling(tmp_path):
    records = sample_records()[:1]
    records[0]["query_pos_scores"] = 1
    text = json.dumps(records, indent=4)
    (tmp_path / "r.json").write_text(text)
    loaded, style, _ = read_mined(str(tmp_path / "r.json"), check_images=False)
    assert dumps(loaded, style) == text


def test_detect_style():
    assert detect_style('[\n    {"a": 1}\n]', lines=False) == JsonStyle(indent=4, trailing_newline=False)
    assert detect_style('[{"a": "\\u00e9"}]\n', lines=False) == JsonStyle(indent=None, ensure_ascii=True)
    assert detect_style('{"a": 1}\n', lines=True).lines


def test_table_view_has_the_released_columns():
    table = mined_table(sample_records())
    assert table.column_names == ["query_text", "query_image", "pos_text", "pos_image", "query_pos_scores",
                                  "hard_negatives", "hard_negatives_scores"]
    assert table.column("hard_negatives").to_pylist()[1][0] == ["<|image_1|>\nRepresent the given image.\n",
                                                               "images/VisualNews_t2i/0007.jpg"]
