"""What a run on the demo corpus must show to be believed, checked against its ground truth.

The demo corpus records what every image shows (``attributes.parquet``), so each step of the
method can be scored rather than trusted: the judge's AUC, the false-negative filter's
precision and recall against the pools' base rate, the share of pairs mined, Precision@1 of
the off-the-shelf embedder, the fine-tuned one and the reranker, and whether the example
search's top results truly answer its query. :func:`demo_checks` reads the run dir (any
stage that did not run leaves its checks out); the report stage writes them to
``report/demo_checks.json`` and the pipeline job prints :func:`checks_markdown`.
"""

from __future__ import annotations

from dataclasses import dataclass

from unime.config import PipelineConfig
from unime.data.storage import exists, join, read_json

JUDGE_AUC = 0.85
FILTER_LIFT = 3.0  # filter precision over the pools' base rate of true false negatives
FILTER_RECALL = 0.6
MINED_SHARE = 0.9
FINE_TUNED_P1 = 60.0
FINE_TUNING_GAIN = 5.0  # P@1 points over the off-the-shelf embedder
SEARCH_TOP = 3


@dataclass
class Check:
    name: str
    measured: str
    bar: str
    passed: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "measured": self.measured, "bar": self.bar, "passed": bool(self.passed)}


def has_ground_truth(config: PipelineConfig) -> bool:
    """Whether the corpus records what its images show (the demo corpus's attributes)."""
    return bool(config.data.image_root) and exists(join(config.data.image_root, "attributes.parquet"),
                                                   config.data.storage_options)


def demo_checks(config: PipelineConfig, filter_truth: dict | None = None,
                gallery: list[dict] | None = None) -> list[Check] | None:
    """Every check the run dir has the outputs for; None when the corpus has no ground truth.
    ``filter_truth``: :func:`filter_truth` of the run; ``gallery``: the mined records the
    report's gallery shows, cut to the negatives shown (None: no mined records)."""
    if not has_ground_truth(config):
        return None
    return (judge_checks(config) + mining_checks(config, filter_truth) + gallery_checks(gallery)
            + evaluation_checks(config) + search_checks(config))


def judge_checks(config: PipelineConfig) -> list[Check]:
    from unime.demo.models import SCORES

    card = read_json(join(config.models.judge, SCORES), config.data.storage_options)
    if not card or "auc" not in card:
        return []
    auc = card["auc"]["held_out"]
    return [Check("judge AUC vs ground truth, held-out eval pairs", f"{auc:.3f} ({card['auc']['pairs']} pairs)",
                  f">= {JUDGE_AUC}", auc >= JUDGE_AUC)]


def mining_checks(config: PipelineConfig, truth: dict | None) -> list[Check]:
    from unime.pipeline import mine

    summary = read_json(mine.output_paths(config.run_dir)["summary"], config.data.storage_options)
    if summary is None:
        return []
    checks = []
    if truth:
        lift = truth["precision"] / truth["base_rate"] if truth["base_rate"] else float("nan")
        checks.append(Check(
            "false-negative filter vs ground truth",
            f"precision {truth['precision']:.3f} = {lift:.1f}x the base rate {truth['base_rate']:.3f}, "
            f"recall {truth['recall']:.3f} ({truth['caught']} of {truth['false_negatives']} caught; "
            f"pool AUC {truth['pool_auc'] or float('nan'):.3f})",
            f"precision >= {FILTER_LIFT}x base rate at recall >= {FILTER_RECALL}",
            lift >= FILTER_LIFT and truth["recall"] >= FILTER_RECALL))
    share = summary["records_out"] / max(1, summary["pairs_in"])
    checks.append(Check("records mined", f"{summary['records_out']} of {summary['pairs_in']} pairs ({share:.1%})",
                        f">= {MINED_SHARE:.0%} of the pairs", share >= MINED_SHARE))
    return checks


def gallery_checks(records: list[dict] | None) -> list[Check]:
    """The report's gallery: each query shown with distinct hard negatives (a judge that
    scores everything alike leaves one candidate repeated as every negative)."""
    if records is None:
        return []
    shown = [[tuple(n) for n in record["hard_negatives"]] for record in records]
    distinct = [len(set(negatives)) for negatives in shown]
    return [Check("report gallery: distinct hard negatives per query",
                  f"{distinct} distinct of {[len(n) for n in shown]} shown", "all distinct",
                  bool(shown) and all(d == len(n) for d, n in zip(distinct, shown)))]


def filter_truth(config: PipelineConfig) -> dict | None:
    """The filter's precision and recall against the corpus's ground truth, where the corpus
    records it (the demo corpus's ``attributes.parquet`` under ``data.image_root``)."""
    import numpy as np

    from unime.demo.truth import DemoTruth, filter_quality, pool_truth, roc_auc
    from unime.mining import pool_filter_flags, score_lookup
    from unime.pipeline import embed, ingest, judge, retrieve
    from unime.pipeline.common import read_parquet_dir

    run_dir, options = config.run_dir, config.data.storage_options
    if not has_ground_truth(config):
        return None
    pools = read_parquet_dir(retrieve.output_path(run_dir), options)
    items = embed.unique_items(read_parquet_dir(ingest.output_paths(run_dir)["pairs"], options))
    truly = np.array([v for row in pool_truth(pools, items, DemoTruth.load(config.data.image_root, options))
                      for v in row], dtype=bool)
    filtered, pool_scores = pool_filter_flags(pools, score_lookup(judge.read_scores(run_dir, options)),
                                              config.mining.beta)
    quality = filter_quality(np.array(filtered), truly)
    both_classes = 0 < truly.sum() < len(truly)
    return quality | {"pool_auc": roc_auc(np.array(pool_scores), truly) if both_classes else None}


def evaluation_checks(config: PipelineConfig) -> list[Check]:
    from unime.pipeline import evaluate

    summary = read_json(evaluate.output_paths(config.run_dir)["summary"], config.data.storage_options)
    if summary is None:
        return []
    fine_tuned = summary["aggregate"]["scores"]["Overall"]
    before = (summary.get("off_the_shelf") or {}).get("aggregate", {}).get("scores", {}).get("Overall")
    measured = f"off-the-shelf {before:.1f} -> fine-tuned {fine_tuned:.1f}" if before is not None else f"{fine_tuned:.1f}"
    for mode, reranked in ((summary.get("reranked") or {}).get("by_mode") or {}).items():
        measured += f"; + rerank ({mode}) {reranked['scores']['Overall']:.1f}"
    passed = fine_tuned >= FINE_TUNED_P1 and before is not None and fine_tuned >= before + FINE_TUNING_GAIN
    return [Check("Overall P@1 on the demo eval", measured,
                  f"fine-tuned >= {FINE_TUNED_P1:.0f} and >= off-the-shelf + {FINE_TUNING_GAIN:.0f}", passed)]


def search_checks(config: PipelineConfig) -> list[Check]:
    from unime.demo.truth import DemoTruth
    from unime.pipeline import deploy

    options = config.data.storage_options
    truth, checks = None, []
    for name, label in (("example_search_retrieval.json", "retrieval only"), ("example_search.json", "reranked")):
        answer = read_json(join(config.run_dir, deploy.STAGE, name), options)
        if answer is None:
            continue
        truth = truth or DemoTruth.load(config.data.image_root, options)
        marks = marked_results(config.serve.example_query, answer["results"][:SEARCH_TOP], truth)
        listed = "; ".join(f"{'right' if right else 'WRONG'}: {shown}" for shown, right in marks)
        checks.append(Check(f"example search top {SEARCH_TOP}, {label}", listed,
                            f"all {SEARCH_TOP} truly answer the query",
                            len(marks) == SEARCH_TOP and all(right for _, right in marks)))
    return checks


def marked_results(query: str, results: list[dict], truth) -> list[tuple[str, bool]]:
    """Each result as shown (its image, else its text) and whether it truly answers ``query``."""
    return [(result["image"] or result["text"], truth.matches(query, "", result["text"], result["image"]))
            for result in results]


def checks_markdown(checks: list[Check]) -> str:
    lines = ["| check | measured | bar | |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.measured} | {c.bar} | {'pass' if c.passed else 'FAIL'} |" for c in checks]
    return "\n".join(lines)
