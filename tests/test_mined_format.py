"""The released UniME-V2 mined-record format: read strictly, written back byte-for-byte."""

from __future__ import annotations

import copy
import json
import math
import pickle

import pytest

from unime.data import JsonStyle, mined_table, read_mined, write_mined
from unime.data.mined import detect_style, dumps, to_json
from unime.data.records import JsonNumber

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
    assert detect_style('[\n{\n"a": 1\n}\n]\n', lines=False) == JsonStyle(indent=0)
    assert detect_style('[\n\t{\n\t\t"a": 1\n\t}\n]\n', lines=False) == JsonStyle(indent="\t")
    assert detect_style('[{"a": "\\u00e9"}]\n', lines=False) == JsonStyle(indent=None, ensure_ascii=True)
    assert detect_style('{"a": 1}\n', lines=True).lines


def test_table_view_has_the_released_columns():
    table = mined_table(sample_records())
    assert table.column_names == ["query_text", "query_image", "pos_text", "pos_image", "query_pos_scores",
                                  "hard_negatives", "hard_negatives_scores"]
    assert table.column("hard_negatives").to_pylist()[1][0] == ["<|image_1|>\nRepresent the given image.\n",
                                                               "images/VisualNews_t2i/0007.jpg"]


# Numbers as a released file may spell them; json.dumps would write 0.5, 0.25, 1 and 0.1.
SPELLINGS = ["0.50", "2.5E-1", "1", "0.1000"]


def spelled_records() -> list[dict]:
    """Records whose numbers are placeholders ``"@<spelling>@"``, swapped for bare numbers in the text."""
    records = sample_records()
    records[0]["query_pos_scores"] = "@0.50@"
    records[0]["hard_negatives_scores"][:4] = [f"@{s}@" for s in SPELLINGS]
    records[1]["query_pos_scores"] = "@1@"
    records[1]["hard_negatives_scores"][-2:] = ["@2.5E-1@", "@0.1000@"]
    records[1]["extra"] = {"id": "@7@", "weight": "@-0.0@"}  # keys outside the format travel too
    return records


def spell(text: str) -> str:
    for number in SPELLINGS + ["7", "-0.0"]:
        text = text.replace(f'"@{number}@"', number)
    assert "@" not in text
    return text


SPELLED_STYLES = {
    "indent4": lambda recs: json.dumps(recs, indent=4, ensure_ascii=False) + "\n",
    "indent2-ascii": lambda recs: json.dumps(recs, indent=2),
    "jsonl": lambda recs: "\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n",
}


@pytest.mark.parametrize("style", sorted(SPELLED_STYLES))
def test_number_spellings_round_trip_byte_for_byte(tmp_path, style):
    suffix = "jsonl" if style == "jsonl" else "json"
    original = spell(SPELLED_STYLES[style](spelled_records())).encode("utf-8")
    assert b"0.50" in original and b"2.5E-1" in original and b"0.1000" in original
    source = tmp_path / f"released.{suffix}"
    source.write_bytes(original)
    records, detected, result = read_mined(str(source), check_images=False)
    assert result.input_rows == 2 and not result.quarantine
    # the values are floats for everything downstream
    first = records[0]
    assert first["query_pos_scores"] == 0.5 and isinstance(first["query_pos_scores"], float)
    assert first["hard_negatives_scores"][:4] == [0.5, 0.25, 1.0, 0.1]
    assert sum(first["hard_negatives_scores"][:4]) == pytest.approx(1.85)
    assert type(first["query_pos_scores"] * 2) is float
    assert mined_table(records).column("query_pos_scores").to_pylist() == [0.5, 1.0]
    copy_path = tmp_path / f"copy.{suffix}"
    write_mined(records, str(copy_path), style=detected)
    assert copy_path.read_bytes() == original


def test_a_changed_number_is_written_as_json_dumps_writes_it(tmp_path):
    source = tmp_path / "released.json"
    source.write_text(spell(json.dumps(spelled_records(), indent=4, ensure_ascii=False)))
    records, style, _ = read_mined(str(source), check_images=False)
    records[0]["query_pos_scores"] = records[0]["query_pos_scores"] + 0.25  # a plain float now
    expected = source.read_text().replace('"query_pos_scores": 0.50,', '"query_pos_scores": 0.75,', 1)
    assert expected != source.read_text() and dumps(records, style) == expected


def test_json_numbers_behave_as_floats():
    number = JsonNumber("2.5E-1")
    assert number == 0.25 and hash(number) == hash(0.25) and float(number) == 0.25
    assert type(float(number)) is float and type(number + 0) is float and math.isclose(number * 4, 1.0)
    for clone in (pickle.loads(pickle.dumps(number)), copy.deepcopy(number)):
        assert isinstance(clone, JsonNumber) and clone.text == "2.5E-1"
    assert JsonNumber("1") == 1 and math.isnan(JsonNumber("NaN"))


def plain_record() -> dict:
    """Plain Python values as the pipeline writes them: floats, ints, non-ASCII and escaped text."""
    return {
        "query_text": "Un café à Paris ☕ \"quoted\" back\\slash\ttab\nnewline \x01 \u2028 😀",
        "query_image": "", "pos_text": "Ünïcödé ✓", "pos_image": "images/ü.png",
        "query_pos_scores": 0.9999998807907104,
        "hard_negatives": [["négatif", ""], ["", "images/b.png"]],
        "hard_negatives_scores": [1e-07, 0.1, 0.30000000000000004, 1.0, 0.0, -0.0, 1e22, 123456789.125],
        "misc": {"int": 7, "big": 10**30, "bool": True, "none": None, "empty": [], "nested": {"e": {}},
                 "tuple": (1, 2.5), "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")},
        3: "int key", 2.5: "float key", None: "null key", False: "bool key",
    }


@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("indent", [None, 0, 2, 4, "\t"])
def test_plain_values_are_written_exactly_as_json_dumps_writes_them(indent, ensure_ascii):
    records = [plain_record(), {"only": "one"}, {}, []]
    assert to_json(records, indent=indent, ensure_ascii=ensure_ascii) == json.dumps(
        records, indent=indent, ensure_ascii=ensure_ascii)
    for record in records:
        assert to_json(record, ensure_ascii=ensure_ascii) == json.dumps(record, ensure_ascii=ensure_ascii)


def test_pipeline_output_layout_is_unchanged(tmp_path):
    records = [sample_records()[0], sample_records()[1] | {"query_text": plain_record()["query_text"]}]
    write_mined(records, str(tmp_path / "mined.json"))
    write_mined(records, str(tmp_path / "mined.jsonl"))
    assert (tmp_path / "mined.json").read_text() == json.dumps(records, indent=4, ensure_ascii=False) + "\n"
    assert (tmp_path / "mined.jsonl").read_text() == "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def test_to_json_rejects_what_json_dumps_rejects():
    with pytest.raises(TypeError, match="not JSON serializable"):
        to_json({"a": object()})
    with pytest.raises(TypeError, match="keys must be"):
        to_json({(1, 2): "tuple key"})


def good_record() -> dict:
    return {"query_text": "Find an image that matches the given caption: a red circle\n", "query_image": "",
            "pos_text": "<|image_1|>\nRepresent the given image.\n", "pos_image": "images/a.png",
            "query_pos_scores": 0.875,
            "hard_negatives": [["a blue square", ""], ["", "images/b.png"], ["a green triangle", None],
                               ["<|image_1|>\nRepresent the given image.\n", "images/c.png"]],
            "hard_negatives_scores": [0.5, 0.25, 0.125, 0.0625]}


def edited(**changes):
    def edit(record: dict) -> dict:
        for key, value in changes.items():
            if value is DROP:
                del record[key]
            elif callable(value):
                record[key] = value(record[key])
            else:
                record[key] = value
        return record
    return edit


def at(index, value):
    def replace(values: list) -> list:
        values[index] = value
        return values
    return replace


DROP = object()

# id: (edit of a good record, expected_negatives, quarantine field, quarantine reason)
BAD_ROWS = {
    "not-an-object": (lambda r: ["a", "list"], None, "<row>", "expected an object, got list"),
    "query-text-missing": (edited(query_text=DROP), None, "query_text", "query_text: missing field"),
    "query-text-type": (edited(query_text=5), None, "query_text", "query_text: expected a string, got number"),
    "query-empty": (edited(query_text="<|image_1|>\n", query_image=""), None, "query_text",
                    "query_text: empty query: no text and no image"),
    "positive-empty": (edited(pos_text="", pos_image=None), None, "pos_text",
                       "pos_text: empty positive: no text and no image"),
    "pos-image-type": (edited(pos_image=["images/a.png"]), None, "pos_image",
                       "pos_image: expected a string, got list"),
    "pos-score-missing": (edited(query_pos_scores=DROP), None, "query_pos_scores",
                          "query_pos_scores: missing field"),
    "pos-score-type": (edited(query_pos_scores="high"), None, "query_pos_scores",
                       "query_pos_scores: expected a number, got str 'high'"),
    "pos-score-bool": (edited(query_pos_scores=True), None, "query_pos_scores",
                       "query_pos_scores: expected a number, got bool True"),
    "pos-score-range": (edited(query_pos_scores=-0.25), None, "query_pos_scores",
                        "query_pos_scores: -0.25 is outside [0, 1]"),
    "negatives-type": (edited(hard_negatives="a blue square"), None, "hard_negatives",
                       "hard_negatives: expected a list, got str"),
    "negatives-empty": (edited(hard_negatives=[], hard_negatives_scores=[]), None, "hard_negatives",
                        "hard_negatives: empty list; expected at least 1 hard negative"),
    "negatives-count": (edited(hard_negatives=lambda v: v[:3], hard_negatives_scores=lambda v: v[:3]), 4,
                        "hard_negatives", "hard_negatives: 3 hard negatives, expected 4"),
    "negative-not-a-pair": (edited(hard_negatives=at(1, "images/b.png")), None, "hard_negatives",
                            "hard_negatives[1]: expected a [text, image] pair, got str"),
    "negative-short": (edited(hard_negatives=at(2, ["only text"])), None, "hard_negatives",
                       "hard_negatives[2]: expected a [text, image] pair, got 1 elements"),
    "negative-long": (edited(hard_negatives=at(0, ["t", "", "extra"])), None, "hard_negatives",
                      "hard_negatives[0]: expected a [text, image] pair, got 3 elements"),
    "negative-text-type": (edited(hard_negatives=at(1, [3, ""])), None, "hard_negatives",
                           "hard_negatives[1][0]: expected a string, got number"),
    "negative-image-type": (edited(hard_negatives=at(3, ["t", {"path": "c.png"}])), None, "hard_negatives",
                            "hard_negatives[3][1]: expected a string, got dict"),
    "negative-empty": (edited(hard_negatives=at(0, ["", None])), None, "hard_negatives",
                       "hard_negatives[0]: empty hard negative: no text and no image"),
    "scores-missing": (edited(hard_negatives_scores=DROP), None, "hard_negatives_scores",
                       "hard_negatives_scores: missing field"),
    "scores-type": (edited(hard_negatives_scores=0.5), None, "hard_negatives_scores",
                    "hard_negatives_scores: expected a list, got number"),
    "scores-length": (edited(hard_negatives_scores=lambda v: v[:2]), None, "hard_negatives_scores",
                      "hard_negatives_scores: 2 scores for 4 hard negatives; expected one each"),
    "score-type": (edited(hard_negatives_scores=at(1, "0.5")), None, "hard_negatives_scores",
                   "hard_negatives_scores[1]: expected a number, got str '0.5'"),
    "score-bool": (edited(hard_negatives_scores=at(0, False)), None, "hard_negatives_scores",
                   "hard_negatives_scores[0]: expected a number, got bool False"),
    "score-null": (edited(hard_negatives_scores=at(2, None)), None, "hard_negatives_scores",
                   "hard_negatives_scores[2]: expected a number, got NoneType None"),
    "score-nan": (edited(hard_negatives_scores=at(2, float("nan"))), None, "hard_negatives_scores",
                  "hard_negatives_scores[2]: NaN is not a finite number"),
    "score-infinite": (edited(hard_negatives_scores=at(0, float("-inf"))), None, "hard_negatives_scores",
                       "hard_negatives_scores[0]: -Infinity is not a finite number"),
    "score-range": (edited(hard_negatives_scores=at(3, 7.5)), None, "hard_negatives_scores",
                    "hard_negatives_scores[3]: 7.5 is outside [0, 1]"),
}


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_each_bad_row_is_quarantined_and_its_neighbours_survive(tmp_path, case, suffix):
    edit, expected_negatives, field, reason = BAD_ROWS[case]
    rows = [good_record(), edit(good_record()), good_record() | {"pos_text": "another positive"}]
    path = tmp_path / f"mined.{suffix}"
    path.write_text(json.dumps(rows, indent=4) if suffix == "json" else "\n".join(map(json.dumps, rows)) + "\n")
    records, _, result = read_mined(str(path), check_images=False, expected_negatives=expected_negatives)
    assert result.quarantine == [{"source": str(path), "row_index": 1, "field": field, "reason": reason}]
    assert records == [rows[0], rows[2]] and result.input_rows == 3


def test_a_reason_quotes_a_number_as_spelled(tmp_path):
    text = json.dumps([good_record() | {"hard_negatives_scores": [0.5, 0.25, "@1.50@", 1e999]},
                       good_record() | {"query_pos_scores": "@1.0E1@"}], indent=4)
    (tmp_path / "mined.json").write_text(text.replace('"@1.50@"', "1.50").replace('"@1.0E1@"', "1.0E1"))
    _, _, result = read_mined(str(tmp_path / "mined.json"), check_images=False)
    assert [q["reason"] for q in result.quarantine] == ["hard_negatives_scores[2]: 1.50 is outside [0, 1]",
                                                        "query_pos_scores: 1.0E1 is outside [0, 1]"]


def test_the_configured_number_of_negatives_is_required(tmp_path):
    path = tmp_path / "mined.json"
    path.write_text(json.dumps([good_record()]))
    assert len(read_mined(str(path), check_images=False, expected_negatives=4)[0]) == 1
    records, _, result = read_mined(str(path), check_images=False, expected_negatives=10)
    assert not records and result.quarantine[0]["reason"] == "hard_negatives: 4 hard negatives, expected 10"
