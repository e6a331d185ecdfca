"""The scale-on-paper arithmetic (bench/scale_on_paper.py) on fixed measurements."""

from __future__ import annotations

import pytest

from tests.helpers import load_script

MEASURED = {"matmul_peak": 200e9, "judge": {"flop_rate": 100e9, "params": 88e6, "pairs_per_s": 9.0,
                                            "tokens_per_pair": 120, "text_tokens_per_pair": 100,
                                            "images_per_pair": 1.0},
            "train": {"flop_rate": 40e9}, "faiss_flop_rate": 200e9, "score_row_bytes": 28.0}


def rows(lines: list[str]) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ") and
            line[2].isdigit()]


def test_hours_follow_nodes_and_efficiency():
    bench = load_script("bench/scale_on_paper.py")
    nodes = [(1, 1), (4, 2)]
    table = rows(bench.plan(MEASURED, 1_000_000, 51, nodes, cpu_node_cores=2))
    half = rows(bench.plan(MEASURED, 1_000_000, 51, nodes, cpu_node_cores=2, mfu_scale=0.5))
    judge_1, judge_4 = float(table[0][2]), float(table[1][2])
    assert judge_1 == pytest.approx(4 * judge_4, rel=1e-2)
    assert float(table[0][5]) == pytest.approx(2 * float(table[1][5]), rel=1e-2)  # train hours over train nodes
    assert float(half[0][2]) == pytest.approx(2 * judge_1, rel=1e-2)
    # 51M pairs x (100 text + 300 image tokens) x 2 x 8.3B FLOPs at 50% MFU of 989 TFLOP/s
    expected = 51e6 * 400 * 2 * 8.3e9 / (0.5 * 989e12) / 3600
    assert judge_1 == pytest.approx(expected, rel=1e-2)
    assert table[0][-1] == "judge"
    reused = rows(bench.plan(MEASURED, 1_000_000, 51, nodes, cpu_node_cores=2, prefix_reuse=0.75))
    assert float(reused[0][2]) == pytest.approx(judge_1 / 4, rel=1e-2)  # a quarter of the tokens computed
