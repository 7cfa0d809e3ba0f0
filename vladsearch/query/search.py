"""The read path: query images → VLAD → candidates → verification (the answer) → query expansion.

Everything here reads one `Snapshot` (a committed state of the index) and encodes with
the index's `Encoder`; nothing here writes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vladsearch.encoding.encoder import Encoder
from vladsearch.features import capabilities
from vladsearch.features.extraction import extract_images, single_blas_thread
from vladsearch.io.images import list_images
from vladsearch.io.progress import progress_bar
from vladsearch.query.matching import learned_verification
from vladsearch.query.rerank import DEFAULT_MIN_INLIERS, mirror_sift_descriptors
from vladsearch.query.results import Match, SearchResult
from vladsearch.query.verification import (  # noqa: F401 - database_features: its old home
    COPY,
    IDENTICAL,
    LEARNED_DEPTH,
    VERDICT_RANK,
    VERIFY_KEYPOINTS,
    Confirmation,
    FeatureSource,
    database_features,
    strongest,
    verify_candidates,
    verify_scenes,
)
from vladsearch.store.snapshot import Snapshot

# Keypoints per database image used for verification (cached at build, or re-extracted).
RERANK_KEYPOINTS = VERIFY_KEYPOINTS
DEFAULT_TOP = 10
# VLAD candidates verified per query by default (and as many of the mirrored query's, for SIFT).
# On the dev sets of `benchmarks/answers.py` the true match ranks ≤ 5 (copies, rotated copies among
# other views of their scene) and ≤ 10 (homogr's wide-baseline pairs) in the plain or the mirrored
# list (docs/BENCHMARKS.md "Answers"); 15 leaves a margin for larger collections.
DEFAULT_VERIFY_DEPTH = 15
# The first VLAD candidates are matched in full; the others only when their 256 strongest features
# agree first (verification.SCREEN_INLIERS). Another view of a scene shares few of its strongest
# features: on homogr's wide-baseline pairs the screen alone confirmed 39 % of queries at rank 1,
# full matching of the first 3 (or 5) 57 %, of every candidate 64 % but at 1.8× the cost of the unverified
# search on the copy set (docs/BENCHMARKS.md "Answers").
FULL_MATCH_DEPTH = 3


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


@dataclass
class SearchOptions:
    """How a search runs; one set of defaults for the CLI, the Python API and the server.

    top: matches per query; rerank: VLAD candidates verified per query (0: no verification, the
    plain VLAD neighbours as they rank); unverified: after the confirmed matches, also list the
    candidates that were not confirmed (verified false); min_confidence: drop confirmed matches
    below this measured precision; mirrored: also search and verify the mirrored query (None:
    where the feature allows it, see `features.capabilities`); query_expansion: αQE with the N
    best (confirmed) neighbours; nprobe: IVF lists to visit; min_inliers: the verification
    threshold (None: rerank.DEFAULT_MIN_INLIERS).
    """

    top: int = DEFAULT_TOP
    rerank: int = DEFAULT_VERIFY_DEPTH
    unverified: bool = False
    min_confidence: float = 0.0
    mirrored: bool | None = None
    query_expansion: int = 0
    nprobe: int | None = None
    min_inliers: int | None = None

    def check(self) -> None:
        """Reject values no search can use, with what to pass instead."""
        if self.top < 1:
            raise ValueError(f"--top must be at least 1, got {self.top}")
        if self.rerank < 0 or self.query_expansion < 0:
            raise ValueError("--rerank and --query-expansion take a number of candidates ≥ 0 (0: off)")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"--min-confidence is a precision in [0, 1], got {self.min_confidence}")
        if self.min_confidence > 0 and not self.rerank:
            raise ValueError("--min-confidence needs verification: drop --rerank 0")


def search_index(encoder: Encoder, snapshot: Snapshot, root: Path, queries: list[str | os.PathLike],
                 options: SearchOptions | None = None, workers: int | None = None,
                 progress: bool = False) -> list[SearchResult]:
    """Encode each query like the database, search, verify the best candidates, answer.

    Each query's matches are its confirmed ones (identical, then copy, then same scene, each by
    strength; vladsearch.query.verification), and with `options.unverified` the other candidates after
    them. Database features come from the snapshot's cache, or are decoded again under `root`.
    With `options.rerank` 0: the plain VLAD neighbours, nothing verified.
    """
    options = options or SearchOptions()
    options.check()
    mirrorable = capabilities(encoder.params.features).mirrorable
    if options.mirrored and not mirrorable:
        raise ValueError(f"--mirrored works with mirrorable features only (sift, rootsift), not {encoder.params.features}")
    mirror = bool(options.rerank) and (mirrorable if options.mirrored is None else options.mirrored)
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
        xq_mirrored = (encoder.encode([mirror_sift_descriptors(items[i].features.descriptors) for i in good])
                       if mirror else None)
    k = max(options.top, options.rerank)
    D, I = snapshot.search(xq, k, options.nprobe)
    names = snapshot.paths_of([int(i) for i in I.ravel() if i >= 0])
    plain = []
    for row in range(len(good)):
        scores, ids = top_k(D[row], I[row], k)
        # An id without a name was removed by a commit after this snapshot was taken: skip it.
        plain.append([Match(names[int(i)], float(s), int(i)) for s, i in zip(scores, ids) if int(i) in names])
    if options.rerank:
        answers = _verify_queries([items[i] for i in good], plain, encoder,
                                  snapshot, root, options, xq_mirrored, mirror, workers)
        if not capabilities(encoder.params.features).rotation_invariant:
            _answer_turned(answers, [expanded[i][1] for i in good], encoder, snapshot, root, options, workers)
    else:
        answers = plain
    for row, position in enumerate(good):
        matches = answers[row]
        if options.query_expansion:
            matches = _expand(snapshot, xq[row], matches, options.query_expansion, k, options.nprobe, names)
        results[position].matches = matches[:options.top]
        results[position].verified = bool(options.rerank)
    return results


# Features whose descriptors turn with the image (not `capabilities().rotation_invariant`: ALIKED,
# DISK, SuperPoint, XFeat) neither find nor match a turned copy: on the answers copy set, ... A query
# that nothing confirms is searched again turned by each of these angles (until one confirms),
# verified by the homography stage only (a turned photo is an edited copy; ~0.5 s per turn and query
# for ALIKED at 640 px on 2 cores, paid only by unanswered queries).
QUERY_TURNS = (90, 270, 180)


def _answer_turned(answers: list[list[Match]], paths: list[Path], encoder: Encoder, snapshot: Snapshot,
                   root: Path, options: SearchOptions, workers: int | None) -> None:
    """Replace the answers of queries with no confirmed match by those of the query turned by
    QUERY_TURNS (the first turn that confirms anything), in place."""
    from types import SimpleNamespace

    from vladsearch.io.images import ImageError, load_image

    missing = [row for row, matches in enumerate(answers) if not any(m.verified for m in matches)]
    images = {}
    for row in missing:
        try:
            images[row] = load_image(paths[row], encoder.params.max_side, encoder.params.max_pixels)
        except ImageError:
            continue
    extractor = encoder.extractor()
    for turn in QUERY_TURNS:
        rows = [row for row in missing if row in images]
        if not rows:
            return
        items = []
        for row in rows:
            image = images[row]
            size = image.size if turn == 180 else (image.size[1], image.size[0])
            features = extractor.extract(np.ascontiguousarray(np.rot90(image.gray, k=turn // 90)), image.scale, size)
            items.append(SimpleNamespace(features=features, sha1=""))
        kept = [(row, item) for row, item in zip(rows, items) if len(item.features)]
        if not kept:
            return
        with single_blas_thread(extractor):
            xq = encoder.encode([item.features.descriptors for _, item in kept])
        D, I = snapshot.search(xq, options.rerank, options.nprobe)
        names = snapshot.paths_of([int(i) for i in I.ravel() if i >= 0])
        plain = [[Match(names[int(i)], float(s), int(i)) for s, i in zip(*top_k(D[r], I[r], options.rerank))
                  if int(i) in names] for r in range(len(kept))]
        found = _verify_queries([item for _, item in kept], plain, encoder, snapshot, root,
                                dataclasses.replace(options, unverified=False), None, False, workers, learned=False)
        for (row, _), confirmed in zip(kept, found):
            if confirmed:
                seen = {m.id for m in confirmed}
                answers[row] = confirmed + [m for m in answers[row] if m.id not in seen]
        missing = [row for row in missing if not any(m.verified for m in answers[row])]


def _verify_queries(items: list, plain: list[list[Match]], encoder: Encoder, snapshot: Snapshot,
                    root: Path, options: SearchOptions, xq_mirrored: np.ndarray | None, mirror: bool,
                    workers: int | None, learned: bool = True) -> list[list[Match]]:
    """Each query's confirmed matches, best first (+ the unconfirmed candidates with `unverified`);
    learned: give candidates one homography did not confirm the learned matcher's second chance."""
    depth = options.rerank
    candidates: list[dict[int, Match]] = [{m.id: m for m in matches[:depth]} for matches in plain]
    how: dict[tuple[int, int], bool | str] = {}  # (query, candidate) -> pair_verification's `mirror` argument
    for row, found in enumerate(candidates):
        for image_id in found:
            how[(-1 - row, image_id)] = False  # plain neighbours are matched as they are...
    if xq_mirrored is not None:  # ...a flipped copy's VLAD is unrelated to its source's: search the mirror too
        Dm, Im = snapshot.search(xq_mirrored, depth, options.nprobe)
        names = snapshot.paths_of([int(i) for i in Im.ravel() if i >= 0])
        for row, found in enumerate(candidates):
            for score, image_id in zip(*top_k(Dm[row], Im[row], depth)):
                image_id = int(image_id)
                if image_id not in names:
                    continue
                pair = (-1 - row, image_id)
                if pair not in how:
                    how[pair] = "mirrored only"
                else:  # found both ways: both sides are matched and the better kept (a mirrored copy of a
                    # nearly symmetric photo also verifies as it is, weakly: it must not stop there)
                    how[pair] = "both"
                if image_id not in found:
                    found[image_id] = Match(names[image_id], float(score), image_id)
    ids = sorted({i for found in candidates for i in found})
    rows = snapshot.rows_of(ids)
    source = FeatureSource(encoder, snapshot, root, rows, workers)
    identical = set()
    for row, item in enumerate(items):
        source.add(-1 - row, strongest(item.features.keypoints, item.features.descriptors, item.features.scores))
        digest = item.sha1  # of the bytes decoded for extraction: the file is not read twice
        identical.update((-1 - row, i) for i in candidates[row] if digest and rows.get(i, {}).get("sha1") == digest)
    pairs = list(how)
    unscreened = {(-1 - row, m.id) for row, matches in enumerate(plain) for m in matches[:FULL_MATCH_DEPTH]}
    # Without a cache, candidates are decoded again: a bounded number at once, each batch in parallel.
    at_once = len(pairs) if source.cached else RERANK_CANDIDATES_AT_ONCE
    confirmations: list[Confirmation] = []
    for at in range(0, len(pairs), at_once):
        chunk = pairs[at:at + at_once]
        for screen in (False, True):
            confirmations += verify_candidates([p for p in chunk if (p not in unscreened) == screen], source, how,
                                               identical, workers, screen=screen,
                                               min_inliers=options.min_inliers or DEFAULT_MIN_INLIERS)
    if learned:
        confirmations = _confirm_scenes(confirmations, plain, items, source, encoder, rows, options.rerank)
    by_query: list[list[Match]] = [[] for _ in plain]
    for c in confirmations:
        row = -1 - c.a
        match = candidates[row][c.b]
        by_query[row].append(Match(match.image, match.score, match.id, c.inliers, c.verdict is not None,
                                   match.score, c.verdict, c.confidence, c.mirrored))
    answers = []
    for row, checked in enumerate(by_query):
        confirmed = [m for m in checked if m.verified and m.confidence >= options.min_confidence]
        confirmed.sort(key=lambda m: (VERDICT_RANK[m.verdict], -m.inliers, -m.score))
        if options.unverified:
            seen = {m.id for m in confirmed}
            rest = {m.id: m for m in checked if m.id not in seen}
            confirmed += sorted(rest.values(), key=lambda m: -m.score)
            confirmed += [dataclasses.replace(m, verified=False, confidence=0.0)  # beyond the verified depth
                          for m in plain[row] if m.id not in seen and m.id not in rest]
        answers.append(confirmed)
    return answers


def _confirm_scenes(confirmations: list[Confirmation], plain: list[list[Match]], items: list, source: FeatureSource,
                    encoder: Encoder, rows: dict[int, dict], depth: int) -> list[Confirmation]:
    """For features with a learned matcher (the places preset's ALIKED): the first LEARNED_DEPTH
    VLAD candidates that one homography did not confirm get a second chance with learned matches
    and a fundamental matrix (another viewpoint of a 3D scene); the others stay as they are.
    A query already answered as identical to or a copy of an image is not matched again: its
    answer stands, and the learned matcher is the costly part of a search."""
    settings = learned_verification(encoder.params.features)
    if settings is None:
        return confirmations
    by_pair = {(c.a, c.b): c for c in confirmations}
    answered = {c.a for c in confirmations if c.verdict in (IDENTICAL, COPY)}
    pairs = [(-1 - row, m.id) for row, matches in enumerate(plain) for m in matches[:min(depth, LEARNED_DEPTH)]
             if -1 - row not in answered and (-1 - row, m.id) in by_pair and by_pair[(-1 - row, m.id)].verdict is None]
    if not pairs:
        return confirmations
    sizes = {i: (row["width"], row["height"]) for i, row in rows.items() if row.get("width") and row.get("height")}
    sizes.update({-1 - row: tuple(item.features.image_size) for row, item in enumerate(items)
                  if getattr(item.features, "image_size", None)})
    for c in verify_scenes(pairs, source, encoder.params.features, settings, sizes):
        by_pair[(c.a, c.b)] = c
    return list(by_pair.values())


def _expand(snapshot: Snapshot, query_vector: np.ndarray, matches: list[Match], n: int, k: int,
            nprobe: int | None, names: dict[int, str]) -> list[Match]:
    """αQE: search again with the query averaged with its n best (verified) neighbours.

    Verified matches keep their place at the top; the new ranking follows.
    """
    from vladsearch.query.rerank import average_query_expansion

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
