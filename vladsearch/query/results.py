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

    image: path relative to the folder the index was built from; score: the cosine
    similarity of the VLAD vectors (of the mirrored query's, for a candidate only the mirror
    found); the list's order is the answer's, not the score's. After verification:
    verdict: "identical", "copy", "same scene" (vladsearch.query.verification) or None (not
    confirmed); verified: whether it was confirmed; confidence: the precision measured at
    that verdict and inlier count; inliers: geometrically consistent feature matches;
    vlad_score: the plain similarity; mirrored: confirmed with the query mirrored.
    """

    image: str
    score: float
    id: int = -1
    inliers: int | None = None
    verified: bool | None = None
    vlad_score: float | None = None
    verdict: str | None = None
    confidence: float | None = None
    mirrored: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "score": round(float(self.score), 6)}
        if self.verified is not None:
            out["verdict"] = self.verdict
            out["confidence"] = round(float(self.confidence or 0.0), 3)
            out["verified"] = bool(self.verified)
            out["inliers"] = None if self.inliers is None else int(self.inliers)  # None: ranked beyond --rerank
            out["vlad_score"] = round(float(self.vlad_score if self.vlad_score is not None else self.score), 6)
            out["mirrored"] = bool(self.mirrored)
        return out


NOT_IN_COLLECTION = "not in the collection"


@dataclass
class SearchResult:
    """The matches of one query, best first; error is set when the query failed.

    verified: whether the candidates were verified (then `matches` starts with the confirmed
    ones, and `answer` is the best verdict, or "not in the collection" when none was confirmed).
    """

    query: str
    matches: list[Match] = field(default_factory=list)
    error: str | None = None
    verified: bool = False

    @property
    def answer(self) -> str | None:
        """The best verdict among the matches, "not in the collection", or None (not verified / failed)."""
        if not self.verified or self.error:
            return None
        confirmed = [m.verdict for m in self.matches if m.verified]
        return confirmed[0] if confirmed else NOT_IN_COLLECTION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query}
        if self.answer is not None:
            out["answer"] = self.answer
        out["matches"] = [m.to_dict() for m in self.matches]
        if self.error is not None:
            out["error"] = self.error
        return out


def results_to_json(results: list[SearchResult]) -> str:
    return json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False)


CSV_COLUMNS = ["query", "answer", "rank", "image", "verdict", "confidence", "verified", "inliers", "score",
               "mirrored", "error"]


def results_to_csv(results: list[SearchResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for result in results:
        answer = result.answer or ""
        if result.error or not result.matches:
            writer.writerow([result.query, answer, "", "", "", "", "", "", "", "", result.error or ""])
        for rank, match in enumerate(result.matches, 1):
            checked = match.verified is not None
            writer.writerow([result.query, answer, rank, match.image, (match.verdict or "") if checked else "",
                             f"{match.confidence:.3f}" if checked else "", match.verified if checked else "",
                             match.inliers if checked else "", f"{match.score:.6f}",
                             match.mirrored if checked else "", ""])
    return buffer.getvalue()


def results_to_table(results: list[SearchResult]) -> str:
    """What a person reads: each query's answer in words, then its matches under a header."""
    lines = []
    for result in results:
        if result.error:
            lines.append(f"{result.query}: error: {result.error}")
            continue
        answer = result.answer
        if answer is None:
            lines.append(f"{result.query}: {len(result.matches)} nearest (not verified)")
        elif answer == NOT_IN_COLLECTION:
            lines.append(f"{result.query}: {NOT_IN_COLLECTION}")
        else:
            best = result.matches[0]
            lines.append(f"{result.query}: {_in_words(best)} {best.image}")
        if not result.matches:
            continue
        if result.verified:
            lines.append(f"  {'rank':>4}  {'answer':<18}{'confidence':>10}  {'inliers':>7}  {'similarity':>10}  image")
            for rank, m in enumerate(result.matches, 1):
                said = (m.verdict or "") + (" (mirrored)" if m.mirrored and m.verdict else "")
                said = said if m.verified else "unverified"
                confidence = f"{m.confidence:.2f}" if m.verified else "-"
                inliers = "-" if m.inliers is None or m.verdict == "identical" else m.inliers  # same bytes: not matched
                lines.append(f"  {rank:>4}  {said:<18}{confidence:>10}  {inliers:>7}  {m.score:>10.4f}  {m.image}")
        else:
            lines.append(f"  {'rank':>4}  {'similarity':>10}  image")
            for rank, m in enumerate(result.matches, 1):
                lines.append(f"  {rank:>4}  {m.score:>10.4f}  {m.image}")
    return "\n".join(lines)


def _in_words(match: Match) -> str:
    return {"identical": "identical to", "copy": "a copy of", "same scene": "the same scene as"}.get(
        match.verdict or "", "matches")
