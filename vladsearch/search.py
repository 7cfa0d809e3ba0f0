"""Search results: small dataclasses and their JSON / CSV / table renderings."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vladsearch.extraction import extract_images, single_blas_thread
from vladsearch.images import list_images
from vladsearch.progress import progress_bar

if TYPE_CHECKING:
    from vladsearch.features.base import Features
    from vladsearch.index import Index


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


# Rerank candidates fetched at once for consecutive queries: re-extracting database images
# (no feature cache) then runs as one parallel batch instead of a small one per query.
# 512 candidates of 1,024 SIFT features hold about 270 MB.
RERANK_CANDIDATES_AT_ONCE = 512


# --- running queries ---------------------------------------------------------------
def expand_queries(queries: list[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(name as given, file) pairs: a folder expands to its images, named by their paths."""
    expanded: list[tuple[str, Path]] = []
    for query in queries:
        path = Path(query)
        if path.is_dir():
            files = list_images(path)
            if not files:
                raise ValueError(f"no images found in query folder {path}")
            expanded.extend((str(f), f) for f in files)
        else:
            expanded.append((str(query), path))  # a missing file is reported as that query's error
    return expanded


def search_index(index: Index, queries: list[str | os.PathLike], top: int = 10, rerank: int = 0,
                 verified_only: bool = False, query_expansion: int = 0, workers: int | None = None,
                 progress: bool = False, nprobe: int | None = None,
                 min_inliers: int | None = None, mirrored: bool = False) -> list[SearchResult]:
    """Encode each query like the database, search, then optionally rerank and expand (see Index.search).

    mirrored: when reranking SIFT/RootSIFT indexes, also verify the mirrored query, so that
    horizontally flipped copies verify (SIFT itself is not mirror-invariant).
    """
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    if rerank < 0 or query_expansion < 0:
        raise ValueError("--rerank and --query-expansion take a number of candidates ≥ 0")
    if mirrored and index.params.features not in ("sift", "rootsift"):
        raise ValueError("--mirrored works with sift and rootsift indexes only")
    if verified_only and not rerank:
        raise ValueError("--verified-only needs --rerank N: only reranked matches can be verified")
    expanded = expand_queries(queries)
    stream = extract_images([path for _, path in expanded], index.extractor(), index.params.max_side, workers)
    items = list(progress_bar(stream, total=len(expanded), desc="queries", enabled=progress))
    good = [i for i, item in enumerate(items) if item.features is not None]
    results = [SearchResult(given, [], error=item.error) for (given, _), item in zip(expanded, items)]
    if not good:
        return results
    with single_blas_thread(index.extractor()):
        xq = index.encode([items[i].features.descriptors for i in good])
    k = max(top, rerank)
    D, I = index.search_vectors(xq, k, nprobe)
    names = index.table.paths_of([int(i) for i in I.ravel() if i >= 0])
    database_features: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    chunk_queries = max(1, RERANK_CANDIDATES_AT_ONCE // max(rerank, 1))
    for row, position in enumerate(good):
        scores, ids = top_k(D[row], I[row], k)
        matches = [Match(names[int(i)], float(s), int(i)) for s, i in zip(scores, ids)]
        if rerank:
            if row % chunk_queries == 0:  # candidates of the next queries, fetched together
                chunk = I[row:row + chunk_queries, :rerank].ravel()
                database_features = index.database_features([int(i) for i in set(chunk) if i >= 0], workers)
            matches = _rerank(items[position].features, matches, rerank, min_inliers, database_features, mirrored)
        if query_expansion:
            matches = _expand(index, xq[row], matches, query_expansion, k, nprobe, names)
        if verified_only:
            matches = [m for m in matches if m.verified]
        results[position].matches = matches[:top]
    return results


def _rerank(query: Features, matches: list[Match], n: int, min_inliers: int | None,
            features: dict[int, tuple[np.ndarray, np.ndarray]], mirrored: bool = False) -> list[Match]:
    """Verify the first n matches geometrically; verified ones move to the front.

    features: database image id -> (keypoints, descriptors), as Index.database_features gives.
    """
    from vladsearch.rerank import rerank_candidates

    head, tail = matches[:n], matches[n:]
    by_id = {m.id: m for m in head}
    empty = (np.zeros((0, 2), np.float32), np.zeros((0, query.descriptors.shape[1]), np.float32))
    candidates = [(m.id, *features.get(m.id, empty)) for m in head]
    reranked = rerank_candidates(query, candidates, [m.score for m in head], min_inliers=min_inliers)
    if mirrored:  # also try the query mirrored; keep each candidate's better verification
        verified_ids = {r.id for r in reranked if r.verified}
        unverified = [c for c in candidates if c[0] not in verified_ids]
        flipped = rerank_candidates(_mirror(query), unverified, [by_id[c[0]].score for c in unverified],
                                    min_inliers=min_inliers)
        better = {r.id: r for r in flipped if r.verified}
        reranked = [better.get(r.id, r) for r in reranked]
    checked = [Match(by_id[r.id].image, r.inliers + r.vlad_score if r.verified else r.vlad_score,
                     r.id, r.inliers, r.verified, r.vlad_score) for r in reranked]
    checked.sort(key=lambda m: -m.score)
    return checked + tail


def _mirror(query: Features) -> Features:
    """The query's SIFT features as the horizontally mirrored image would give them."""
    from vladsearch.features.base import Features
    from vladsearch.rerank import mirror_sift_descriptors

    keypoints = query.keypoints.copy()
    keypoints[:, 0] = query.image_size[0] - 1 - keypoints[:, 0]
    return Features(keypoints, mirror_sift_descriptors(query.descriptors), query.scores, query.image_size)


def _expand(index: Index, query_vector: np.ndarray, matches: list[Match], n: int, k: int,
            nprobe: int | None, names: dict[int, str]) -> list[Match]:
    """αQE: search again with the query averaged with its n best (verified) neighbours.

    Verified matches keep their place at the top; the new ranking follows.
    """
    from vladsearch.rerank import average_query_expansion

    reranked = any(m.verified is not None for m in matches)
    neighbours = [m for m in matches if m.verified] if reranked else matches
    neighbours = neighbours[:n]
    if not neighbours:
        return matches
    xb = index.vectors_of([m.id for m in neighbours])
    expanded = average_query_expansion(query_vector[None], xb[None])
    D, I = index.search_vectors(expanded, k, nprobe)
    scores, ids = top_k(D[0], I[0], k)
    missing = [int(i) for i in ids if int(i) not in names]
    names.update(index.table.paths_of(missing))
    keep = [m for m in matches if m.verified] if reranked else []
    seen = {m.id for m in keep}
    return keep + [Match(names[int(i)], float(s), int(i)) for s, i in zip(scores, ids) if int(i) not in seen]
