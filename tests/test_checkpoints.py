"""Checkpoints on S3 are copied to node-local disk once per version and load like local ones."""

from __future__ import annotations

import filecmp
import threading
from pathlib import Path

import numpy as np
import pytest

from unime.models import checkpoints
from unime.models.checkpoints import local_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIME_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def remote_embedder(s3_server, tiny_dir, request):
    import fsspec

    s3 = fsspec.filesystem("s3", **s3_server)
    url = f"s3://unime-test/checkpoints/{request.node.name}/embedder"
    s3.put(str(tiny_dir / "embedder"), url.removeprefix("s3://"), recursive=True)
    return url, s3


def test_hub_ids_and_local_paths_pass_through(tiny_dir, cache):
    assert local_checkpoint("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    assert local_checkpoint(str(tiny_dir / "embedder")) == str(tiny_dir / "embedder")
    assert not cache.exists()


def test_an_s3_checkpoint_is_copied_once_per_version(remote_embedder, s3_server, tiny_dir, cache, monkeypatch):
    url, s3 = remote_embedder
    local = Path(local_checkpoint(url, s3_server))
    assert local.parent == cache
    source = tiny_dir / "embedder"
    assert sorted(p.name for p in source.iterdir()) == sorted(p.name for p in local.iterdir() if p.name[0] != ".")
    assert all(filecmp.cmp(p, local / p.name, shallow=False) for p in source.iterdir() if p.is_file())

    downloads = []
    monkeypatch.setattr(checkpoints, "_download", lambda *a: downloads.append(a))
    assert local_checkpoint(url, s3_server) == str(local) and downloads == []  # cached: no second copy
    monkeypatch.undo()

    s3.pipe(f"{url.removeprefix('s3://')}/config.json", s3.cat(f"{url.removeprefix('s3://')}/config.json") + b"\n")
    changed = local_checkpoint(url, s3_server)
    assert changed != str(local) and (Path(changed) / "config.json").read_bytes().endswith(b"\n")


def test_concurrent_loaders_share_one_download(remote_embedder, s3_server, cache, monkeypatch):
    url, _ = remote_embedder
    calls, original = [], checkpoints._download

    def counted(*args):
        calls.append(args)
        original(*args)

    monkeypatch.setattr(checkpoints, "_download", counted)
    results = []
    threads = [threading.Thread(target=lambda: results.append(local_checkpoint(url, s3_server))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(calls) == 1


def test_models_load_from_s3_and_embed_like_the_local_copy(remote_embedder, s3_server, tiny_dir, cache):
    from unime.index.artifact import checkpoint_fingerprint
    from unime.models import Embedder, EmbedItem

    url, _ = remote_embedder
    items = [EmbedItem("two red circles"), EmbedItem("a blue square")]
    remote = Embedder(url, device="cpu", storage_options=s3_server).encode(items)
    here = Embedder(str(tiny_dir / "embedder"), device="cpu").encode(items)
    np.testing.assert_array_equal(remote, here)
    assert checkpoint_fingerprint(url, s3_server) == checkpoint_fingerprint(str(tiny_dir / "embedder"))


def test_a_missing_checkpoint_names_its_url(s3_server, cache):
    with pytest.raises(FileNotFoundError, match="s3://unime-test/nothing-here"):
        local_checkpoint("s3://unime-test/nothing-here", s3_server)


def test_a_checkpoint_rebuilt_in_place_reruns_the_stages_that_read_it(tiny_dir, tmp_path):
    """Stage fingerprints record each model's version (its files' listing), not only its path:
    the same files keep every fingerprint, a rewritten weights file changes those of the
    stages reading that model and no other."""
    import shutil

    from tests.helpers import mining_config
    from unime.pipeline.runner import STAGES

    judge = tmp_path / "judge"
    shutil.copytree(tiny_dir / "judge", judge)
    config = mining_config(tmp_path, tiny_dir, tmp_path / "run", f"models.judge={judge}")
    before = {name: STAGES[name].fingerprint(config) for name in ("embed", "judge")}
    assert {name: STAGES[name].fingerprint(config) for name in before} == before
    weights = next(judge.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")  # rebuilt: same path, other bytes
    after = {name: STAGES[name].fingerprint(config) for name in before}
    assert after["judge"] != before["judge"]
    assert after["embed"]["version"] == before["embed"]["version"]
    assert checkpoints.checkpoint_version("Qwen/Qwen2-VL-2B-Instruct") == "hub:Qwen/Qwen2-VL-2B-Instruct"


def test_an_eval_set_rewritten_in_place_reruns_the_evaluation(demo_dir, tiny_dir, tmp_path):
    """The evaluate fingerprint lists the eval files (names, sizes, times), not only their
    folder's path: the same files keep it, one file rewritten changes it."""
    import shutil

    import pyarrow.parquet as pq

    from tests.helpers import mining_config
    from unime.pipeline.runner import STAGES

    eval_dir = tmp_path / "eval"
    shutil.copytree(demo_dir / "eval", eval_dir)
    config = mining_config(demo_dir, tiny_dir, tmp_path / "run", f"data.eval_dir={eval_dir}")
    before = STAGES["evaluate"].fingerprint(config)
    assert STAGES["evaluate"].fingerprint(config) == before
    table = next(path for path in sorted(eval_dir.rglob("*.parquet")))
    pq.write_table(pq.read_table(table).slice(1), table)  # one row fewer, same path
    assert STAGES["evaluate"].fingerprint(config)["data_versions"] != before["data_versions"]
    with pytest.raises(FileNotFoundError, match="evaluation data: no files under"):
        STAGES["evaluate"].fingerprint(mining_config(demo_dir, tiny_dir, tmp_path / "run",
                                                     f"data.eval_dir={tmp_path / 'absent'}"))


def test_an_eval_image_rewritten_in_place_reruns_the_evaluation(demo_dir, tiny_dir, tmp_path):
    """The evaluate fingerprint versions the images the eval files name: one named image
    rewritten changes it, an image no eval row names does not."""
    import shutil

    import pyarrow.parquet as pq

    from tests.helpers import mining_config
    from unime.pipeline.runner import STAGES

    root = tmp_path / "corpus"
    shutil.copytree(demo_dir, root)
    config = mining_config(root, tiny_dir, tmp_path / "run", f"data.eval_dir={root}/eval",
                           f"data.global_eval={root}/eval_global")
    before = STAGES["evaluate"].fingerprint(config)["image_versions"]
    named = set()  # every value of every image column of the eval files, read here with pyarrow
    for file in [*(root / "eval").rglob("*.parquet"), *(root / "eval_global").rglob("*.parquet")]:
        table = pq.read_table(file)
        for column in (name for name in table.column_names if "img" in name or "image" in name):
            for value in table.column(column).to_pylist():
                named.update(value if isinstance(value, list) else [value])
    named.discard("")
    unnamed = next(path for path in sorted(root.rglob("*.png")) if str(path.relative_to(root)) not in named)
    unnamed.write_bytes(unnamed.read_bytes() + b"\0")
    assert STAGES["evaluate"].fingerprint(config)["image_versions"] == before
    image = root / sorted(named)[0]
    image.write_bytes(image.read_bytes() + b"\0")
    assert STAGES["evaluate"].fingerprint(config)["image_versions"] != before


@pytest.mark.integration
def test_files_on_s3_are_versioned_by_their_listing(s3_server):
    import fsspec

    from unime.data.storage import files_version

    s3 = fsspec.filesystem("s3", **s3_server)
    paths = [f"s3://unime-test/versioned/{name}" for name in ("a.png", "b.png")]
    for path in paths:
        s3.pipe(path, b"first")
    before = files_version(paths, s3_server)
    assert files_version(paths + paths[:1], s3_server) == before  # a path named twice counts once
    s3.pipe(paths[1], b"second, longer")
    s3.invalidate_cache()
    after = files_version(paths, s3_server)
    assert after != before
    assert files_version([*paths, "s3://unime-test/versioned/gone.png"], s3_server) != after
