"""The one verifier: what a candidate image is to a query — identical, an edited copy, the same scene, or nothing.

Every verb that confirms a match asks this module: `search` (the query against its best VLAD
candidates), `duplicates` (pairs of the collection), `pairs --verified`, the Python API and
the server. So one pair gets one verdict whoever asks.

The vocabulary:

    identical    the same content: the same bytes (SHA-1 of the file, as the catalog stores it)
    copy         the same photograph, edited (crop, scale, rotation, mirror, caption, colour):
                 local features agree on one homography, one affine map explains the inliers,
                 scales every direction alike (or keeps the axes perpendicular: a resize to
                 another aspect ratio), and the inliers reach across the image, not one band
    same scene   the same place or object, confirmed by geometry from another viewpoint or
                 light: enough inliers of one homography (any feature), or, for features
                 with a learned matcher (ALIKED, DISK: LightGlue; XFeat: LighterGlue), enough
                 inliers of one fundamental matrix among the learned matches (a 3D scene)
    None         not confirmed: the candidate is only a VLAD neighbour

Each verdict comes with a confidence in [0, 1]: the precision measured at that verdict and
inlier count on data with ground truth (`benchmarks/answers.py`, docs/BENCHMARKS.md "Answers"),
as the lower end of its 95 % Wilson interval, so a bin with few pairs claims less.

Features for verification come from the index's cache (`build` keeps them by default, as
product-quantised codes) or, for an index built without it, are extracted again from the
photos (`database_features`); `FeatureSource` serves both by image id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vladsearch.encoding.encoder import DEFAULT_KEEP_FEATURES
from vladsearch.features.extraction import extract_images
from vladsearch.query.matching import VerificationSettings, match_features
from vladsearch.query.pair_verification import PairVerdict, verify_pairs
from vladsearch.query.rerank import DEFAULT_MIN_INLIERS, verify_matches

IDENTICAL = "identical"
COPY = "copy"
SAME_SCENE = "same scene"
VERDICTS = (IDENTICAL, COPY, SAME_SCENE)  # best first: the order of confirmed matches
VERDICT_RANK = {verdict: rank for rank, verdict in enumerate(VERDICTS)}

# Keypoints per database image used for verification (cached at build, or re-extracted).
VERIFY_KEYPOINTS = DEFAULT_KEEP_FEATURES

# --- what counts as a copy (measured for `duplicates`, shared by every verb) ------------------
# Measured on SIFT features of 72 photographs (scikit-image, oxford_affine_subset, homogr_pairs),
# their edited copies, other views of the same scenes, and unrelated photographs carrying the
# same caption (`benchmarks/dedup.py distinct`'s collection):
# in both images the inliers must reach this fraction of the keypoint-bearing rows and of the
# columns (pair_verification.band_occupancy): edited copies ≥ 0.29 (0.5 % below 0.40, 2,692
# verified copy pairs of both benchmark collections), text shared by unrelated photographs —
# one caption banner, a 30 %-high banner, meme text at top and bottom — ≤ 0.25 (303 pairs,
# 15-219 inliers each: the letters verify);
MIN_OCCUPANCY = 0.3
# and this fraction of the homography inliers must fit one affine map: edited copies ≥ 0.93
# (median 1.00); graf viewpoint changes ≤ 0.73, homogr wide-baseline pairs median 0.73, but
# edited copies of graf frames 3 and 4 up to 0.92 (docs/BENCHMARKS.md, "Grouping").
MIN_AFFINE = 0.93
# and that affine map must scale all directions nearly alike (ratio of its singular values):
# edited copies ≤ 1.031 (2,684 verified copy pairs, both collections), a magazine cover seen
# square-on vs from above (homogr LePoint1B/2B, affine fraction 0.95-1.0) 1.17-1.21, Bruges
# tower views 1.08-1.10 — unless it keeps the image's axes perpendicular (a resize to another
# aspect ratio, before or after a turn: skew ≤ 0.004 on the 38 of 40 such copies that verify;
# the views above 0.021-0.084, graf frames 1-2 0.019).
MAX_ANISOTROPY = 1.08
MAX_RESIZE_SKEW = 0.01
# Cheap first pass (pair_verification.verify_pair): the 256 strongest features of each side must
# give this many inliers before all are matched. Unrelated pairs reach at most 7-8 inliers with
# all 1,024 features (rerank.DEFAULT_MIN_INLIERS), fewer with 256.
SCREEN_KEYPOINTS = 256
SCREEN_INLIERS = 8
# A confirmed "same scene" needs its inliers to reach MIN_OCCUPANCY of both images' keypoint rows
# and columns, or, for another view that shares only a small part of the scene, at least
# MIN_SCENE_OCCUPANCY along both axes within a patch no more than MAX_SCENE_ELONGATION times longer
# than wide. Measured (pair_verification.axis_occupancy; occupancy = the less covered axis, spread =
# the better covered one): homogr's other views BostonLib 0.15 / 0.15, ExtremeZoom 0.20 / 0.27,
# BruggeTower 0.25 / 0.40, Eiffel 0.30 / 0.35; one caption banner shared by unrelated photos
# 0.10-0.15 / 0.50-0.75 (20 pairs, 86-174 inliers: its letters verify, spread ≥ 3.3 × occupancy).
MIN_SCENE_OCCUPANCY = 0.1
MAX_SCENE_ELONGATION = 2.5


def is_copy(verdict: PairVerdict, min_inliers: int = DEFAULT_MIN_INLIERS, min_occupancy: float = MIN_OCCUPANCY,
            min_affine: float = MIN_AFFINE, max_anisotropy: float = MAX_ANISOTROPY) -> bool:
    """Whether a verified pair is an edited copy (see the thresholds above)."""
    return (verdict.inliers >= min_inliers and verdict.occupancy >= min_occupancy
            and verdict.affine >= min_affine
            and (verdict.anisotropy <= max_anisotropy or verdict.skew <= MAX_RESIZE_SKEW))


def classify(verdict: PairVerdict, same_content: bool = False, min_inliers: int = DEFAULT_MIN_INLIERS) -> str | None:
    """The verdict of one verified pair: IDENTICAL, COPY, SAME_SCENE or None (not confirmed).

    same_content: the two files have the same SHA-1 (checked by the caller, from the catalog).
    """
    if same_content:
        return IDENTICAL
    if verdict.inliers < min_inliers:
        return None
    if is_copy(verdict, min_inliers):
        return COPY
    if verdict.occupancy >= MIN_OCCUPANCY or (
            verdict.occupancy >= MIN_SCENE_OCCUPANCY and verdict.spread <= MAX_SCENE_ELONGATION * verdict.occupancy):
        return SAME_SCENE
    return None


# Measured precision by verdict and inliers (`python benchmarks/answers.py run` on its four dev sets,
# then `calibrate`; docs/ANSWERS.md "Confidence"): (verdict, lowest inlier count of the bin) ->
# confidence, the lower end of the 95 % Wilson interval of the bin's precision. Every one of the 863
# confirmed candidates there was right (wrong candidates reached at most 7 inliers), so the bounds
# say how many pairs each bin holds: copies 15-59 inliers 16 pairs (none below 30), 60-119 53,
# ≥ 120 584; the same scene 15-19 10, 20-59 52, 60-119 28, ≥ 120 38. Identical files (the same
# SHA-1) are identical by construction (82 of 82 measured).
CONFIDENCE: dict[str, list[tuple[int, float]]] = {
    IDENTICAL: [(0, 1.0)],
    COPY: [(15, 0.806), (60, 0.932), (120, 0.993)],
    SAME_SCENE: [(15, 0.722), (20, 0.871), (60, 0.879), (120, 0.908)],
}


# The same scene confirmed by a learned matcher and a fundamental matrix (`verify_scenes`): measured
# apart, because its inliers count differently (see LEARNED_CONFIDENCE's comment below).
LEARNED_SCENE = "learned"


def confidence(verdict: str | None, inliers: int, how: str = "") -> float:
    """The measured precision of a verdict at this many inliers (0.0 for None); `how`
    LEARNED_SCENE: a same scene confirmed by a learned matcher."""
    if verdict is None:
        return 0.0
    value = 0.0
    for lowest, precision in (LEARNED_CONFIDENCE if how == LEARNED_SCENE else CONFIDENCE[verdict]):
        if inliers >= lowest:
            value = precision
    return value


# --- local features by image id ------------------------------------------------------------
class FeatureSource:
    """Local features by image id: a snapshot's cache (memory-mapped) or re-extracted images.

    Extra features that are not in the index (a query's) can be registered under negative ids
    with `add`, so that one pool of verification workers serves queries and database alike.
    """

    def __init__(self, encoder, snapshot, root: Path, rows: dict[int, dict[str, Any]],
                 workers: int | None) -> None:
        self.encoder, self.snapshot, self.root, self.rows, self.workers = encoder, snapshot, Path(root), rows, workers
        self.extracted: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.unreadable: set[int] = set()  # no cache, and the photo could not be decoded again

    @classmethod
    def of_index(cls, index, rows: dict[int, dict[str, Any]], workers: int | None) -> FeatureSource:
        """The features of an open `Index` (its current snapshot and root)."""
        return cls(index.encoder, index.snapshot, index.root, rows, workers)

    @property
    def cached(self) -> bool:
        """Whether the snapshot keeps any cached features (else every image is extracted again)."""
        return any(self.snapshot.has_cached_features(row) for row in self.rows.values())

    def add(self, image_id: int, features: tuple[np.ndarray, np.ndarray]) -> None:
        """Serve `features` (keypoints N×2, descriptors N×D, strongest first) under `image_id`."""
        self.extracted[image_id] = features

    def load(self, ids: set[int]) -> None:
        """Re-extract (in parallel) the images of `ids` that have no cached features; forget older ones."""
        missing = [i for i in ids if i >= 0 and i in self.rows and not self.snapshot.has_cached_features(self.rows[i])]
        self.extracted = {i: f for i, f in self.extracted.items() if i in ids or i < 0}
        wanted = [i for i in missing if i not in self.extracted]
        if wanted:
            self.extracted.update(database_features(self.encoder, self.snapshot, self.root, wanted, self.workers))
            self.unreadable.update(i for i in wanted if i not in self.extracted)

    def __call__(self, image_id: int) -> tuple[np.ndarray, np.ndarray] | CachedFeatures | None:
        if image_id in self.extracted:
            return self.extracted[image_id]
        row = self.rows.get(image_id)
        where = None if row is None else self.snapshot.feature_rows(row)
        return None if where is None else CachedFeatures(*where)


class CachedFeatures:
    """One image's cached (keypoints, descriptors), read and decoded on first use.

    `head(n)` reads only the n strongest (the store keeps them first): verification screens
    most pairs with 256 features, and decoding all ~1,000 cost a quarter of its time.
    """

    def __init__(self, store, offset: int, count: int) -> None:
        self.store, self.offset, self.feature_count = store, offset, count
        self._all: tuple[np.ndarray, np.ndarray] | None = None
        self._head: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def head(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._all is not None:
            return self._all[0][:n], self._all[1][:n]
        if self._head is None or self._head[0] != n:
            self._head = (n, self.store.get(self.offset, min(n, self.feature_count)))
        return self._head[1]

    def __getitem__(self, item: int) -> np.ndarray:
        if self._all is None:
            self._all = self.store.get(self.offset, self.feature_count)
        return self._all[item]

    def __iter__(self):
        yield self[0]
        yield self[1]

    def __len__(self) -> int:
        return 2


def database_features(encoder, snapshot, root: Path, ids: list[int],
                      workers: int | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Local features (keypoints N×2, descriptors N×D float32, strongest first) of database images.

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
                found[image_id] = strongest(item.features.keypoints, item.features.descriptors,
                                            item.features.scores)
    return found


def strongest(keypoints: np.ndarray, descriptors: np.ndarray, scores: np.ndarray | None,
              count: int = VERIFY_KEYPOINTS) -> tuple[np.ndarray, np.ndarray]:
    """The `count` strongest features, strongest first (as the cache stores them)."""
    if scores is None or len(scores) != len(keypoints):
        return keypoints[:count], descriptors[:count]
    keep = np.argsort(-np.asarray(scores), kind="stable")[:count]
    return keypoints[keep], descriptors[keep]


# --- verifying candidates -------------------------------------------------------------------
@dataclass(frozen=True)
class Confirmation:
    """The answer for one (a, b) pair: its verdict (None: not confirmed), confidence and evidence."""

    a: int
    b: int
    verdict: str | None
    confidence: float
    inliers: int
    mirrored: bool = False


def verify_candidates(pairs: Sequence[tuple[int, int]], source: FeatureSource, mirror: bool | dict = False,
                      identical: set[tuple[int, int]] | None = None, workers: int | None = None,
                      min_inliers: int = DEFAULT_MIN_INLIERS, screen: bool = True) -> list[Confirmation]:
    """Verify every (a, b) pair of ids served by `source`; results in input order.

    mirror: try a's mirrored features too (features whose `capabilities().mirrorable`), or a
    dict (a, b) -> the `mirror` argument of `pair_verification.verify_pair` for that pair.
    identical: pairs whose files have the same SHA-1 (IDENTICAL without matching pixels).
    screen: reject pairs that the 256 strongest features of each side cannot confirm first.
    """
    identical = identical or set()
    to_match = [p for p in pairs if p not in identical]
    source.load({i for pair in to_match for i in pair})
    hints = mirror if isinstance(mirror, dict) else None
    verdicts = verify_pairs(to_match, source, workers, mirror=bool(mirror), min_inliers=min_inliers,
                            screen=SCREEN_KEYPOINTS if screen else 0, screen_inliers=SCREEN_INLIERS if screen else 0,
                            hints=hints, counts=False)
    by_pair = {(v.a, v.b): v for v in verdicts}
    out = []
    for a, b in pairs:
        if (a, b) in identical:
            out.append(Confirmation(a, b, IDENTICAL, confidence(IDENTICAL, 0), 0))
            continue
        verdict = by_pair[(a, b)]
        kind = classify(verdict, min_inliers=min_inliers)
        out.append(Confirmation(a, b, kind, confidence(kind, verdict.inliers), verdict.inliers, verdict.mirrored))
    return out


# --- the same scene, by a learned matcher and epipolar geometry -----------------------------
# Candidates verified this way per query: the first LEARNED_DEPTH VLAD candidates that the
# homography stage did not confirm. On the places dev set the true partner is among ALIKED's first
# 5 / 10 / 15 VLAD candidates for 0.83 / 0.89 / 0.94 of the (unturned) queries, and LightGlue
# costs 0.1-0.4 s a pair of 1,024 keypoints on 2 CPU cores, more under load (it stops early on
# confident pairs): 10 keeps a query at a few seconds (docs/BENCHMARKS.md, "Places").
LEARNED_DEPTH = 10
# (lowest inlier count of the bin, confidence), measured like CONFIDENCE on the places dev set
# (`benchmarks/places_eval.py DEV --features aliked --max-side 640 --rerank 5`, 865 candidate pairs of
# 173 queries, docs/BENCHMARKS.md "Places"): every pair at or above the bar (50 inliers at 1 px) was
# right, wrong pairs reached at most 37; 50-99 inliers 19 pairs, 100-199 39, ≥ 200 200. The
# confidence is the lower end of the 95 % Wilson interval, as for CONFIDENCE.
LEARNED_CONFIDENCE: list[tuple[int, float]] = [(0, 0.832), (100, 0.91), (200, 0.981)]


def verify_scenes(pairs: Sequence[tuple[int, int]], source: FeatureSource, features: str,
                  settings: VerificationSettings, sizes: dict[int, tuple[int, int]] | None = None,
                  ) -> list[Confirmation]:
    """Match each (a, b) with the learned matcher of `features` and fit `settings.model` (the
    fundamental matrix): SAME_SCENE with at least `settings.min_inliers` inliers, else None.

    Runs in this process (the matcher is a torch model, loaded once, on the GPU where there is
    one). sizes: image id -> (width, height), the frame LightGlue normalises keypoints by
    (the keypoints' extent when missing).
    """
    sizes = sizes or {}
    source.load({i for pair in pairs for i in pair})
    out = []
    for a, b in pairs:
        fa, fb = source(a), source(b)
        if fa is None or fb is None:
            out.append(Confirmation(a, b, None, 0.0, 0))
            continue
        (ka, da), (kb, db) = tuple(fa), tuple(fb)
        matches = match_features(features, (ka, da, *([sizes[a]] if a in sizes else [])),
                                 (kb, db, *([sizes[b]] if b in sizes else [])))
        inliers, _ = verify_matches(ka, kb, matches, model=settings.model, threshold=settings.threshold)
        verdict = SAME_SCENE if inliers >= settings.min_inliers else None
        out.append(Confirmation(a, b, verdict, confidence(verdict, inliers, LEARNED_SCENE), int(inliers)))
    return out
