"""Every kind of bad input becomes a quarantine row naming source, row and field; a corrupt
file as a whole fails naming the file; input rows = good rows + quarantined rows, always."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unime.data import CorruptFileError, ImageLimits, read_eval, read_mined, read_pairs

GOOD = {"query_text": "<|image_1|>\nFind a caption.\n", "query_image": "ok.png", "pos_text": "a red circle",
        "pos_image": ""}


def png(size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def zero_width_png() -> bytes:
    data = bytearray(png((4, 4)))
    data[16:20] = struct.pack(">I", 0)  # IHDR width
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "ok.png").write_bytes(png())
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "truncated.png").write_bytes(png((64, 64))[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "zero.png").write_bytes(zero_width_png())
    (tmp_path / "huge.png").write_bytes(png((300, 300)))
    return tmp_path


# (raw JSONL line, field, reason fragment)
BAD_LINES = [
    (json.dumps(GOOD | {"query_image": "missing.png"}), "query_image", "image file not found"),
    (json.dumps(GOOD | {"query_image": "corrupt.png"}), "query_image", "cannot decode image"),
    (json.dumps(GOOD | {"query_image": "truncated.png"}), "query_image", "cannot decode image"),
    (json.dumps(GOOD | {"query_image": "empty.png"}), "query_image", "empty (0 bytes)"),
    (json.dumps(GOOD | {"query_image": "zero.png"}), "query_image", "cannot decode image"),
    (json.dumps(GOOD | {"query_image": "huge.png"}), "query_image", "exceeds max_pixels=10000"),
    (json.dumps(GOOD | {"query_text": "  <|image_1|> ", "query_image": ""}), "query_text", "empty query"),
    (json.dumps(GOOD | {"pos_text": "", "pos_image": None}), "pos_text", "empty positive"),
    (json.dumps(GOOD | {"pos_text": ["a", "list"]}), "pos_text", "expected a string, got list"),
    (json.dumps(GOOD | {"query_image": 5}), "query_image", "expected a string, got int"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "pos_text"}), "pos_text", "missing field"),
    ('{"query_text": "cut off', "<row>", "malformed JSON"),
    ("[1, 2, 3]", "<row>", "expected an object, got list"),
]
NON_UTF8_LINE = b'{"query_text": "caf\xe9 au lait", "pos_text": "a drink"}'


def test_each_bad_row_kind_is_quarantined_with_its_reason(root):
    lines = [json.dumps(GOOD)] + [line for line, _, _ in BAD_LINES] + [json.dumps(GOOD | {"pos_text": "b"})]
    (root / "set.jsonl").write_bytes("\n".join(lines).encode() + b"\n" + NON_UTF8_LINE + b"\n")
    table, result = read_pairs(str(root / "set.jsonl"), image_root=str(root),
                               limits=ImageLimits(max_pixels=10_000))
    assert table.num_rows == 2
    assert result.input_rows == len(lines) + 1 == table.num_rows + len(result.quarantine)
    by_row = {q["row_index"]: q for q in result.quarantine}
    for offset, (_, field, reason) in enumerate(BAD_LINES, start=1):
        assert by_row[offset]["field"] == field, by_row[offset]
        assert reason in by_row[offset]["reason"], by_row[offset]
        assert by_row[offset]["source"].endswith("set.jsonl")
    assert by_row[len(lines)]["field"] == "query_text" and "not valid UTF-8" in by_row[len(lines)]["reason"]


def test_non_utf8_in_a_json_array_and_in_parquet_bytes(root):
    (root / "arr.json").write_bytes(b"[" + json.dumps(GOOD).encode() + b", " + NON_UTF8_LINE + b"]")
    table, result = read_pairs(str(root / "arr.json"), image_root=str(root))
    assert table.num_rows == 1 and result.quarantine[0]["row_index"] == 1
    binary = pa.table({"query_text": pa.array([b"fine", b"\xff\xfe bad"], pa.binary()),
                       "pos_text": pa.array([b"x", b"y"], pa.binary())})
    pq.write_table(binary, root / "bin.parquet")
    table, result = read_pairs(str(root / "bin.parquet"), image_root=str(root))
    assert table.column("query_text").to_pylist() == ["fine"]
    assert result.quarantine == [{"source": str(root / "bin.parquet"), "row_index": 1, "field": "query_text",
                                  "reason": "text is not valid UTF-8 (invalid start byte at byte 0)"}]


def test_byte_limit(root):
    (root / "one.jsonl").write_text(json.dumps(GOOD) + "\n")
    _, result = read_pairs(str(root / "one.jsonl"), image_root=str(root), limits=ImageLimits(max_bytes=10))
    assert "exceeds max_bytes=10" in result.quarantine[0]["reason"]


def test_mined_and_eval_rows_are_validated(root):
    mined = [{"query_text": "q", "query_image": "", "pos_text": "p", "pos_image": "", "query_pos_scores": 0.9,
              "hard_negatives": [["n", ""]], "hard_negatives_scores": [0.1]}]
    mined.append(mined[0] | {"hard_negatives_scores": [0.1, 0.2]})
    mined.append(mined[0] | {"query_pos_scores": "high"})
    mined.append(mined[0] | {"hard_negatives": [["n", "missing.png"]]})
    mined.append(mined[0] | {"hard_negatives": [["only text"]]})
    (root / "mined.json").write_text(json.dumps(mined))
    records, _, result = read_mined(str(root / "mined.json"), image_root=str(root))
    assert len(records) == 1 and result.input_rows == 5
    assert [(q["row_index"], q["field"]) for q in result.quarantine] == [
        (1, "hard_negatives_scores"), (2, "query_pos_scores"), (3, "hard_negatives"), (4, "hard_negatives")]
    rows = [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b"], "tgt_img_path": ["", ""]},
            {"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b"], "tgt_img_path": [""]},
            {"qry_text": "q", "qry_img_path": "", "tgt_text": [], "tgt_img_path": []},
            {"qry_text": "q", "qry_img_path": "", "tgt_text": ["a"], "tgt_img_path": ["corrupt.png"]}]
    (root / "eval" / "Set").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "eval" / "Set" / "test-00000.parquet")
    tables, result = read_eval(str(root / "eval"), image_root=str(root))
    assert tables["Set"].num_rows == 1
    assert [q["field"] for q in result.quarantine] == ["tgt_img_path", "tgt_text", "tgt_img_path"]


@pytest.mark.parametrize(("name", "content"), [
    ("broken.parquet", b"PAR1 definitely not parquet"),
    ("broken.json", b'[{"query_text": "a"'),
    ("broken.jsonl", b"not json\nnor this\n"),
    ("object.json", b'{"query_text": "a single object, not an array"}'),
])
def test_a_corrupt_file_fails_naming_the_file(root, name, content):
    (root / name).write_bytes(content)
    with pytest.raises(CorruptFileError, match=name):
        read_pairs(str(root / name), image_root=str(root))


def test_global_eval_rows_are_validated(root):
    from unime.data import read_many

    rows = [{"caption": "a red circle", "image": "ok.png"}, {"caption": " ", "image": "ok.png"},
            {"caption": "x", "image": "missing.png"}, {"caption": "y"}]
    (root / "global.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = read_many(str(root / "global.jsonl"), "global", image_root=str(root))
    assert [r["caption"] for r in result.rows] == ["a red circle"]
    assert [(q["row_index"], q["field"]) for q in result.quarantine] == [(1, "caption"), (2, "image"), (3, "image")]


def test_images_outside_the_image_root_are_quarantined_and_never_read(tmp_path):
    """``..``, absolute paths, symlinks out of the root and URLs are refused before any read:
    the reason says why, not whether a file is there."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "ok.png").write_bytes(png())
    (root / "sub").mkdir()
    (outside / "secret.png").write_bytes(png())
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "linked").symlink_to(outside)
    cases = [("../outside/secret.png", "leaves the image root"), ("sub/../../outside/secret.png", "leaves the image root"),
             (str(outside / "secret.png"), "is absolute or a URL"), ("/etc/hostname", "is absolute or a URL"),
             ("escape.png", "leaves the image root"), ("linked/secret.png", "leaves the image root"),
             ("file:///etc/hostname", "is absolute or a URL"), ("https://example.com/cat.png", "is absolute or a URL"),
             ("s3://bucket/cat.png", "is absolute or a URL"), ("ok.png\x00.txt", "NUL byte")]
    lines = [json.dumps(GOOD | {"query_image": image}) for image, _ in cases]
    lines.append(json.dumps(GOOD | {"query_image": "sub/../ok.png"}))  # stays inside: fine
    (tmp_path / "set.jsonl").write_text("\n".join(lines) + "\n")
    table, result = read_pairs(str(tmp_path / "set.jsonl"), image_root=str(root))
    assert table.num_rows == 1 and result.input_rows == len(cases) + 1
    by_row = {q["row_index"]: q for q in result.quarantine}
    for row, (image, reason) in enumerate(cases):
        assert by_row[row]["field"] == "query_image" and reason in by_row[row]["reason"], (image, by_row[row])
    # a config that allows absolute paths reads them as written
    allowed = ImageLimits(allow_absolute_paths=True)
    (tmp_path / "abs.jsonl").write_text(json.dumps(GOOD | {"query_image": str(outside / "secret.png")}) + "\n")
    table, _ = read_pairs(str(tmp_path / "abs.jsonl"), image_root=str(root), limits=allowed)
    assert table.num_rows == 1


def test_an_object_store_root_is_guarded_by_its_normalised_path():
    from unime.data import ImageError, resolve_image

    assert resolve_image("a/b.png", "s3://bucket/corpus") == "s3://bucket/corpus/a/b.png"
    assert resolve_image("a/../b.png", "s3://bucket/corpus").endswith("a/../b.png")
    for escaping in ("../other/b.png", "a/../../corpus-evil/b.png"):
        with pytest.raises(ImageError, match="leaves the image root"):
            resolve_image(escaping, "s3://bucket/corpus")


def test_a_jsonl_rows_index_is_its_line_number_minus_one_blank_lines_included(root):
    lines = [json.dumps(GOOD), "", "   ", json.dumps(GOOD | {"query_image": "missing.png"}), "",
             '{"cut off']
    (root / "gaps.jsonl").write_text("\r\n".join(lines) + "\n")
    table, result = read_pairs(str(root / "gaps.jsonl"), image_root=str(root))
    assert table.num_rows == 1 and result.input_rows == 3
    assert [(q["row_index"], q["field"]) for q in result.quarantine] == [(3, "query_image"), (5, "<row>")]
