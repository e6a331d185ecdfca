"""The method experiment's outputs: the P@1 table (mean ± std over seeds), the judges' table,
one plot, and a self-contained HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unime.demo.corpus import eval_groups
from unime.eval.mmeb import aggregate
from unime.reporting import Section, figure, figure_png, new_figure, render_html, table

ARM_LABELS = {
    "infonce": "(i) InfoNCE, in-batch negatives",
    "infonce_hard": "(ii) InfoNCE + retrieved hard negatives, no judge",
    "unime": "(iii) UniME-V2: judge-filtered negatives + soft-label KL",
    "unime_inbatch": "(iii) + InfoNCE with in-batch negatives",
    "unime_label": "(iii) with the label judge (upper bound)",
    "unime_label_inbatch": "(iii) label judge + InfoNCE with in-batch negatives",
    "unime_rerank": "(iv) (iii)'s embedder + the trained reranker on its top-k",
}
SUMMARY_COLUMNS = ["IND", "OOD", "Overall"]


def seed_scores(per_subset: dict[str, float]) -> dict[str, float]:
    """One seed's subsets plus the IND / OOD / Overall means (novel subsets are OOD)."""
    groups = eval_groups(novel=any(name.endswith("Novel") for name in per_subset))
    means = aggregate(per_subset, groups)["scores"]
    return per_subset | {column: means[column] for column in SUMMARY_COLUMNS if means[column] is not None}


def arm_statistics(results: dict) -> dict[str, dict[str, tuple[float, float, int]]]:
    """arm -> column -> (mean, sample std, seeds) over the seeds (arms that trained)."""
    stats = {}
    for arm, by_seed in results["arms"].items():
        rows = [seed_scores(value["p_at_1"]) for value in by_seed.values() if "p_at_1" in value]
        if not rows:
            continue
        columns = list(rows[0])
        stats[arm] = {c: (float(np.mean([r[c] for r in rows])),
                          float(np.std([r[c] for r in rows], ddof=1)) if len(rows) > 1 else 0.0, len(rows))
                      for c in columns}
    return stats


def not_trained(results: dict) -> dict[str, str]:
    """arm -> why it could not train (e.g. its judge mined no record)."""
    return {arm: value["not_trained"] for arm, by_seed in results["arms"].items()
            for value in list(by_seed.values())[:1] if "not_trained" in value}


def _cell(stat: tuple[float, float, int]) -> str:
    mean, std, seeds = stat
    return f"{mean:.1f} ± {std:.1f}" if seeds > 1 else f"{mean:.1f}"


def _arms_in_order(stats: dict) -> list[str]:
    return [arm for arm in ARM_LABELS if arm in stats]


def p_at_1_markdown(stats: dict, untrained: dict[str, str] | None = None) -> str:
    arms = _arms_in_order(stats)
    subsets = [c for c in stats[arms[0]] if c not in SUMMARY_COLUMNS]
    columns = subsets + [c for c in SUMMARY_COLUMNS if c in stats[arms[0]]]
    lines = ["| arm | " + " | ".join(c.removeprefix("Demo") for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for arm in ARM_LABELS:
        if arm in stats:
            lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(_cell(stats[arm][c]) for c in columns) + " |")
        elif arm in (untrained or {}):
            lines.append(f"| {ARM_LABELS[arm]} | not trained: {untrained[arm]} |" + " |" * (len(columns) - 1))
    return "\n".join(lines)


def per_seed_markdown(results: dict) -> str:
    """Each trained arm's Overall P@1 seed by seed."""
    seeds = list(results["config"]["seeds"])
    lines = ["| arm | " + " | ".join(f"seed {seed}" for seed in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for arm in ARM_LABELS:
        by_seed = {str(seed): value for seed, value in results["arms"].get(arm, {}).items()}
        if all("p_at_1" in by_seed.get(str(seed), {}) for seed in seeds):
            cells = [f"{seed_scores(by_seed[str(seed)]['p_at_1'])['Overall']:.1f}" for seed in seeds]
            lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def judges_markdown(judges: dict) -> str:
    lines = ["| judge | AUC, held-out eval pairs (OOD subsets only) | AUC, training pools | FN filter precision | FN filter recall "
             "| filtered / true FN in pools | P(Yes) range in pools | records mined |", "|---|---|---|---|---|---|---|---|"]
    names = {"trained": "MLLM judge trained on the training split", "label": "label judge (ground truth)"}
    for name, judge in judges.items():
        f = judge["filter"]
        ood = judge.get("held_out_auc_ood")
        auc = _fmt(judge["held_out_auc"]) + ("" if ood is None else f" ({_fmt(ood)})")
        lines.append(f"| {names.get(name, name)} | {auc} | {_fmt(f['pool_auc'])} "
                     f"| {_fmt(f['precision'])} | {_fmt(f['recall'])} | {f['filtered']} / {f['false_negatives']} "
                     f"| {_range(f.get('score_range'))} | {judge['records']} ({judge['skipped']} skipped) |")
    return "\n".join(lines)


def _range(bounds) -> str:
    return "-" if not bounds else f"{bounds[0]:.4f} to {bounds[1]:.4f}"


def plot_png(stats: dict) -> bytes:
    arms = _arms_in_order(stats)
    columns = [c for c in SUMMARY_COLUMNS if c in stats[arms[0]]]
    fig, ax = new_figure(10, 3.6)
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        means = [stats[arm][c][0] for c in columns]
        stds = [stats[arm][c][1] for c in columns]
        ax.bar(np.arange(len(columns)) + (k - (len(arms) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               label=ARM_LABELS[arm])
    ax.set_xticks(np.arange(len(columns)), columns)
    ax.set_ylabel("Precision@1 (%)")
    seeds = stats[arms[0]][columns[0]][2]
    ax.set_title(f"Demo corpus, mean ± std over {seeds} seed(s)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure_png(fig)


def write(results: dict, out_dir: Path, command: str) -> dict[str, Path]:
    """``results.json``, ``table.md``, ``method_effect.png`` and ``report.html`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = arm_statistics(results)
    png = plot_png(stats)
    minutes = results.get("total_seconds", 0) / 60
    rows = ", ".join(f"{name.removeprefix('Demo')} {count}" for name, count in results["eval_rows"].items())
    markdown = (f"Command: `{command}` ({minutes:.0f} min on this machine)\n\n"
                f"{results['train_pairs']} training pairs; eval rows: {rows}.\n\n"
                f"Precision@1 (%) per eval subset, mean ± std over seeds {list(results['config']['seeds'])}:\n\n"
                f"{p_at_1_markdown(stats, not_trained(results))}\n\nOverall P@1 seed by seed:\n\n"
                f"{per_seed_markdown(results)}\n\nJudges against the ground truth:\n\n"
                f"{judges_markdown(results['judges'])}\n")
    paths = {"results": out_dir / "results.json", "table": out_dir / "table.md", "plot": out_dir / "method_effect.png",
             "html": out_dir / "report.html"}
    paths["results"].write_text(json.dumps(results | {"statistics": stats}, indent=1, default=str) + "\n")
    paths["table"].write_text(markdown)
    paths["plot"].write_bytes(png)
    html_table = _html_table(stats, not_trained(results))
    sections = [Section("arms", "P@1 by arm", html_table + figure(png, "P@1 by arm")),
                Section("judges", "Judges", _judges_html(results["judges"])),
                Section("phases", "Phases", table(["phase", "seconds"], [[k, v] for k, v in results.get("seconds", {}).items()],
                                        "{:.0f}"))]
    paths["html"].write_text(render_html("unime: method effect", sections, subtitle=command))
    return paths


def _html_table(stats: dict, untrained: dict[str, str]) -> str:
    arms = _arms_in_order(stats)
    columns = list(stats[arms[0]])
    rows = [[ARM_LABELS[arm], *(_cell(stats[arm][c]) for c in columns)] for arm in arms]
    rows += [[ARM_LABELS[arm], f"not trained: {reason}", *[""] * (len(columns) - 1)]
             for arm, reason in untrained.items()]
    return table(["arm", *columns], rows)


def _judges_html(judges: dict) -> str:
    rows = [[name, judge["held_out_auc"], judge["filter"]["pool_auc"], judge["filter"]["precision"],
             judge["filter"]["recall"], judge["filter"]["filtered"], judge["filter"]["false_negatives"],
             judge["records"]] for name, judge in judges.items()]
    return table(["judge", "AUC held-out", "AUC pools", "FN precision", "FN recall", "filtered", "true FN", "records"],
                 rows, "{:.3f}")
