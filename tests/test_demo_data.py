"""The demo corpus: deterministic, every MMEB task type, real false negatives, valid layouts."""

from __future__ import annotations

import json

from unime.data import read_eval, read_pairs
from unime.demo import corpus as demo_data
from unime.demo.corpus import ALL_SCENES, DemoCorpusConfig, Scene

SMALL = DemoCorpusConfig(train_images=30, grounding_images=10, eval_queries=6, eval_candidates=6)


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    demo_data.build(tmp_path / "a", SMALL)
    demo_data.build(tmp_path / "b", SMALL)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    demo_data.build(tmp_path / "c", DemoCorpusConfig(**{**SMALL.__dict__, "seed": 1}))
    assert tree_bytes(tmp_path / "a") != tree_bytes(tmp_path / "c")


def test_every_task_type_in_train_and_eval(demo_dir):
    table, result = read_pairs(str(demo_dir / "train"), image_root=str(demo_dir))
    datasets = set(table.column("dataset").to_pylist())
    assert datasets >= {"DemoI2T", "DemoT2I", "DemoShapeCls", "DemoColourCls", "DemoVQA", "DemoGrounding"}
    # the noisy file's broken rows are quarantined, the rest are good
    assert result.input_rows == table.num_rows + len(result.quarantine)
    assert {q["source"].rsplit("/", 1)[-1] for q in result.quarantine} == {"DemoNoisy.jsonl"}
    assert len(result.quarantine) == 6
    tables, eval_result = read_eval(str(demo_dir / "eval"), image_root=str(demo_dir))
    assert set(tables) == datasets - {"DemoNoisy"} and not eval_result.quarantine


def test_eval_positive_is_index_zero_and_unique(demo_dir):
    tables, _ = read_eval(str(demo_dir / "eval"), image_root=str(demo_dir))
    attributes = {r["image"]: json.loads(r["attributes"]) for r in
                  __import__("pyarrow.parquet", fromlist=["x"]).read_table(demo_dir / "attributes.parquet").to_pylist()}
    for row in tables["DemoI2T"].to_pylist():
        scene = Scene(**attributes[row["qry_img_path"]])
        assert row["tgt_text"][0] == scene.caption(2)
        assert scene.caption(2) not in row["tgt_text"][1:]
    for row in tables["DemoT2I"].to_pylist():
        scenes = [Scene(**attributes[p]) for p in row["tgt_img_path"]]
        assert row["qry_text"].endswith(scenes[0].caption(2) + "\n")
        assert all(s.caption(2) != scenes[0].caption(2) for s in scenes[1:])
    for name in ("DemoShapeCls", "DemoColourCls", "DemoVQA"):
        for row in tables[name].to_pylist():
            assert len(set(row["tgt_text"])) == len(row["tgt_text"])


def test_coarse_captions_have_real_false_negatives():
    fits = [s for s in ALL_SCENES if s.caption(0) == "red circles"]
    assert len(fits) > 10  # many different images fit a coarse caption
    assert len({s.caption(2) for s in ALL_SCENES}) == len(ALL_SCENES)  # the finest level is unique
