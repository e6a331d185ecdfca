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

from unime.data import CorruptFileError, ImageLimits, read_eval, read_mined, read_pairs, schemas

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


def ingest_without_ray(train: str, image_root, limits: ImageLimits | None = None, reverse_blocks: bool = False):
    """The ingest stage's steps on plain Arrow tables: one block per file (the stage's read
    tasks), the duplicate decision over every block's keys at once (its driver), duplicates
    marked block by block. ``reverse_blocks`` hands the blocks over last file first, as
    parallel tasks may. Returns (pairs, quarantine rows, counts)."""
    from dataclasses import asdict

    import pyarrow.compute as pc

    from unime.config import DataConfig
    from unime.pipeline import ingest

    sources = [f["path"] for f in ingest.input_files(DataConfig(train=[train]))]
    blocks = [ingest.ingest_files({"path": [path], "file_index": [index]}, str(image_root),
                                  asdict(limits or ImageLimits()), {}) for index, path in enumerate(sources)]
    if reverse_blocks:
        blocks.reverse()
    tagged = pa.concat_tables(blocks)
    markers = tagged.filter(pc.equal(tagged["row_index"], -1))
    valid = tagged.filter(pc.and_(pc.not_equal(tagged["row_index"], -1), pc.invert(tagged["quarantined"])))
    duplicates = ingest.find_duplicates(valid.select([*ingest.DUPLICATE_KEY, "file_index", "row_index"]))
    rows = pa.concat_tables([ingest.mark_duplicates(block, duplicates, sources) for block in blocks])
    rows = rows.filter(pc.not_equal(rows["row_index"], -1))
    pairs = rows.filter(pc.invert(rows["quarantined"])).select(schemas.PAIR.names)
    quarantine = rows.filter(rows["quarantined"]).select(schemas.QUARANTINE.names).to_pylist()
    counts = {"input_rows": pc.sum(markers["input_rows"]).as_py(), "good_rows": pairs.num_rows,
              "quarantined_rows": len(quarantine), "duplicates": len(duplicates)}
    ingest.reconcile(counts["input_rows"], valid.num_rows, counts["good_rows"], counts["quarantined_rows"],
                     counts["duplicates"])
    return pairs, quarantine, counts


def write_duplicates_corpus(root):
    """Three files under ``root/train`` repeating pairs within and across files and datasets
    (``root`` holds ok.png); returns their paths in read order (sorted)."""
    a, b, c = GOOD, GOOD | {"pos_text": "a blue square"}, GOOD | {"query_image": "", "query_text": "red?"}

    def mmeb(row, dataset=None):  # MMEB-train names: the same content, the same ids
        return {"qry": row["query_text"], "qry_image_path": row["query_image"], "pos_text": row["pos_text"],
                "pos_image_path": row["pos_image"], "dataset": dataset}

    (root / "train" / "Set").mkdir(parents=True)
    other = root / "train" / "Other.jsonl"  # dataset "Other" (its name), read first
    other.write_text(json.dumps(a) + "\n" + json.dumps(a) + "\n")  # 1: duplicate of row 0
    first = root / "train" / "Set" / "train-00000.jsonl"  # dataset "Set" (its folder)
    first.write_text("\n".join(json.dumps(r) for r in [
        a,                                   # 0: kept (the same pair as Other.jsonl's, another dataset)
        b,                                   # 1
        a,                                   # 2: duplicate of row 0
        a | {"query_image": "missing.png"},  # 3: bad image
        a | {"query_image": "missing.png"},  # 4: bad image again: its own reason, no duplicate
        a | {"dataset": "Other"},            # 5: duplicate of Other.jsonl row 0
    ]) + "\n\n" + json.dumps(b) + "\n")     # 7 (line 6 is blank): duplicate of row 1
    second = root / "train" / "Set" / "train-00001.parquet"
    # 0: kept; 1: duplicate of train-00000 row 0; 2: of row 0 here; 3: kept (dataset Other);
    # 4: duplicate of Other.jsonl row 0
    pq.write_table(pa.Table.from_pylist([mmeb(c), mmeb(a), mmeb(c), mmeb(b, "Other"), mmeb(a, "Other")]), second)
    return other, first, second


def test_duplicate_pairs_within_and_across_files_are_quarantined_naming_the_first(root):
    """A good row whose (dataset, query_id, pos_id) an earlier row has (file order, then row
    order) is quarantined naming that row; the same pair in another dataset is no duplicate."""
    other, first, second = write_duplicates_corpus(root)
    pairs, quarantine, counts = ingest_without_ray(str(root / "train"), root)
    o, f, s = str(other), str(first), str(second)
    assert sorted((r["source"], r["row_index"]) for r in pairs.to_pylist()) == sorted(
        [(o, 0), (f, 0), (f, 1), (s, 0), (s, 3)])
    duplicates = sorted((q["source"], q["row_index"], q["field"], q["reason"]) for q in quarantine
                        if q["reason"].startswith("duplicate"))
    assert duplicates == sorted([
        (o, 1, "<row>", f"duplicate of {o} row 0"),
        (f, 2, "<row>", f"duplicate of {f} row 0"),
        (f, 5, "<row>", f"duplicate of {o} row 0"),
        (f, 7, "<row>", f"duplicate of {f} row 1"),
        (s, 1, "<row>", f"duplicate of {f} row 0"),
        (s, 2, "<row>", f"duplicate of {s} row 0"),
        (s, 4, "<row>", f"duplicate of {o} row 0"),
    ])
    assert sorted((q["source"], q["row_index"], q["field"]) for q in quarantine
                  if not q["reason"].startswith("duplicate")) == [(f, 3, "query_image"), (f, 4, "query_image")]
    assert counts == {"input_rows": 14, "good_rows": 5, "quarantined_rows": 9, "duplicates": 7}
    # The decision is global: blocks arriving in another order change nothing.
    again = ingest_without_ray(str(root / "train"), root, reverse_blocks=True)
    assert sorted(again[1], key=lambda q: (q["source"], q["row_index"])) == sorted(
        quarantine, key=lambda q: (q["source"], q["row_index"]))
    assert again[2] == counts


def test_find_duplicates_is_independent_of_row_order():
    from unime.pipeline.ingest import find_duplicates

    keys = pa.table({"dataset": ["D", "D", "E", "D", "D", "E"], "query_id": ["q", "q", "q", "q", "r", "q"],
                     "pos_id": ["p", "p", "p", "p", "p", "p"], "file_index": [1, 0, 0, 1, 0, 2],
                     "row_index": [0, 9, 3, 5, 1, 0]})
    expected = {(1, 0): (0, 9), (1, 5): (0, 9), (2, 0): (0, 3)}
    assert find_duplicates(keys) == expected
    assert find_duplicates(keys.take([5, 3, 1, 0, 4, 2])) == expected
    assert find_duplicates(keys.slice(0, 0)) == {}


def test_the_mixed_bad_file_with_duplicates_reconciles_through_ingest(root):
    """Every bad kind and exact repeats in one file: input = written + quarantined, the
    repeats counted as duplicates, each bad row keeping its own reason (a repeated bad row
    is bad, not a duplicate)."""
    lines = [json.dumps(GOOD)] + [line for line, _, _ in BAD_LINES] + [json.dumps(GOOD | {"pos_text": "b"})]
    repeats = [json.dumps(GOOD), BAD_LINES[0][0], json.dumps(GOOD | {"pos_text": "b"}), json.dumps(GOOD)]
    (root / "set.jsonl").write_bytes("\n".join(lines + repeats).encode() + b"\n" + NON_UTF8_LINE + b"\n")
    pairs, quarantine, counts = ingest_without_ray(str(root / "set.jsonl"), root, ImageLimits(max_pixels=10_000))
    total = len(lines) + len(repeats) + 1
    assert counts == {"input_rows": total, "good_rows": 2, "quarantined_rows": total - 2, "duplicates": 3}
    assert pairs["row_index"].to_pylist() == [0, len(lines) - 1]
    by_row = {q["row_index"]: q for q in quarantine}
    for offset, (_, field, reason) in enumerate(BAD_LINES, start=1):
        assert by_row[offset]["field"] == field and reason in by_row[offset]["reason"], by_row[offset]
    source = str(root / "set.jsonl")
    n = len(lines)
    assert [(by_row[n + k]["field"], by_row[n + k]["reason"]) for k in range(len(repeats))] == [
        ("<row>", f"duplicate of {source} row 0"), ("query_image", by_row[1]["reason"]),
        ("<row>", f"duplicate of {source} row {n - 1}"), ("<row>", f"duplicate of {source} row 0")]
    assert "not valid UTF-8" in by_row[total - 1]["reason"]
