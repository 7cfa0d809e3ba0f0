"""Retrieval metrics: average precision and recall@k of one ranking, and their summary.

Plain functions on rankings (sequences of database names or ids, best first). The
protocol is the one of Oxford5k / Paris6k / Holidays / revisited Oxford and Paris:

- entries of `ignore` (the query itself, "junk" images) are removed from the ranking
  before anything is counted; a positive that is also ignored is ignored;
- AP is averaged over *all* positives: a positive that never appears in the ranking
  (a truncated top-k, an image that could not be indexed) contributes precision 0;
- a query without positives has no defined AP or recall (NaN) and is left out of the
  means, as the revisited Oxford/Paris evaluation does for its Hard protocol.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("mAP",) + tuple(f"recall@{k}" for k in RECALL_KS)


def _positive_ranks(ranked_ids: Iterable[Hashable], positives: Iterable[Hashable],
                    ignore: Iterable[Hashable]) -> tuple[np.ndarray, int]:
    """0-based ranks of the positives in the ranking with `ignore` removed, and the positive count.

    returns (ranks: P' int64 ascending, P' ≤ number of positives; number of positives)
    """
    ignore = set(ignore)
    positives = set(positives) - ignore
    ranks = []
    rank = 0
    for entry in ranked_ids:
        if entry in ignore:
            continue
        if entry in positives:
            ranks.append(rank)
        rank += 1
    return np.asarray(ranks, np.int64), len(positives)


def average_precision(ranked_ids: Iterable[Hashable], positives: Iterable[Hashable],
                      ignore: Iterable[Hashable] = (), interpolation: str = "step") -> float:
    """Average precision of one ranking (NaN when there are no positives).

    interpolation:
      "step"       the area under the step precision-recall curve (the usual
                   non-interpolated AP, as in TREC and scikit-learn):
                   AP = (1/P) * sum over retrieved positives of precision at their rank,
                   i.e. hits-so-far / rank.
      "trapezoid"  the Oxford `compute_ap.cpp` / revisited `compute_ap` rule: each
                   positive adds (1/P) * (precision just before it + precision at it) / 2,
                   with precision 1 before the first rank. Use it to reproduce published
                   Oxford5k, Paris6k, ROxford and RParis numbers.
    Both divide by P, the number of positives, so missed positives count as 0.
    """
    if interpolation not in ("step", "trapezoid"):
        raise ValueError(f"interpolation must be 'step' or 'trapezoid', got {interpolation!r}")
    ranks, count = _positive_ranks(ranked_ids, positives, ignore)
    if count == 0:
        return math.nan
    hits = np.arange(1, len(ranks) + 1, dtype=np.float64)  # positives found up to and including each
    precision_at = hits / (ranks + 1)
    if interpolation == "step":
        return float(precision_at.sum() / count)
    precision_before = np.where(ranks == 0, 1.0, (hits - 1) / np.maximum(ranks, 1))
    return float(((precision_before + precision_at) / 2).sum() / count)


def recall_at_k(ranked_ids: Iterable[Hashable], positives: Iterable[Hashable],
                ignore: Iterable[Hashable] = (), k: int = 1) -> float:
    """1.0 if a positive is among the first k entries once `ignore` is removed, else 0.0 (NaN without positives)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ranks, count = _positive_ranks(ranked_ids, positives, ignore)
    if count == 0:
        return math.nan
    return float(len(ranks) > 0 and ranks[0] < k)


def score_query(query: str, ranked_ids: Sequence[Hashable], positives: Iterable[Hashable],
                ignore: Iterable[Hashable] = (), interpolation: str = "step") -> dict[str, Any]:
    """Every metric of one query: {"query", "ap", "recall@1", "recall@5", "recall@10"} (the input of `summarize`)."""
    positives, ignore = set(positives), set(ignore)
    scores: dict[str, Any] = {"query": query,
                              "ap": average_precision(ranked_ids, positives, ignore, interpolation)}
    for k in RECALL_KS:
        scores[f"recall@{k}"] = recall_at_k(ranked_ids, positives, ignore, k)
    return scores


def query_group(name: str) -> str | None:
    """The group of a query: its file name up to the first '_' (`crop_0012.jpg` -> `crop`), or None."""
    base = PurePath(name).name
    return base.split("_", 1)[0] if "_" in base else None


def _means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [row for row in rows if not math.isnan(row["ap"])]
    out: dict[str, Any] = {"queries": len(scored)}
    out["mAP"] = float(np.mean([row["ap"] for row in scored])) if scored else math.nan
    for k in RECALL_KS:
        key = f"recall@{k}"
        out[key] = float(np.mean([row[key] for row in scored])) if scored else math.nan
    return out


def summarize(per_query: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean metrics overall and per query group.

    per_query: dicts as made by `score_query` ("query", "ap", "recall@1", "recall@5",
    "recall@10"). Queries whose AP is NaN (no positives) are left out of every mean;
    "queries" counts the ones that were scored and "unscored" the ones left out.
    Groups come from `query_group`; queries without a group appear only overall, and
    "groups" is empty unless the names form at least two groups.
    returns {"queries", "unscored", "mAP", "recall@1", "recall@5", "recall@10",
             "groups": {group: {"queries", "mAP", "recall@1", "recall@5", "recall@10"}}}
    """
    summary = _means(per_query)
    summary["unscored"] = len(per_query) - summary["queries"]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in per_query:
        group = query_group(row["query"])
        if group is not None:
            grouped.setdefault(group, []).append(row)
    summary["groups"] = {group: _means(rows) for group, rows in sorted(grouped.items())} if len(grouped) > 1 else {}
    return summary
