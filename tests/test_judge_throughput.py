"""bench/judge_throughput.py: its task mix and ideal prefix reuse, and one toy run of every mode."""

from __future__ import annotations

import pytest

from tests.helpers import load_script, restored_environment


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/judge_throughput.py")


def test_task_mix_follows_the_weights(bench):
    assert [bench.TASKS[name][1] for name in bench.task_schedule(2)] == ["text", "image"]
    schedule = bench.task_schedule(20)  # one round: MMEB-train's 13 text- and 7 image-candidate datasets
    assert sum(bench.TASKS[name][1] == "text" for name in schedule) == 13
    assert schedule.count("DemoVQA") == 6 and schedule.count("DemoT2I") == 4 and schedule.count("DemoGrounding") == 3


def test_ideal_reuse_counts_shared_prefixes_and_whole_blocks(bench):
    prompts = [(1, 2, 3, 4, 5), (1, 2, 3, 4, 6), (1, 2, 7)]
    # the 2nd reuses 4 tokens (2 in whole blocks of 2), the 3rd 2 (its last token is always computed)
    assert bench.ideal_reuse(prompts, 2, {}) == (13, 6, 6)
    assert bench.ideal_reuse(prompts, 4, {}) == (13, 6, 4)
    assert bench.common_prefix(prompts[:2]) == 4 and bench.query_shared([prompts[:2]], [0]) == 4


@pytest.mark.integration
def test_one_query_through_every_mode(bench, ray_cluster, capsys):
    with restored_environment():
        assert bench.main(["--sizes", "tiny", "--queries", "1", "--kv-cache-gib", "1"]) == 0
    out = capsys.readouterr().out
    assert "289 tokens" in out  # 1344x1344 squashed, fitted into 300 patches of 28x28: 17 x 17
    tables = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    throughput = {cells[0]: cells for cells in tables if len(cells) == 6}
    prefill = {cells[0]: cells for cells in tables if len(cells) == 9}
    for mode in bench.MODES:  # one VQA query: text candidates only
        assert float(throughput[mode][1]) > 0 and throughput[mode][2] == "-"
    assert int(prefill["vllm-no-prefix"][4]) == 0
    for mode in ("vllm-prefix", "ray-1-actor"):  # the query's shared prefix came from the cache
        assert int(prefill[mode][4]) > 0 and int(prefill[mode][2]) == int(prefill["vllm-no-prefix"][2])
