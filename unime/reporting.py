"""The run report: charts and one self-contained HTML page (pure functions, no I/O).

:mod:`unime.pipeline.report` gathers a run's manifests and outputs and calls these.
Images are embedded as data URIs so the HTML file can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import numpy as np


def new_figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def score_histogram_png(positive: dict, pool: dict) -> bytes:
    """Judge P(Yes) of positives vs. pool candidates; ``{edges, counts}`` as mine writes them."""
    fig, ax = new_figure(7, 3.2)
    edges = np.asarray(positive["edges"])
    width = np.diff(edges) / 2  # side by side, so a bin both share shows both
    for offset, (hist, label) in enumerate(((positive, "positives"), (pool, "pool candidates"))):
        counts = np.asarray(hist["counts"], dtype=float)
        ax.bar(edges[:-1] + offset * width, counts / max(1.0, counts.sum()), width=width, align="edge", label=label)
    ax.set_xlabel("judge score P(Yes)")
    ax.set_ylabel("fraction of pairs")
    ax.legend()
    return figure_png(fig)


def loss_curves_png(curves: dict[str, list[float]]) -> bytes:
    fig, axes = new_figure(4 * max(1, len(curves)), 3)
    for ax, (name, losses) in zip(np.atleast_1d(axes), curves.items()):
        ax.plot(np.arange(1, len(losses) + 1), losses)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
    return figure_png(fig)


def thumbnail_png(image, size: int = 96) -> bytes:
    image = image.copy()
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@dataclass
class Section:
    id: str
    title: str
    body: str  # HTML


def table(header: list[str], rows: list[list], numeric_format: str = "{:.4g}") -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return numeric_format.format(value)
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(png: bytes, alt: str) -> str:
    return f'<img class="figure" alt="{html.escape(alt)}" src="{data_uri(png)}">'


def gallery_card(item: dict) -> str:
    """``item``: ``{text, thumbnail (PNG bytes or None), score (or None), role}``."""
    image = f'<img alt="" src="{data_uri(item["thumbnail"])}">' if item.get("thumbnail") else ""
    score = f'<div class="score">{item["score"]:.3f}</div>' if item.get("score") is not None else ""
    return (f'<div class="card {item["role"]}"><div class="role">{item["role"]}</div>{image}'
            f'<div class="text">{html.escape(item["text"] or "")}</div>{score}</div>')


def gallery(examples: list[list[dict]]) -> str:
    """One row per query: the query, its positive, then its hard negatives (with judge scores)."""
    return "".join('<div class="example">' + "".join(gallery_card(c) for c in row) + "</div>" for row in examples)


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}section{margin-bottom:2.5em}.figure{max-width:100%}
.example{display:flex;gap:.5em;margin:.6em 0;overflow-x:auto}.card{border:1px solid #ddd;padding:.3em;width:120px;
font-size:.8em;flex:none}.card.query{background:#eef}.card.positive{background:#efe}.card.negative{background:#fee}
.role{font-weight:bold}.score{font-family:monospace}.muted{color:#777}
"""


def render_html(title: str, sections: list[Section], subtitle: str = "") -> str:
    nav = " · ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='muted'>{html.escape(subtitle)}</p><nav>{nav}</nav>{body}</body></html>")
