"""The index artefact (flat, IVF, HNSW; local and S3) and the index stage on Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from unime.index import IndexSpec, build_faiss_index, load_index, write_index


def clustered(n=600, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_every_kind_finds_each_vector_itself(kind):
    vectors = clustered()
    index = build_faiss_index(vectors, IndexSpec(kind, nlist=8, nprobe=8))
    _, rows = index.search(vectors, 1)
    assert np.mean(rows[:, 0] == np.arange(len(vectors))) > (0.999 if kind == "flat" else 0.95)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def place(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "artifact"), {}
    options = request.getfixturevalue("s3_server")
    return "s3://unime-test/index-artifact", options


def test_artifact_round_trip_and_embedder_check(place, tiny_dir, tmp_path):
    folder, options = place
    vectors = clustered(100)
    records = pa.table({"id": [f"i{k}" for k in range(100)], "text": [f"t{k}" for k in range(100)],
                        "image": [""] * 100})
    manifest = write_index(folder, vectors, records, str(tiny_dir / "embedder"), IndexSpec("hnsw"), options)
    artifact = load_index(folder, options)
    assert artifact.manifest == manifest and artifact.records.equals(records)
    scores, rows = artifact.search(vectors[:3], 5)
    assert rows[:, 0].tolist() == [0, 1, 2] and scores.shape == (3, 5)
    artifact.check_embedder(str(tiny_dir / "embedder"))
    with pytest.raises(ValueError, match="rebuild the index or deploy its embedder"):
        artifact.check_embedder(str(tiny_dir / "judge"))
    with pytest.raises(ValueError, match="3 vectors for 100 records"):
        write_index(str(tmp_path / "bad"), vectors[:3], records, str(tiny_dir / "embedder"))


def test_index_refuses_queries_embedded_with_other_inputs(tiny_dir, tmp_path):
    vectors = clustered(10)
    records = pa.table({"id": [f"i{k}" for k in range(10)], "text": ["t"] * 10, "image": [""] * 10})
    built = {"input_format": "unime-v2", "image_resolution": "high"}
    write_index(str(tmp_path / "a"), vectors, records, str(tiny_dir / "embedder"), IndexSpec("flat"), inputs=built)
    artifact = load_index(str(tmp_path / "a"))
    artifact.check_embedder(str(tiny_dir / "embedder"), dict(built))
    with pytest.raises(ValueError, match="index's models.input_format"):
        artifact.check_embedder(str(tiny_dir / "embedder"), {"input_format": "qwen2-vl-native", "image_resolution": None})


@pytest.mark.integration
def test_index_stage_indexes_the_corpus_positives(ray_cluster, demo_dir, tiny_dir, tmp_path):
    from tests.helpers import mining_config
    from unime.models import Embedder, EmbedItem
    from unime.pipeline import build_index, ingest

    config = mining_config(demo_dir, tiny_dir, tmp_path, "index.faiss.kind=flat")
    ingest.run(config.data, config.run_dir)
    result = build_index.run(config)
    artifact = load_index(build_index.output_path(str(tmp_path)))
    assert artifact.records.num_rows == result["rows"]["items"] == artifact.index.ntotal
    assert len(set(artifact.records["id"].to_pylist())) == artifact.records.num_rows
    artifact.check_embedder(config.models.embedder)
    # a record's own text embeds to its own vector: it is its own nearest neighbour
    embedder = Embedder(config.models.embedder, device="cpu")
    text_rows = [k for k, image in enumerate(artifact.records["image"].to_pylist()) if not image][:5]
    texts = [artifact.records["text"][k].as_py() for k in text_rows]
    _, rows = artifact.search(embedder.encode([EmbedItem(t) for t in texts]), 1)
    assert rows[:, 0].tolist() == text_rows
    assert build_index.run(config)["skipped"]
