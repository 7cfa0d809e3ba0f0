"""Near-duplicate groups of a whole collection: kNN graph → candidate pairs → verification → groups.

    vladsearch duplicates INDEX [--json | --csv] [--html REPORT.html] [--neighbors K] [--min-inliers N]

1. Exact copies (the same SHA-1 in the catalog) are grouped without looking at pixels; one
   image per content hash stands for its copies in the rest.
2. Every indexed vector searches the index (faiss, in blocks of `QUERY_BLOCK` queries, so
   memory is one block's candidates): its `neighbors` nearest images with a VLAD similarity
   of at least `min_similarity` become candidate pairs, each unordered pair once. With SIFT
   the mirrored image's vector searches too (a flipped copy's VLAD is unrelated to its source's).
3. Each candidate is verified geometrically on all cores (vladsearch.pair_verification):
   features from the index's cache, or re-extracted once per block. SIFT pairs that fail
   are tried mirrored, so flipped copies verify; SIFT is rotation-invariant and the
   homography holds a 90° turn, so rotated copies verify as they are.
4. A verified pair is a *copy* when its inliers are not a thin band (a caption drawn on two
   unrelated photographs verifies through its letters) and one affine map explains them
   (edits crop, scale, rotate and mirror; a photograph from another viewpoint needs a
   perspective homography). Thresholds: `benchmarks/dedup.py --measure`.
5. Groups: connected components of copy pairs, then split around their `keep` image
   (highest resolution, then largest file, then oldest): a member stays only if it is a
   copy of the kept image itself (pairs missing from the kNN graph are verified now);
   the rest is grouped again the same way. So every image a report marks removable was
   verified against the image it would be replaced by, and one image that resembles two
   photographs cannot chain them into one group (measured against plain components in
   docs/BENCHMARKS.md). Nothing is ever deleted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vladsearch import catalog, segments
from vladsearch.pair_verification import PairVerdict, verify_pairs
from vladsearch.progress import progress_bar
from vladsearch.rerank import DEFAULT_MIN_INLIERS

if TYPE_CHECKING:
    from vladsearch.index import Index

DEFAULT_NEIGHBORS = 10
# VLAD cosine below which a neighbour is not verified; off by default (a mirrored copy's plain
# VLAD similarity is about 0, so its candidate comes from the mirrored query vector instead).
DEFAULT_MIN_SIMILARITY = -1.0
# Measured with benchmarks/dedup.py --measure (SIFT, 72 photographs, their edited copies, other
# views of the same scenes, and unrelated photographs carrying the same caption):
# inliers must span this fraction of the shorter side of both images: edited copies ≥ 0.40,
# captions shared by unrelated photos median 0.06 (their letters verify: 92 inliers median);
DEFAULT_MIN_THICKNESS = 0.2
# and this fraction of the homography inliers must fit one affine map: edited copies ≥ 0.93
# (median 1.00); graf viewpoint changes ≤ 0.73, homogr wide-baseline pairs median 0.73.
DEFAULT_MIN_AFFINE = 0.9
# Cheap first pass (verify_pair): the 256 strongest features must give 8 inliers before all are matched.
DEFAULT_SCREEN_KEYPOINTS = 256
DEFAULT_SCREEN_INLIERS = 8
QUERY_BLOCK = 1024
GROUPINGS = ("keep", "components")


@dataclass
class DuplicatePair:
    """Two images found to be copies: inliers (all keypoints for exact copies) and VLAD similarity."""

    a: int
    b: int
    inliers: int
    score: float
    exact: bool = False
    mirrored: bool = False


@dataclass
class DuplicateGroup:
    """Images that are copies of `keep` (an id); `pairs` are the verifications that support them."""

    ids: list[int]
    keep: int
    pairs: list[DuplicatePair] = field(default_factory=list)


@dataclass
class DuplicateReport:
    groups: list[DuplicateGroup]
    rows: dict[int, dict[str, Any]]  # image rows of every grouped id (path, width, height, size, …)
    candidates: int = 0
    verified: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def keep_order(row: dict[str, Any]) -> tuple:
    """Sort key, best first: most pixels, then largest file, then oldest, then path."""
    pixels = (row.get("width") or 0) * (row.get("height") or 0)
    return (-pixels, -(row.get("file_size") or 0), row.get("mtime") or 0.0, row["path"])


def is_copy(verdict: PairVerdict, min_inliers: int, min_thickness: float, min_affine: float) -> bool:
    return (verdict.inliers >= min_inliers and verdict.thickness >= min_thickness
            and verdict.affine >= min_affine)


# --- 1. exact copies ------------------------------------------------------------------
def exact_groups(rows: list[dict[str, Any]]) -> dict[int, list[int]]:
    """representative id -> ids with the same SHA-1 (representative first: the lowest id)."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        if row.get("sha1"):
            by_hash[row["sha1"]].append(row["id"])
    return {ids[0]: ids for ids in by_hash.values() if len(ids) > 1}


# --- 2. candidate pairs ------------------------------------------------------------------
def vectors_by_id(index: Index, rows: dict[int, dict[str, Any]], ids: np.ndarray) -> np.ndarray:
    """Stored vectors of `ids` (len × dim float32), read from the segment files (exact for any factory)."""
    snapshot = index.snapshot
    try:
        out = np.empty((len(ids), index.encoder.dim), np.float32)
        counts = {s["name"]: s["vectors"] for s in catalog.live_segments(snapshot.table)}
        by_segment: dict[str, list[int]] = defaultdict(list)
        for position, image_id in enumerate(ids):
            by_segment[rows[int(image_id)]["segment"]].append(position)
        for name, positions in by_segment.items():
            mapped = segments.open_vectors(snapshot.index_dir, name, index.encoder.dim, counts[name])
            out[positions] = mapped[[rows[int(ids[p])]["row"] for p in positions]]
        return out
    except (KeyError, TypeError, OSError, catalog.IndexDamagedError):
        return index.vectors_of([int(i) for i in ids])  # e.g. a format 1 index


def mirrored_vectors(index: Index, source: FeatureSource, ids: np.ndarray) -> np.ndarray:
    """VLAD vectors of the mirrored images (SIFT descriptors permuted as a flip permutes them).

    A flipped copy's VLAD is unrelated to its source's (cosine ≈ 0), so the kNN search also
    runs with these vectors; the local features come from the cache (or are re-extracted).
    """
    from vladsearch.rerank import mirror_sift_descriptors

    source.load({int(i) for i in ids})
    empty = np.zeros((0, index.encoder.feature_dim), np.float32)
    descriptors = []
    for image_id in ids:
        found = source(int(image_id))
        descriptors.append(mirror_sift_descriptors(found[1]) if found is not None and len(found[1]) else empty)
    return index.encoder.encode(descriptors)


def candidate_blocks(index: Index, query_ids: np.ndarray, rows: dict[int, dict[str, Any]], neighbors: int,
                     min_similarity: float, representative: dict[int, int], block: int = QUERY_BLOCK,
                     nprobe: int | None = None, mirror_source: FeatureSource | None = None,
                     ) -> Iterator[dict[tuple[int, int], float]]:
    """Per block of queries: {(a, b) with a < b: VLAD similarity} of pairs not seen in earlier blocks.

    representative: id -> the id standing for its exact copies (queries are representatives);
    mirror_source: also take each query's `neighbors` nearest to its mirrored vector.
    """
    extra = max((sum(1 for v in representative.values() if v == r) for r in set(representative.values())),
                default=1)
    k = min(len(index.snapshot.loaded_ids), neighbors + extra)
    seen: set[tuple[int, int]] = set()
    for start in range(0, len(query_ids), block):
        ids = query_ids[start:start + block]
        D, I = index.search_vectors(vectors_by_id(index, rows, ids), k, nprobe)
        results = list(zip(ids, D, I))
        if mirror_source is not None:
            Dm, Im = index.search_vectors(mirrored_vectors(index, mirror_source, ids), k, nprobe)
            results += list(zip(ids, Dm, Im))
        pairs: dict[tuple[int, int], float] = {}
        for a, scores, found in results:
            taken = 0
            for score, b in zip(scores, found):
                b = representative.get(int(b), int(b))
                if b < 0 or b == a or taken >= neighbors:
                    continue
                taken += 1
                pair = (min(int(a), b), max(int(a), b))
                if score >= min_similarity and pair not in seen:
                    pairs[pair] = max(float(score), pairs.get(pair, -1.0))  # plain or mirrored query
        seen.update(pairs)
        yield pairs


# --- 3. verification -----------------------------------------------------------------------
class FeatureSource:
    """Local features by image id: the index's cache (memory-mapped) or re-extracted images."""

    def __init__(self, index: Index, rows: dict[int, dict[str, Any]], workers: int | None) -> None:
        self.index, self.rows, self.workers = index, rows, workers
        self.extracted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def load(self, ids: set[int]) -> None:
        """Re-extract (in parallel) the images of `ids` that have no cached features; forget older ones."""
        from vladsearch.search import database_features

        snapshot = self.index.snapshot
        missing = [i for i in ids if snapshot.cached_features(self.rows[i]) is None]
        self.extracted = {i: f for i, f in self.extracted.items() if i in ids}
        wanted = [i for i in missing if i not in self.extracted]
        if wanted:
            self.extracted.update(database_features(self.index.encoder, snapshot, self.index.root, wanted,
                                                    self.workers))

    def __call__(self, image_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        if image_id in self.extracted:
            return self.extracted[image_id]
        return self.index.snapshot.cached_features(self.rows[image_id])


def _verify(pairs: list[tuple[int, int]], source: FeatureSource, workers: int | None, mirror: bool,
            min_inliers: int, screen: tuple[int, int] = (0, 0)) -> list[PairVerdict]:
    source.load({i for pair in pairs for i in pair})
    return verify_pairs(pairs, source, workers, mirror=mirror, min_inliers=min_inliers, screen=screen[0],
                        screen_inliers=screen[1])


# --- 4. groups -----------------------------------------------------------------------------
def connected_components(nodes: list[int], edges: list[tuple[int, int]]) -> list[list[int]]:
    """Components with at least two nodes (union-find), each sorted."""
    parent = {n: n for n in nodes}

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in edges:
        parent[root(a)] = root(b)
    members: dict[int, list[int]] = defaultdict(list)
    for n in nodes:
        members[root(n)].append(n)
    return [sorted(m) for m in members.values() if len(m) > 1]


def split_around_keep(component: list[int], edges: set[tuple[int, int]], order: dict[int, tuple]) -> list[list[int]]:
    """Groups of one component whose members all have an edge to the group's best (`order`) image."""
    remaining = sorted(component, key=order.__getitem__)
    groups = []
    while len(remaining) > 1:
        keep = remaining[0]
        members = [keep] + [n for n in remaining[1:] if (min(keep, n), max(keep, n)) in edges]
        if len(members) > 1:
            groups.append(members)
        taken = set(members)
        remaining = [n for n in remaining if n not in taken]
    return groups


def find_duplicates(index: Index, neighbors: int = DEFAULT_NEIGHBORS, min_inliers: int = DEFAULT_MIN_INLIERS,
                    min_similarity: float = DEFAULT_MIN_SIMILARITY, min_thickness: float = DEFAULT_MIN_THICKNESS,
                    min_affine: float = DEFAULT_MIN_AFFINE, grouping: str = "keep", mirror: bool | None = None,
                    workers: int | None = None, progress: bool = False, nprobe: int | None = None,
                    screen: int = DEFAULT_SCREEN_KEYPOINTS,
                    screen_inliers: int = DEFAULT_SCREEN_INLIERS) -> DuplicateReport:
    """Every group of near-duplicate images in the index; see the module docstring for the steps."""
    import time

    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; choose one of: {', '.join(GROUPINGS)}")
    if neighbors < 1:
        raise ValueError(f"--neighbors must be at least 1, got {neighbors}")
    if mirror is None:
        mirror = index.params.features in ("sift", "rootsift")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    snapshot = index.snapshot
    all_rows = [r for r in catalog.image_rows(snapshot.table) if r["sha1"] or r["segment"] is not None]
    rows = {r["id"]: r for r in all_rows}
    exact = exact_groups(all_rows)
    representative = {i: rep for rep, ids in exact.items() for i in ids}
    live = snapshot.loaded_ids
    queries = np.array([i for i in live if representative.get(int(i), int(i)) == int(i)], np.int64)
    source = FeatureSource(index, rows, workers)
    verdicts: dict[tuple[int, int], PairVerdict] = {}
    similarity: dict[tuple[int, int], float] = {}
    blocks = candidate_blocks(index, queries, rows, neighbors, min_similarity, representative, nprobe=nprobe,
                              mirror_source=source if mirror else None)
    total = (len(queries) + QUERY_BLOCK - 1) // QUERY_BLOCK
    for pairs in progress_bar(blocks, total=total, desc="query blocks", enabled=progress):
        similarity.update(pairs)
        for verdict in _verify(list(pairs), source, workers, mirror, min_inliers, (screen, screen_inliers)):
            verdicts[(verdict.a, verdict.b)] = verdict
    timings["knn_and_verify"] = time.perf_counter() - start

    def copies() -> set[tuple[int, int]]:
        return {p for p, v in verdicts.items() if is_copy(v, min_inliers, min_thickness, min_affine)}

    nodes = sorted({i for pair in verdicts for i in pair})
    components = connected_components(nodes, list(copies()))
    order = {n: keep_order(rows[n]) for n in nodes}
    if grouping == "keep":  # verify each member against its component's keep image, where not done yet
        missing = []
        for component in components:
            ranked = sorted(component, key=order.__getitem__)
            missing += [(min(ranked[0], n), max(ranked[0], n)) for n in ranked[1:]]
        missing = [p for p in dict.fromkeys(missing) if p not in verdicts]
        for verdict in _verify(missing, source, workers, mirror, min_inliers):
            verdicts[(verdict.a, verdict.b)] = verdict
        edges = copies()
        components = [g for c in components for g in split_around_keep(c, edges, order)]
    timings["grouping"] = time.perf_counter() - start - timings["knn_and_verify"]
    missing_sims = [p for p, v in verdicts.items() if p not in similarity]
    if missing_sims:
        xa = vectors_by_id(index, rows, np.array([a for a, _ in missing_sims], np.int64))
        xb = vectors_by_id(index, rows, np.array([b for _, b in missing_sims], np.int64))
        similarity.update(zip(missing_sims, np.einsum("ij,ij->i", xa, xb).tolist()))
    groups = _with_exact_copies(components, exact, rows, verdicts, similarity, order, min_inliers,
                                min_thickness, min_affine)
    used = {i for g in groups for i in g.ids}
    return DuplicateReport(groups, {i: rows[i] for i in used}, candidates=len(similarity),
                           verified=sum(v.inliers >= min_inliers for v in verdicts.values()), timings=timings)


def _with_exact_copies(components: list[list[int]], exact: dict[int, list[int]], rows: dict[int, dict[str, Any]],
                       verdicts: dict[tuple[int, int], PairVerdict], similarity: dict[tuple[int, int], float],
                       order: dict[int, tuple], min_inliers: int, min_thickness: float,
                       min_affine: float) -> list[DuplicateGroup]:
    """Final groups: each representative brings its exact copies; the keep image is chosen among all."""
    groups = []
    grouped_reps = {i for c in components for i in c}
    singles = [[rep] for rep in exact if rep not in grouped_reps]
    for members in components + singles:
        ids = sorted({i for rep in members for i in exact.get(rep, [rep])}, key=lambda i: keep_order(rows[i]))
        pairs = []
        for rep in members:
            copies = exact.get(rep, [rep])
            pairs += [DuplicatePair(rep, other, int(rows[rep].get("keypoints") or 0), 1.0, exact=True)
                      for other in copies if other != rep]
        inside = set(members)
        for (a, b), verdict in verdicts.items():
            if a in inside and b in inside and is_copy(verdict, min_inliers, min_thickness, min_affine):
                pairs.append(DuplicatePair(a, b, verdict.inliers, round(similarity.get((a, b), 0.0), 4),
                                           mirrored=verdict.mirrored))
        groups.append(DuplicateGroup(ids, ids[0], pairs))
    groups.sort(key=lambda g: (-len(g.ids), rows[g.keep]["path"]))
    return groups
