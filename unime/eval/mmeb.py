"""MMEB's 36 datasets, their meta-task and IND/OOD groups, aggregation, and the published
numbers (docs/method.md sections 7 and 8)."""

from __future__ import annotations

import math

# meta-task -> (in-distribution datasets, out-of-distribution datasets)
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "Classification": (["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397"],
                       ["Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"]),
    "VQA": (["OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W"],
            ["ScienceQA", "VizWiz", "GQA", "TextVQA"]),
    "Retrieval": (["VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS",
                   "WebQA"], ["FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"]),
    "Grounding": (["MSCOCO"], ["RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"]),
}
META_TASKS = list(GROUPS)
IND = [name for ind, _ in GROUPS.values() for name in ind]
OOD = [name for _, ood in GROUPS.values() for name in ood]
ALL_DATASETS = [name for ind, ood in GROUPS.values() for name in ind + ood]
# The published tables' column order.
COLUMNS = ["Classification", "VQA", "Retrieval", "Grounding", "IND", "OOD", "Overall"]

PUBLISHED = {  # Overall, Classification, VQA, Retrieval, Grounding (percent)
    "UniME-V2 Qwen2-VL-2B": {"Overall": 63.6, "Classification": 62.1, "VQA": 56.3, "Retrieval": 68.0, "Grounding": 72.7},
    "UniME-V2 Qwen2-VL-7B": {"Overall": 68.0, "Classification": 64.0, "VQA": 60.1, "Retrieval": 73.1, "Grounding": 82.8},
    "UniME-V2 LLaVA-OV-7B": {"Overall": 71.2, "Classification": 65.3, "VQA": 67.6, "Retrieval": 72.9, "Grounding": 90.2},
    "VLM2Vec Qwen2-VL-2B": {"Overall": 60.1, "Classification": 59.0, "VQA": 49.4, "Retrieval": 65.4, "Grounding": 73.4},
    "UniME Qwen2-VL-2B": {"Overall": 60.6, "Classification": 59.0, "VQA": 53.4, "Retrieval": 64.9, "Grounding": 69.6},
}


def _members(column: str, groups: dict) -> list[str]:
    if column in groups:
        return groups[column][0] + groups[column][1]
    ind = [name for i, _ in groups.values() for name in i]
    ood = [name for _, o in groups.values() for name in o]
    return {"IND": ind, "OOD": ood, "Overall": ind + ood}[column]


def aggregate(per_dataset_scores: dict[str, float], groups: dict | None = None) -> dict:
    """Unweighted means over each group's datasets (Overall over all 36).

    Missing datasets are reported and never averaged in as zero; a group with some of its
    datasets missing is marked partial (its mean covers the datasets present); a group with
    none present has no value. Names outside MMEB's 36 are reported as ``unknown``.
    ``groups`` replaces MMEB's grouping (e.g. the demo corpus's own subsets).
    """
    groups = groups or GROUPS
    everything = _members("Overall", groups)
    result = {"scores": {}, "partial": {}, "counts": {}}
    for column in COLUMNS:
        members = _members(column, groups)
        present = [per_dataset_scores[name] for name in members if name in per_dataset_scores]
        result["scores"][column] = sum(present) / len(present) if present else None
        result["partial"][column] = 0 < len(present) < len(members)
        result["counts"][column] = f"{len(present)}/{len(members)}"
    result["missing"] = [name for name in everything if name not in per_dataset_scores]
    result["unknown"] = sorted(set(per_dataset_scores) - set(everything))
    return result


def summary_markdown(aggregated: dict, label: str = "this run", published: str | None = None) -> str:
    """The published column order as a markdown table; partial groups marked with '*'."""
    def cell(column):
        value = aggregated["scores"][column]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.1f}{'*' if aggregated['partial'][column] else ''}"

    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS),
             f"| {label} | " + " | ".join(cell(c) for c in COLUMNS) + " |"]
    if published:
        row = PUBLISHED[published]
        lines.append(f"| {published} (published) | " + " | ".join(
            f"{row[c]:.1f}" if c in row else "-" for c in COLUMNS) + " |")
    partial = [f"{c} {aggregated['counts'][c]}" for c in COLUMNS if aggregated["partial"][c]]
    if partial:
        lines.append("\n\\* partial: the group's mean covers only the datasets evaluated (" + ", ".join(partial) + ")")
    return "\n".join(lines)
