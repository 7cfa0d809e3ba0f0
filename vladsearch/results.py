"""Search results: small dataclasses and their JSON / CSV / table renderings."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Match:
    """One database image returned for a query.

    image: path relative to the folder the index was built from; score: higher is
    more similar — the cosine similarity of VLAD vectors, or after reranking, for
    verified matches, inliers + that similarity (so verified matches always rank
    first, by inliers, ties broken by VLAD). inliers: geometrically consistent feature
    matches; verified: inliers reached the threshold; vlad_score: the plain similarity.
    """

    image: str
    score: float
    id: int = -1
    inliers: int | None = None
    verified: bool | None = None
    vlad_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "score": round(float(self.score), 6)}
        if self.inliers is not None:
            out["inliers"] = int(self.inliers)
            out["verified"] = bool(self.verified)
            out["vlad_score"] = round(float(self.vlad_score), 6)
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
