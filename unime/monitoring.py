"""Application metrics through ``ray.util.metrics``.

Every process (driver, Ray Data actor, Train worker, Serve replica) records into the
metrics agent of its node; they appear in the Ray dashboard's Metrics view and on each
node's Prometheus endpoint (``ray start --metrics-export-port``) with a ``ray_`` prefix,
e.g. ``ray_unime_judge_pairs_total``. ``cluster/monitoring/grafana_dashboard.json`` plots
them. Ray exports a gauge only while its process keeps setting it (live values such as the
training loss); totals are counters, which persist. Outside a Ray worker or driver, :func:`record` does nothing: the pure functions and
the plain (non-Ray) tests stay free of Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

LATENCY_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # "counter" | "gauge" | "histogram"
    description: str
    tag_keys: tuple[str, ...] = ()


METRICS: dict[str, MetricSpec] = {
    "unime_stage_rows_total": MetricSpec("counter", "Rows a stage read, wrote, quarantined or skipped (its "
                                         "manifest's counts), added each time the stage runs", ("stage", "count")),
    "unime_stage_seconds_total": MetricSpec("counter", "Wall-clock seconds spent running a stage", ("stage",)),
    "unime_items_embedded_total": MetricSpec("counter", "Items embedded by the embed actors", ("stage",)),
    "unime_judge_pairs_total": MetricSpec("counter", "(query, candidate) pairs scored by the judges"),
    "unime_judge_call_seconds": MetricSpec("histogram", "Seconds per judge engine call (one group of queries)"),
    "unime_train_loss": MetricSpec("gauge", "Training loss of the latest step", ("model",)),
    "unime_train_steps_total": MetricSpec("counter", "Optimiser steps taken", ("model",)),
    "unime_train_examples_per_second": MetricSpec("gauge", "Training examples per second, all workers",
                                                  ("model",)),
    "unime_serve_request_seconds": MetricSpec("histogram", "Serve request latency by route", ("route",)),
}

_instances: dict[str, object] = {}


def _instance(name: str):
    if name not in _instances:
        from ray.util import metrics

        spec = METRICS[name]
        if spec.kind == "counter":
            _instances[name] = metrics.Counter(name, description=spec.description, tag_keys=spec.tag_keys)
        elif spec.kind == "gauge":
            _instances[name] = metrics.Gauge(name, description=spec.description, tag_keys=spec.tag_keys)
        else:
            _instances[name] = metrics.Histogram(name, description=spec.description, tag_keys=spec.tag_keys,
                                                 boundaries=LATENCY_BOUNDARIES)
    return _instances[name]


def record(name: str, value: float, **tags: str) -> None:
    """Add to a counter, set a gauge or observe a histogram, by the metric's kind."""
    import ray

    if not ray.is_initialized():
        return
    metric = _instance(name)
    tags = {key: str(val) for key, val in tags.items()} or None
    kind = METRICS[name].kind
    if kind == "counter":
        if value > 0:  # Ray's Counter refuses 0; adding nothing needs no call
            metric.inc(value, tags=tags)
    elif kind == "gauge":
        metric.set(value, tags=tags)
    else:
        metric.observe(value, tags=tags)
