"""Near-duplicate groups of a whole collection: kNN graph → candidate pairs → verification → groups.

    vladsearch duplicates INDEX [--json | --csv] [--html REPORT.html] [--neighbors K] [--min-inliers N]

1. Exact copies (the same SHA-1 in the catalog) are grouped without looking at pixels; one
   image per content hash stands for its copies in the rest.
2. Every indexed vector searches the collection (knn.py: the index itself, or a
   temporary IVF for an exact index of over 20,000 images), in blocks of `QUERY_BLOCK`
   queries, so memory is one block's candidates: its `neighbors` nearest images with a VLAD
   similarity of at least `min_similarity` become candidate pairs, each unordered pair once.
   With SIFT the mirrored image's vector searches too (a flipped copy's VLAD is unrelated to
   its source's).
3. Each candidate is verified geometrically on all cores (vladsearch.query.pair_verification):
   features from the index's cache, or re-extracted once per block. A pair is matched as
   it was proposed: as is, or (found by a mirrored vector) mirrored first, then as is; so
   flipped copies verify. SIFT is rotation-invariant and the homography holds a 90° turn,
   so rotated copies verify as they are. Only verified pairs are kept.
4. A verified pair is a *copy* when its inliers are not confined to a band or two (a caption
   or meme text drawn on two unrelated photographs verifies through its letters) and one
   affine map explains them,
   scaling every direction alike (edits crop, scale, rotate and mirror; a photograph from
   another viewpoint needs a perspective homography or foreshortens). Thresholds: see
   `DEFAULT_MIN_OCCUPANCY`, `DEFAULT_MIN_AFFINE`, `DEFAULT_MAX_ANISOTROPY`.
5. Groups: connected components of copy pairs, then split around their `keep` image
   (keep_choice.py: the original before its turned, mirrored, smaller or newer copies): a member stays if it is a copy of
   the kept image itself (pairs missing from the kNN graph are verified now) or of
   `MIN_LINKS` members already in; the rest is grouped again the same way. So every image a
   report marks removable was verified against the kept image or against several copies of
   it, and one image that resembles two photographs cannot chain them into one group
   (measured against plain components in docs/BENCHMARKS.md). Nothing is ever deleted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vladsearch.collection import keep_choice
from vladsearch.collection.knn import EXACT_LIMIT, CollectionSearch, mirrored_vectors
from vladsearch.features import capabilities
from vladsearch.io.progress import progress_bar
from vladsearch.query.pair_verification import PairVerdict, verify_pairs
from vladsearch.query.rerank import DEFAULT_MIN_INLIERS
from vladsearch.query.verification import (
    MAX_ANISOTROPY,
    MIN_AFFINE,
    MIN_OCCUPANCY,
    SCREEN_INLIERS,
    SCREEN_KEYPOINTS,
    FeatureSource,
    is_copy,
)
from vladsearch.store import catalog
from vladsearch.store.moves import indexed_file

if TYPE_CHECKING:
    from vladsearch.index import Index

DEFAULT_NEIGHBORS = 10
# VLAD cosine below which a neighbour is not verified; off by default (a mirrored copy's plain
# VLAD similarity is about 0, so its candidate comes from the mirrored query vector instead).
DEFAULT_MIN_SIMILARITY = -1.0
# What counts as a copy, and the cheap first pass: one definition for every verb (verification.py).
DEFAULT_MIN_OCCUPANCY = MIN_OCCUPANCY
DEFAULT_MIN_AFFINE = MIN_AFFINE
DEFAULT_MAX_ANISOTROPY = MAX_ANISOTROPY
DEFAULT_SCREEN_KEYPOINTS = SCREEN_KEYPOINTS
DEFAULT_SCREEN_INLIERS = SCREEN_INLIERS
QUERY_BLOCK = 1024
# A pair that only a mirrored vector proposed is matched mirrored, then as is: large groups of
# plain copies link through such pairs too (their plain cosine is the higher one). When its plain
# cosine is this far below the mirrored one, it is matched mirrored only (one match instead of two).
MIRRORED_ONLY_MARGIN = 0.05
MIN_LINKS = 3  # split_around_keep: copy links into a kept group that admit a member
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
    unreadable: list[str] = field(default_factory=list)  # paths without cached features that failed to decode


def keep_order(row: dict[str, Any]) -> tuple:
    """Sort key of one row alone, best first: most pixels, then oldest file, then largest, then path
    (find_duplicates adds --prefer, the group's orientation and EXIF: keep_choice.keep_orders)."""
    return keep_choice.keep_order(row)


# --- 1. exact copies ------------------------------------------------------------------
def exact_groups(rows: list[dict[str, Any]]) -> dict[int, list[int]]:
    """representative id -> ids with the same SHA-1 (representative first: the lowest id)."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        if row.get("sha1"):
            by_hash[row["sha1"]].append(row["id"])
    return {ids[0]: ids for ids in by_hash.values() if len(ids) > 1}


# --- 2. candidate pairs ------------------------------------------------------------------
@dataclass
class CandidateBlock:
    """One block's new candidate pairs: {(a, b), a < b: VLAD similarity} and, per pair, the sides
    to match (the `mirror` argument of `verify_pair`: False plain, True both, "mirrored" when only
    a mirrored vector proposed it, "mirrored only" when its plain similarity is also far lower)."""

    scores: dict[tuple[int, int], float]
    hints: dict[tuple[int, int], bool | str]


def candidate_blocks(index: Index, query_ids: np.ndarray, searcher: CollectionSearch, neighbors: int,
                     min_similarity: float, representative: dict[int, int], block: int = QUERY_BLOCK,
                     mirror_source: FeatureSource | None = None) -> Iterator[CandidateBlock]:
    """Per block of queries, the candidate pairs (and sides) not proposed by earlier blocks.

    representative: id -> the id standing for its exact copies (queries are representatives);
    mirror_source: also take each query's `neighbors` nearest to its mirrored vector. A pair
    proposed again from a side not tried before comes again with that side only.
    """
    extra = max(Counter(representative.values()).values(), default=1)  # the largest set of exact copies
    k = min(len(index.snapshot.loaded_ids), neighbors + extra)
    tried: dict[tuple[int, int], set[bool]] = {}
    for start in range(0, len(query_ids), block):
        ids = query_ids[start:start + block]
        D, I = searcher.search_indexed(ids, k)
        results = [(False, a, d, i) for a, d, i in zip(ids, D, I)]
        if mirror_source is not None:
            Dm, Im = searcher.search(mirrored_vectors(index, mirror_source, ids, mirror_source.workers), k)
            results += [(True, a, d, i) for a, d, i in zip(ids, Dm, Im)]
        scores: dict[tuple[int, int], float] = {}
        sides: dict[tuple[int, int], set[bool]] = defaultdict(set)
        for flipped, a, found_scores, found in results:
            taken = 0
            for score, b in zip(found_scores, found):
                b = representative.get(int(b), int(b))
                if b < 0 or b == a or taken >= neighbors:
                    continue
                taken += 1
                pair = (min(int(a), b), max(int(a), b))
                if score >= min_similarity and flipped not in tried.get(pair, ()):
                    scores[pair] = max(float(score), scores.get(pair, -1.0))  # plain or mirrored query
                    sides[pair].add(flipped)
        mirrored_only = [pair for pair, new in sides.items() if new == {True}]
        plain = searcher.similarities(*np.array(mirrored_only, np.int64).T) if mirrored_only else None
        plain_of = dict(zip(mirrored_only, plain)) if plain is not None else {}
        hints: dict[tuple[int, int], bool | str] = {}
        for pair, new in sides.items():
            tried.setdefault(pair, set()).update(new)
            hints[pair] = True if len(new) == 2 else ("mirrored" if True in new else False)
            if pair in plain_of and plain_of[pair] < scores[pair] - MIRRORED_ONLY_MARGIN:
                hints[pair] = "mirrored only"
        yield CandidateBlock(scores, hints)


# --- 3. verification -----------------------------------------------------------------------
def _verify(pairs: list[tuple[int, int]], source: FeatureSource, workers: int | None, mirror: bool,
            min_inliers: int, screen: tuple[int, int] = (0, 0),
            hints: dict[tuple[int, int], bool | str] | None = None) -> list[PairVerdict]:
    source.load({i for pair in pairs for i in pair})
    return verify_pairs(pairs, source, workers, mirror=mirror, min_inliers=min_inliers, screen=screen[0],
                        screen_inliers=screen[1], hints=hints if mirror else None, counts=False)


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


def split_around_keep(component: list[int], edges: set[tuple[int, int]], order: dict[int, tuple],
                      min_links: int = MIN_LINKS) -> list[list[int]]:
    """Groups of one component around its best (`order`) image: a member joins when it has an
    edge to the kept image, or edges to `min_links` members already in (0: direct edges only).

    One bridge image (a collage, a photo of a screen showing another photo) links a member to
    a group through a single edge, so it cannot bring the other photograph's copies along.
    """
    neighbours: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    remaining = sorted(component, key=order.__getitem__)
    groups = []
    while len(remaining) > 1:
        keep = remaining[0]
        members = [keep] + [n for n in remaining[1:] if n in neighbours[keep]]
        taken = set(members)
        grew = bool(min_links)
        while grew:
            joining = [n for n in remaining if n not in taken and len(neighbours[n] & taken) >= min_links]
            members += joining
            taken.update(joining)
            grew = bool(joining)
        if len(members) > 1:
            groups.append(members)
        remaining = [n for n in remaining if n not in taken]
    return groups


def find_duplicates(index: Index, neighbors: int = DEFAULT_NEIGHBORS, min_inliers: int = DEFAULT_MIN_INLIERS,
                    min_similarity: float = DEFAULT_MIN_SIMILARITY, min_occupancy: float = DEFAULT_MIN_OCCUPANCY,
                    min_affine: float = DEFAULT_MIN_AFFINE, max_anisotropy: float = DEFAULT_MAX_ANISOTROPY,
                    grouping: str = "keep", mirror: bool | None = None,
                    workers: int | None = None, progress: bool = False, nprobe: int | None = None,
                    screen: int = DEFAULT_SCREEN_KEYPOINTS, screen_inliers: int = DEFAULT_SCREEN_INLIERS,
                    exact_limit: int = EXACT_LIMIT, knn: str = "auto", prefer: Sequence[str] = ()) -> DuplicateReport:
    """Every group of near-duplicate images in the index; see the module docstring for the steps."""
    import time

    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; choose one of: {', '.join(GROUPINGS)}")
    if neighbors < 1:
        raise ValueError(f"--neighbors must be at least 1, got {neighbors}")
    if mirror is None:
        mirror = capabilities(index.params.features).mirrorable
    timings: dict[str, float] = {}
    start = time.perf_counter()
    snapshot = index.snapshot
    all_rows = [r for r in catalog.image_rows(snapshot.table) if r["sha1"] or r["segment"] is not None]
    rows = {r["id"]: r for r in all_rows}
    exact = exact_groups(all_rows)
    representative = {i: rep for rep, ids in exact.items() for i in ids}
    live = snapshot.loaded_ids
    queries = np.array([i for i in live if representative.get(int(i), int(i)) == int(i)], np.int64)
    source = FeatureSource.of_index(index, rows, workers)
    searcher = CollectionSearch(index, exact_limit=exact_limit, nprobe=nprobe, knn=knn)
    timings["knn_index"] = time.perf_counter() - start
    # Only verified pairs are kept (memory: a few per duplicate image, not ~16 per image);
    # the keys of every pair tried are kept as int64s, so that none is verified twice.
    verdicts: dict[tuple[int, int], PairVerdict] = {}
    similarity: dict[tuple[int, int], float] = {}
    tried: list[np.ndarray] = []
    candidates = 0
    blocks = candidate_blocks(index, queries, searcher, neighbors, min_similarity, representative,
                              mirror_source=source if mirror else None)
    total = (len(queries) + QUERY_BLOCK - 1) // QUERY_BLOCK
    for found in progress_bar(blocks, total=total, desc=f"kNN + verification, {QUERY_BLOCK} images a block",
                              enabled=progress, unit="block"):
        candidates += len(found.scores)
        tried.append(pair_keys(found.scores))
        for verdict in _verify(list(found.scores), source, workers, mirror, min_inliers, (screen, screen_inliers),
                               found.hints):
            pair = (verdict.a, verdict.b)
            if verdict.inliers >= min_inliers and (pair not in verdicts or verdict.inliers > verdicts[pair].inliers):
                verdicts[pair] = verdict
                similarity[pair] = max(found.scores[pair], similarity.get(pair, -1.0))
    timings["knn_and_verify"] = time.perf_counter() - start - timings["knn_index"]

    def copies() -> set[tuple[int, int]]:
        return {p for p, v in verdicts.items() if is_copy(v, min_inliers, min_occupancy, min_affine, max_anisotropy)}

    nodes = sorted({i for pair in verdicts for i in pair})
    components = connected_components(nodes, list(copies()))
    order = {n: keep_order(rows[n]) for n in nodes}
    order.update(keep_choice.keep_orders(components, {p: verdicts[p] for p in copies()}, rows, exact,
                                         lambda path: indexed_file(index.root, path),
                                         keep_choice.normalise_prefer(prefer, index.root)))
    if grouping == "keep":  # verify each member against its component's keep image, where not done yet
        missing = []
        for component in components:
            ranked = sorted(component, key=order.__getitem__)
            missing += [(min(ranked[0], n), max(ranked[0], n)) for n in ranked[1:]]
        missing = [p for p in dict.fromkeys(missing) if p not in verdicts]
        done = np.unique(np.concatenate(tried)) if tried else np.zeros(0, np.int64)
        missing = [p for p, seen in zip(missing, np.isin(pair_keys(missing), done)) if not seen]
        for verdict in _verify(missing, source, workers, mirror, min_inliers):
            if verdict.inliers >= min_inliers:
                verdicts[(verdict.a, verdict.b)] = verdict
        component_of = {n: at for at, component in enumerate(components) for n in component}
        edges_of: dict[int, set[tuple[int, int]]] = defaultdict(set)  # copy edges by component
        for a, b in copies():
            if a in component_of and component_of[a] == component_of.get(b):
                edges_of[component_of[a]].add((a, b))
        components = [g for at, c in enumerate(components) for g in split_around_keep(c, edges_of[at], order)]
    timings["grouping"] = time.perf_counter() - start - timings["knn_and_verify"] - timings["knn_index"]
    # reported scores: exact VLAD cosines of the pairs that support a group
    exact_needed = [p for p in copies() if searcher.approximate or p not in similarity]
    for at in range(0, len(exact_needed), QUERY_BLOCK):
        chunk = exact_needed[at:at + QUERY_BLOCK]
        xa = searcher.vectors(np.array([a for a, _ in chunk], np.int64))
        xb = searcher.vectors(np.array([b for _, b in chunk], np.int64))
        similarity.update(zip(chunk, np.einsum("ij,ij->i", xa, xb).tolist()))
    copy_verdicts = {p: v for p, v in verdicts.items()
                     if is_copy(v, min_inliers, min_occupancy, min_affine, max_anisotropy)}
    groups = _with_exact_copies(components, exact, rows, copy_verdicts, similarity, order)
    used = {i for g in groups for i in g.ids}
    unreadable = sorted(rows[i]["path"] for i in source.unreadable)
    return DuplicateReport(groups, {i: rows[i] for i in used}, candidates=candidates, verified=len(verdicts),
                           unreadable=unreadable,
                           timings=timings)


def pair_keys(pairs) -> np.ndarray:
    """(a, b) pairs of image ids -> int64 keys a·2³² + b (ids are SQLite rowids < 2³¹)."""
    keys = np.fromiter((a for pair in pairs for a in pair), np.int64).reshape(-1, 2)
    return (keys[:, 0] << 32) | keys[:, 1]


def _with_exact_copies(components: list[list[int]], exact: dict[int, list[int]], rows: dict[int, dict[str, Any]],
                       copy_verdicts: dict[tuple[int, int], PairVerdict],
                       similarity: dict[tuple[int, int], float],
                       order: dict[int, tuple] | None = None) -> list[DuplicateGroup]:
    """Final groups: each representative brings its exact copies; the keep image is chosen among all
    (order: sort keys by id, best first; keep_order of the row for the ids it lacks)."""
    order = order or {}
    by_image: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for pair in copy_verdicts:
        by_image[pair[0]].append(pair)
    groups = []
    grouped_reps = {i for c in components for i in c}
    singles = [[rep] for rep in exact if rep not in grouped_reps]
    for members in components + singles:
        ids = sorted({i for rep in members for i in exact.get(rep, [rep])},
                     key=lambda i: order[i] if i in order else keep_order(rows[i]))
        pairs = []
        for rep in members:
            copies = exact.get(rep, [rep])
            pairs += [DuplicatePair(rep, other, int(rows[rep].get("keypoints") or 0), 1.0, exact=True)
                      for other in copies if other != rep]
        inside = set(members)
        for rep in members:
            for a, b in by_image[rep]:
                if b in inside:
                    verdict = copy_verdicts[(a, b)]
                    pairs.append(DuplicatePair(a, b, verdict.inliers, round(similarity.get((a, b), 0.0), 4),
                                               mirrored=verdict.mirrored))
        groups.append(DuplicateGroup(ids, ids[0], pairs))
    groups.sort(key=lambda g: (-len(g.ids), rows[g.keep]["path"]))
    return groups
