"""Round trips of every record kind and format, on local disk and through a real S3 API."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from PIL import Image

from unime.data import item_id, read_eval, read_mined, read_pairs, write_mined, write_table
from unime.data.storage import join, write_bytes

PAIRS = [
    {"query_text": "<|image_1|>\nFind a caption for the given image.\n", "query_image": "images/a.png",
     "pos_text": "two red circles", "pos_image": "", "dataset": "DemoI2T"},
    {"query_text": "Find an image that matches the given caption: a blue square\n", "query_image": "",
     "pos_text": "<|image_1|>\nRepresent the given image.\n", "pos_image": "images/b.png", "dataset": "DemoT2I"},
    {"query_text": "Ünïcödé query ✓", "query_image": "", "pos_text": "answer", "pos_image": "", "dataset": "DemoVQA"},
]
MINED = [{
    "query_text": "<|image_1|>\nRepresent the given image with the following question: What is shown?\n",
    "query_image": "images/a.png", "pos_text": "a circle", "pos_image": "",
    "query_pos_scores": 0.93, "hard_negatives": [["a square", ""], ["", "images/b.png"]],
    "hard_negatives_scores": [0.41, 0.07],
}]
EVAL = [{"qry_text": "<|image_1|>\nRepresent the given image for classification\n", "qry_img_path": "images/a.png",
         "tgt_text": ["circle", "square", "triangle"], "tgt_img_path": ["", "", ""]}]


def png_bytes(colour=(200, 30, 30), size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request, tmp_path):
    """(root URL, storage options) with images/a.png and images/b.png under the root."""
    if request.param == "local":
        root, options = str(tmp_path), {}
    else:
        options = request.getfixturevalue("s3_server")
        root = f"s3://unime-test/{request.node.name.replace('[', '_').replace(']', '')}"
    write_bytes(join(root, "images/a.png"), png_bytes(), options)
    write_bytes(join(root, "images/b.png"), png_bytes((30, 30, 200)), options)
    return root, options


@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "json"])
def test_pairs_round_trip(storage, suffix):
    root, options = storage
    for name in ("DemoI2T", "DemoT2I", "DemoVQA"):
        rows = [{k: v for k, v in r.items() if k != "dataset"} for r in PAIRS if r["dataset"] == name]
        write_table(pa.Table.from_pylist(rows), join(root, f"train/{name}.{suffix}"), options)
    table, result = read_pairs(join(root, "train"), image_root=root, storage_options=options)
    assert result.input_rows == 3 and not result.quarantine
    got = sorted(table.to_pylist(), key=lambda r: r["dataset"])
    for want, row in zip(sorted(PAIRS, key=lambda r: r["dataset"]), got):
        assert {k: row[k] for k in want} == want
        assert row["query_id"] == item_id(want["query_text"], want["query_image"])
        assert row["pos_id"] == item_id(want["pos_text"], want["pos_image"])


def test_mmeb_train_names_are_read_as_unime_names(tmp_path):
    mmeb = [{"qry": r["query_text"], "qry_image_path": r["query_image"], "pos_text": r["pos_text"],
             "pos_image_path": r["pos_image"]} for r in PAIRS[1:]]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "b.png").write_bytes(png_bytes())
    write_table(pa.Table.from_pylist(mmeb), str(tmp_path / "DemoT2I" / "train-00000.parquet"))
    table, _ = read_pairs(str(tmp_path / "DemoT2I"), image_root=str(tmp_path))
    assert table.column("query_text").to_pylist() == [r["query_text"] for r in PAIRS[1:]]
    assert table.column("dataset").to_pylist() == ["DemoT2I", "DemoT2I"]  # from the folder name


@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "json"])
def test_mined_round_trip(storage, suffix):
    root, options = storage
    path = join(root, f"mined/records.{suffix}")
    write_mined(MINED, path, storage_options=options)
    records, _, result = read_mined(path, image_root=root, storage_options=options)
    assert not result.quarantine and records == MINED


@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "json"])
def test_eval_round_trip(storage, suffix):
    root, options = storage
    write_table(pa.Table.from_pylist(EVAL), join(root, f"eval/ImageNet-1K/test-00000.{suffix}"), options)
    write_table(pa.Table.from_pylist(EVAL), join(root, f"eval/VOC2007/test-00000.{suffix}"), options)
    tables, result = read_eval(join(root, "eval"), subsets=["VOC2007"], image_root=root, storage_options=options)
    assert list(tables) == ["VOC2007"] and result.input_rows == 2
    row = tables["VOC2007"].to_pylist()[0]
    assert {k: row[k] for k in EVAL[0]} == EVAL[0] and row["dataset"] == "VOC2007"
    with pytest.raises(FileNotFoundError, match="MSCOCO"):
        read_eval(join(root, "eval"), subsets=["MSCOCO"], image_root=root, storage_options=options)


def test_same_candidate_in_two_datasets_is_one_id(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    shared = {"query_text": "q1", "pos_text": "a red circle", "pos_image": "a.png"}
    for name in ("SetA", "SetB"):
        write_table(pa.Table.from_pylist([shared | {"query_text": f"query of {name}"}]), str(tmp_path / f"{name}.jsonl"))
    table, _ = read_pairs(str(tmp_path), image_root=str(tmp_path))
    assert len(set(table.column("pos_id").to_pylist())) == 1
    assert len(set(table.column("query_id").to_pylist())) == 2


def test_ids_are_stable_and_separate_text_from_path():
    # Pinned values: ids are stored in run outputs, so they must not change between versions.
    assert item_id("a red circle", "") == item_id("a red circle", None) == "39690ca0848c080f"
    assert item_id("<|image_1|>\nRepresent the given image.\n", "images/b.png") == "84a474116d18121e"
    assert item_id("ab", "c") != item_id("a", "bc")


@pytest.mark.integration
def test_images_load_from_s3(s3_server):
    from unime.data import load_image, resolve_image

    write_bytes("s3://unime-test/lazy/x.png", png_bytes(size=(20, 10)), s3_server)
    uri = resolve_image("lazy/x.png", "s3://unime-test")
    assert uri == "s3://unime-test/lazy/x.png"
    assert load_image(uri, storage_options=s3_server).size == (20, 10)


def test_ray_data_and_ray_train_get_the_native_s3_client_for_s3fs_options(tmp_path, monkeypatch):
    from unime.data.storage import arrow_filesystem

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # else the bucket's region is looked up

    fs, inner = arrow_filesystem("s3://bucket/run/train_embedder/ray",
                                 {"endpoint_url": "http://127.0.0.1:9000", "key": "k", "secret": "s",
                                  "client_kwargs": {"region_name": "eu-west-1"}})
    assert fs.type_name == "s3" and inner == "bucket/run/train_embedder/ray"
    assert fs.region == "eu-west-1"
    assert arrow_filesystem("s3://bucket/x")[0].type_name == "s3"  # the default credential chain
    # an s3fs option without a native equivalent keeps the fsspec filesystem, wrapped
    assert arrow_filesystem("s3://bucket/x", {"config_kwargs": {"max_pool_connections": 4}})[0].type_name.startswith("py::fsspec")
    assert arrow_filesystem(str(tmp_path))[0].type_name == "local"
