"""The read path: query images → VLAD → candidates → geometric rerank → query expansion.

Everything here reads one `Snapshot` (a committed state of the index) and encodes with
the index's `Encoder`; nothing here writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vladsearch.encoder import Encoder
from vladsearch.extraction import extract_images, single_blas_thread
from vladsearch.features import capabilities
from vladsearch.images import list_images
from vladsearch.progress import progress_bar
from vladsearch.results import Match, SearchResult
from vladsearch.snapshot import Snapshot

if TYPE_CHECKING:
    from vladsearch.features.base import Features

# Keypoints per database image used for reranking when they must be re-extracted.
RERANK_KEYPOINTS = 1024


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop faiss's -1 padding from one row of (D, I)."""
    keep = ids >= 0
    return scores[keep][:k], ids[keep][:k]


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


def search_index(encoder: Encoder, snapshot: Snapshot, root: Path, queries: list[str | os.PathLike], top: int = 10, rerank: int = 0,
                 verified_only: bool = False, query_expansion: int = 0, workers: int | None = None,
                 progress: bool = False, nprobe: int | None = None,
                 min_inliers: int | None = None, mirrored: bool = False) -> list[SearchResult]:
    """Encode each query like the database, search, then optionally rerank and expand.

    rerank: verify the best N candidates geometrically (see vladsearch.rerank), reading
    database features from the snapshot's cache or from the images under `root`;
    verified_only: keep only verified matches (needs rerank); query_expansion: αQE with
    the N best (verified, when reranking) neighbours; nprobe: IVF lists to visit.

    mirrored: when reranking SIFT/RootSIFT indexes, also verify the mirrored query, so that
    horizontally flipped copies verify (SIFT itself is not mirror-invariant).
    """
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    if rerank < 0 or query_expansion < 0:
        raise ValueError("--rerank and --query-expansion take a number of candidates ≥ 0")
    if mirrored and not capabilities(encoder.params.features).mirrorable:
        raise ValueError("--mirrored works with sift and rootsift indexes only")
    if verified_only and not rerank:
        raise ValueError("--verified-only needs --rerank N: only reranked matches can be verified")
    expanded = expand_queries(queries)
    stream = extract_images([path for _, path in expanded], encoder.extractor(), encoder.params.max_side, workers,
                            max_pixels=encoder.params.max_pixels)
    items = list(progress_bar(stream, total=len(expanded), desc="queries", enabled=progress))
    results = [SearchResult(given, [], error=item.error) for (given, _), item in zip(expanded, items)]
    for result, item in zip(results, items):
        if item.features is not None and len(item.features) == 0:
            result.error = "no keypoints found in the query image (blank, flat or too small): nothing to match"
    good = [i for i, item in enumerate(items) if item.features is not None and len(item.features)]
    if not good:
        return results
    with single_blas_thread(encoder.extractor()):
        xq = encoder.encode([items[i].features.descriptors for i in good])
    k = max(top, rerank)
    D, I = snapshot.search(xq, k, nprobe)
    names = snapshot.paths_of([int(i) for i in I.ravel() if i >= 0])
    candidate_features: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    chunk_queries = max(1, RERANK_CANDIDATES_AT_ONCE // max(rerank, 1))
    for row, position in enumerate(good):
        scores, ids = top_k(D[row], I[row], k)
        # An id without a name was removed by a commit after this snapshot was taken: skip it.
        matches = [Match(names[int(i)], float(s), int(i)) for s, i in zip(scores, ids) if int(i) in names]
        if rerank:
            if row % chunk_queries == 0:  # candidates of the next queries, fetched together
                chunk = I[row:row + chunk_queries, :rerank].ravel()
                wanted = [int(i) for i in set(chunk) if i >= 0]
                candidate_features = database_features(encoder, snapshot, root, wanted, workers)
            matches = _rerank(items[position].features, matches, rerank, min_inliers, candidate_features, mirrored)
        if query_expansion:
            matches = _expand(snapshot, xq[row], matches, query_expansion, k, nprobe, names)
        if verified_only:
            matches = [m for m in matches if m.verified]
        results[position].matches = matches[:top]
    return results


def _rerank(query: Features, matches: list[Match], n: int, min_inliers: int | None,
            features: dict[int, tuple[np.ndarray, np.ndarray]], mirrored: bool = False) -> list[Match]:
    """Verify the first n matches geometrically; verified ones move to the front.

    features: database image id -> (keypoints, descriptors), as `database_features` gives.
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


def _expand(snapshot: Snapshot, query_vector: np.ndarray, matches: list[Match], n: int, k: int,
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
    xb = snapshot.reconstruct([m.id for m in neighbours])
    expanded = average_query_expansion(query_vector[None], xb[None])
    D, I = snapshot.search(expanded, k, nprobe)
    scores, ids = top_k(D[0], I[0], k)
    missing = [int(i) for i in ids if int(i) not in names]
    names.update(snapshot.paths_of(missing))
    keep = [m for m in matches if m.verified] if reranked else []
    seen = {m.id for m in keep}
    return keep + [Match(names[int(i)], float(s), int(i)) for s, i in zip(scores, ids)
                   if int(i) not in seen and int(i) in names]


def database_features(encoder: Encoder, snapshot: Snapshot, root: Path, ids: list[int],
                      workers: int | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Local features (keypoints N×2, descriptors N×D float32) of database images.

    From the feature cache when the image's segment keeps one, else by decoding the
    image again from the photos' folder `root`.
    """
    rows = snapshot.rows_of(ids)
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    to_extract = []
    for image_id in ids:
        row = rows.get(image_id)
        if row is None:
            continue
        cached = snapshot.cached_features(row)
        if cached is not None:
            found[image_id] = cached
        else:
            to_extract.append((image_id, Path(root) / row["path"]))
    if to_extract:
        stream = extract_images([path for _, path in to_extract], encoder.extractor(), encoder.params.max_side,
                                workers, max_pixels=encoder.params.max_pixels)
        for (image_id, _), item in zip(to_extract, stream):
            if item.features is not None:
                keep = np.argsort(-item.features.scores, kind="stable")[:RERANK_KEYPOINTS]
                found[image_id] = (item.features.keypoints[keep], item.features.descriptors[keep])
    return found
