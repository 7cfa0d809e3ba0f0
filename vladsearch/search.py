"""Search results: small dataclasses and their JSON / CSV / table renderings."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Match:
    """One database image returned for a query.

    image: path relative to the folder the index was built from; score: cosine
    similarity of VLAD vectors (higher is more similar). After reranking, inliers is
    the number of geometrically consistent feature matches and verified says whether
    it reached the verification threshold.
    """

    image: str
    score: float
    id: int = -1
    inliers: int | None = None
    verified: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "score": round(float(self.score), 6)}
        if self.inliers is not None:
            out["inliers"] = int(self.inliers)
            out["verified"] = bool(self.verified)
        return out


@dataclass
class SearchResult:
    """The ranked matches of one query (best first); error is set when the query failed."""

    query: str
    matches: list[Match] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "matches": [m.to_dict() for m in self.matches]}
        if self.error is not None:
            out["error"] = self.error
        return out


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop faiss's -1 padding from one row of (D, I)."""
    keep = ids >= 0
    return scores[keep][:k], ids[keep][:k]


def results_to_json(results: list[SearchResult]) -> str:
    return json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False)


def results_to_csv(results: list[SearchResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["query", "rank", "image", "score", "inliers", "verified", "error"])
    for result in results:
        if result.error:
            writer.writerow([result.query, "", "", "", "", "", result.error])
        for rank, match in enumerate(result.matches, 1):
            writer.writerow([result.query, rank, match.image, f"{match.score:.6f}",
                             "" if match.inliers is None else match.inliers,
                             "" if match.verified is None else match.verified, ""])
    return buffer.getvalue()


def results_to_table(results: list[SearchResult]) -> str:
    lines = []
    for result in results:
        lines.append(f"{result.query}")
        if result.error:
            lines.append(f"  error: {result.error}")
            continue
        if not result.matches:
            lines.append("  (no match)")
        for rank, match in enumerate(result.matches, 1):
            extra = ""
            if match.inliers is not None:
                extra = f"  inliers {match.inliers:4d}{'  verified' if match.verified else ''}"
            lines.append(f"  {rank:3d}. {match.score:7.4f}{extra}  {match.image}")
    return "\n".join(lines)
