"""Which metric names a PromQL expression reads, and which series names the product exports.

Shared by the dashboard and alert-rule tests: every expression may name only metrics registered in
``consumers/metrics.py`` (the single source of names), under Prometheus' exposition suffix rules.
A small tokenizer, not a PromQL parser: label matchers, strings, ranges, grouping clauses and Grafana
variables are removed first, then every remaining identifier is a function (followed by ``(``), a
keyword, or a metric name.
"""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram

import kafka_edge.metrics as product_metrics

__all__ = ["PROMQL_FUNCTIONS", "exported_series_names", "metric_names"]

PROMQL_FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "group", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "max", "max_over_time", "min", "min_over_time", "minute", "month", "predict_linear",
    "present_over_time", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort",
    "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar", "stdvar_over_time", "sum", "sum_over_time",
    "time", "timestamp", "topk", "vector", "year",
})
_KEYWORDS = frozenset({
    "and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "inf",
    "nan",
})

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARS = re.compile(r"\$\{?\w+\}?")
_TOKENS = re.compile(r"(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[smhdwy]*)|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names ``expr`` selects. Raises ``ValueError`` on an unknown function (a typo there would
    otherwise hide a metric name)."""
    text = _GRAFANA_VARS.sub(" ", _STRINGS.sub(" ", expr))
    text = _RANGES.sub(" ", _MATCHERS.sub(" ", text))
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _TOKENS.finditer(text):
        name = match.group("id")
        if name is None:
            continue
        if name in _KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            if name not in PROMQL_FUNCTIONS:
                raise ValueError(f"unknown PromQL function {name!r} in {expr!r}")
        else:
            names.add(name)
    return names


def exported_series_names() -> set[str]:
    """Every series name the product's collectors expose: a gauge as is, a counter with ``_total``, a
    histogram as ``_bucket``, ``_count`` and ``_sum`` (its bare name is no series)."""
    out: set[str] = set()
    for attr in product_metrics.__all__:
        metric = getattr(product_metrics, attr)
        (family,) = metric.collect()
        if isinstance(metric, Counter):
            out.add(f"{family.name}_total")
        elif isinstance(metric, Histogram):
            out.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        elif isinstance(metric, Gauge):
            out.add(family.name)
        else:
            raise AssertionError(f"kafka_edge.metrics.{attr}: unexpected collector type {type(metric).__name__}")
    return out
