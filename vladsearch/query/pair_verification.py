"""Geometric verification of many image pairs at once, on all cores, for whole-collection verbs.

`duplicates` and `pairs --verified` check thousands of candidate pairs (a, b) that a kNN
search proposed. Each check is independent: match the two images' local features, fit a
homography (vladsearch.query.rerank), and, for SIFT, try again with one side mirrored so that
flipped copies verify. The pairs of one block go to a pool of forked workers that read the
features from the index's feature cache themselves (memory-mapped) or from a dict of
re-extracted features the parent loaded before forking; only small results travel back.

A verdict also records where the inliers lie and what map relates them: `occupancy`, how
much of each image's keypoint-bearing extent the inliers reach along its rows and columns
(text drawn on unrelated photographs — a caption banner, meme text at the top and bottom —
verifies through the letters alone, but those inliers sit in one or two bands), `affine`,
the fraction of inliers one affine map explains (edited copies are affine images of their
source; another viewpoint needs perspective), `anisotropy`, how unequally that map scales
two directions, and `skew`, how far it turns the image's x and y axes from perpendicular.
A copy is scaled alike in every direction, or resized to another aspect ratio, which keeps
the axes perpendicular; a planar object seen square-on in one photo and obliquely in
another is foreshortened along some other direction.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vladsearch.query.rerank import (
    DEFAULT_MIN_INLIERS,
    DEFAULT_THRESHOLD_PX,
    REFERENCE_SIDE,
    match_descriptors,
    mirror_sift_descriptors,
    verify_matches,
)

# keypoints N×2 float32, descriptors N×D float32; or an object with `feature_count`, `head(n)` and the
# same two items, read on first use (collection.knn.CachedFeatures)
FeaturePair = tuple[np.ndarray, np.ndarray]
# Pairs handed to a worker at once (amortises the inter-process round trip, ~5 ms a pair).
PAIRS_PER_TASK = 64


@dataclass(frozen=True)
class PairVerdict:
    """The verification of one pair of image ids: inliers, whether a's mirror matched, inlier geometry."""

    a: int
    b: int
    inliers: int
    mirrored: bool = False
    occupancy: float = 0.0
    affine: float = 0.0
    anisotropy: float = 1.0
    skew: float = 0.0
    rotation: float = 0.0  # degrees the affine map turns a (mirrored first, if mirrored) onto b
    spread: float = 0.0  # like occupancy, along each image's better covered axis (text: one band, wide)


def mirrored_features(keypoints: np.ndarray, descriptors: np.ndarray) -> FeaturePair:
    """SIFT features of the horizontally flipped image (x mirrored, descriptor cells permuted)."""
    flipped = np.array(keypoints, np.float32, copy=True)
    flipped[:, 0] = -flipped[:, 0]
    return flipped, mirror_sift_descriptors(descriptors)


OCCUPANCY_BINS = 20


def band_occupancy(inlier_points: np.ndarray, all_points: np.ndarray, bins: int = OCCUPANCY_BINS) -> float:
    """How far the inliers spread over the image's content, along its less covered axis.

    Each axis (x, then y) of the keypoints' box is cut into `bins` slices; of the slices that
    hold a keypoint, the fraction that hold an inlier. Letters drawn on two unrelated photos
    verify, but their inliers fill only the slices of the text lines (one caption banner, or
    meme text at the top and bottom: ≤ 0.25 of the rows measured); shared photo content
    reaches most of them (edited copies ≥ 0.29, median 0.85). Axis-aligned on purpose:
    captions are written along the image's rows (or columns, after a 90° turn).
    inlier_points M×2, all_points N×2 float -> [0, 1].
    """
    return min(axis_occupancy(inlier_points, all_points, bins))


def axis_occupancy(inlier_points: np.ndarray, all_points: np.ndarray,
                   bins: int = OCCUPANCY_BINS) -> tuple[float, float]:
    """(x, y): the fraction of keypoint-bearing column and row slices that hold an inlier (see band_occupancy)."""
    if len(inlier_points) < 3 or len(all_points) < 2:
        return 0.0, 0.0
    low, high = all_points.min(axis=0), all_points.max(axis=0)
    if np.any(high <= low):
        return 0.0, 0.0
    fractions = []
    for axis in (0, 1):
        content = _slices_hit(all_points[:, axis], low[axis], high[axis], bins)
        reached = _slices_hit(inlier_points[:, axis], low[axis], high[axis], bins)
        fractions.append(float((reached & content).sum()) / max(int(content.sum()), 1))
    return fractions[0], fractions[1]


def _slices_hit(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """Which of `bins` equal slices of [low, high] hold at least one of `values` (bool, bins)."""
    at = np.clip(((values - low) * (bins / (high - low))).astype(np.int64), 0, bins - 1)
    return np.bincount(at, minlength=bins) > 0


def affine_fit(points_a: np.ndarray, points_b: np.ndarray, threshold: float = DEFAULT_THRESHOLD_PX,
               angle: bool = False) -> tuple[float, ...]:
    """(fraction of homography inliers one affine map also explains, its anisotropy, its skew).

    Edited copies (crop, rescale, rotation, mirror) are similarity images of their source:
    an affine map explains them and scales every direction alike (anisotropy, the ratio of
    its singular values, ≤ 1.031 over 2,684 verified copy pairs of the benchmark
    collections). A resize to another aspect ratio, before or after a turn, scales unequally
    but keeps the image's axes perpendicular: skew, |cos| of the angle between the images of
    the x and y axes (or of the rows, for a turn before the resize), ≤ 0.004 measured.
    Another viewpoint needs the perspective part of the homography, or foreshortens along
    another direction: a magazine cover seen square-on and from above is an affine image of
    itself at anisotropy 1.19, skew 0.021; graf's frames 1-2 1.17, 0.019. The fit is at
    `threshold` px of 1024. points_a, points_b: M×2 matched inlier positions -> ([0, 1], ≥ 1, [0, 1]).
    angle: append the map's rotation in degrees (of its nearest similarity; 90 for a quarter turn).
    """
    if angle:
        fit = affine_fit(points_a, points_b, threshold)
        return (*fit, _rotation_degrees(points_a, points_b, threshold) if fit[0] > 0 else 0.0)
    if len(points_a) < 3:
        return 0.0, 1.0, 0.0
    a = points_a * _reference_scale(points_a)
    b = points_b * _reference_scale(points_b)
    try:
        model, mask = cv2.estimateAffine2D(a, b, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                           maxIters=2000, confidence=0.999, refineIters=10)
    except cv2.error:
        return 0.0, 1.0, 0.0
    if model is None or mask is None:
        return 0.0, 1.0, 0.0
    linear = model[:, :2]
    singular = np.linalg.svd(linear, compute_uv=False)
    if singular[1] <= 0:
        return float(mask.sum()) / len(points_a), float("inf"), 1.0
    return float(mask.sum()) / len(points_a), float(singular[0] / singular[1]), min(_cosine(*linear.T), _cosine(*linear))


def _rotation_degrees(points_a: np.ndarray, points_b: np.ndarray, threshold: float) -> float:
    """The turn, in degrees, of the similarity map that best takes a's points onto b's."""
    a, b = points_a * _reference_scale(points_a), points_b * _reference_scale(points_b)
    model, _ = cv2.estimateAffinePartial2D(a, b, method=cv2.RANSAC, ransacReprojThreshold=threshold)
    return float(np.degrees(np.arctan2(model[1, 0], model[0, 0]))) if model is not None else 0.0


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    return abs(float(u @ v)) / float(np.linalg.norm(u) * np.linalg.norm(v))


def _reference_scale(points: np.ndarray) -> float:
    extent = float(np.ptp(points, axis=0).max()) if len(points) else 0.0
    return min(1.0, REFERENCE_SIDE / extent) if extent > 0 else 1.0


def _match_once(a: FeaturePair, b: FeaturePair, flipped: bool, model: str,
                fit_from: int = 0) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """(a's keypoints as matched, matches, inliers, inlier mask); with fewer than `fit_from`
    tentative matches no model is fitted (0 inliers): it could not reach that many anyway."""
    kps_a, desc_a = mirrored_features(*a) if flipped else a
    matches = match_descriptors(desc_a, b[1])
    if len(matches) < fit_from:
        return kps_a, matches, 0, np.zeros(len(matches), bool)
    inliers, mask = verify_matches(kps_a, b[0], matches, model=model)
    return kps_a, matches, inliers, mask


def _head(features: FeaturePair, count: int) -> FeaturePair:
    """The `count` strongest features (stored strongest first); a lazy cache entry reads only those."""
    if hasattr(features, "head"):
        return features.head(count)
    return features[0][:count], features[1][:count]


def _count(features: FeaturePair) -> int:
    return features.feature_count if hasattr(features, "feature_count") else len(features[0])


def screen_pair(a: FeaturePair, b: FeaturePair, keypoints: int, orientations: Sequence[bool] = (False,),
                model: str = "homography", fit_from: int = 0) -> tuple[int, bool]:
    """(inliers, mirrored) with only the `keypoints` strongest features of each side (cheap first pass).

    Features are stored strongest first (cache and re-extraction alike), so this is a slice.
    orientations: which of a's sides to try (False: as is, True: mirrored).
    """
    small_a, small_b = _head(a, keypoints), _head(b, keypoints)
    best = (0, orientations[0])
    for flipped in orientations:
        inliers = _match_once(small_a, small_b, flipped, model, fit_from)[2]
        if inliers > best[0]:
            best = (inliers, flipped)
    return best


def orientations_for(mirror: bool | str) -> tuple[bool, ...]:
    """a's sides to try: False -> as is; True -> as is, then mirrored; "mirrored" -> mirrored, then
    as is; "mirrored only" -> mirrored; "both" -> as is and mirrored, the better one kept."""
    if mirror == "mirrored":
        return (True, False)
    if mirror == "mirrored only":
        return (True,)
    return (False, True) if mirror else (False,)


def verify_pair(a: FeaturePair, b: FeaturePair, mirror: bool | str = False, min_inliers: int = DEFAULT_MIN_INLIERS,
                model: str = "homography", screen: int = 0, screen_inliers: int = 0,
                counts: bool = True, rotation: bool = False) -> tuple[int, bool, float, float, float]:
    """(inliers, mirrored, band occupancy, affine fraction, anisotropy, skew) of one pair of (keypoints N×2, descriptors N×D).

    mirror: when the direct match gives fewer than `min_inliers`, match a's mirrored SIFT
    features too and keep the better one (a homography can hold the reflection);
    "mirrored": the mirrored side first (the pair was proposed by a mirrored VLAD alone; in a
    large group of copies, a plain copy may be among its mirror's neighbours but not its own).
    screen: first match only the `screen` strongest features of each side; a pair with fewer
    than `screen_inliers` inliers there (each side tried) is rejected without the full match
    (the full match costs (N / screen)² as much). 0: no screening.
    The band occupancy and affine fit are computed for pairs that reach `min_inliers`
    only (0.0, 0.0, 1.0, 0.0 otherwise). counts=False: a side with fewer tentative matches than it needs
    inliers is not fitted and counts 0 (`duplicates` only needs the verdict; `pairs` ranks
    by the counts themselves).
    """
    order = orientations_for(mirror)
    if screen and screen_inliers and max(_count(a), _count(b)) > screen:
        inliers, flipped = screen_pair(a, b, screen, order, model, 0 if counts else screen_inliers)
        if inliers < screen_inliers:
            return (inliers, flipped, 0.0, 0.0, 1.0, 0.0)
        order = (flipped,) + tuple(o for o in order if o != flipped)
    best, best_points = (0, order[0]), None
    for flipped in order:
        kps_a, matches, inliers, mask = _match_once(a, b, flipped, model, 0 if counts else min_inliers)
        if inliers > best[0]:
            chosen = matches[mask]
            best, best_points = (inliers, flipped), (kps_a, chosen)
        if best[0] >= min_inliers and mirror != "both":
            break
    if best_points is None or best[0] < min_inliers:
        return (*best, 0.0, 0.0, 1.0, 0.0) + ((0.0, 0.0) if rotation else ())
    kps_a, chosen = best_points
    pa, pb = kps_a[chosen[:, 0]].astype(np.float64), b[0][chosen[:, 1]].astype(np.float64)
    axes_a, axes_b = axis_occupancy(pa, kps_a), axis_occupancy(pb, b[0])
    occupancy = min(*axes_a, *axes_b)
    if not rotation:
        return (*best, occupancy, *affine_fit(pa, pb))
    # rotation: + the turn (degrees) and the spread (the better covered axis, in the image that covers less)
    return (*best, occupancy, *affine_fit(pa, pb, angle=True), min(max(axes_a), max(axes_b)))


# --- the pool ----------------------------------------------------------------------------
# Set in the parent before the fork; workers inherit them (nothing large is pickled).
_features_of: Callable[[int], FeaturePair | None] | None = None
_mirror: bool | str = False
_hints: Mapping[tuple[int, int], bool | str] = {}
_min_inliers = DEFAULT_MIN_INLIERS
_model = "homography"
_screen = (0, 0)
_counts = True


def _verify_chunk(pairs: Sequence[tuple[int, int]]) -> list[PairVerdict]:
    out = []
    loaded: dict[int, FeaturePair | None] = {}  # a chunk's pairs share images (one query's candidates)
    for a, b in pairs:
        for image_id in (a, b):
            if image_id not in loaded:
                loaded[image_id] = _features_of(image_id)
        fa, fb = loaded[a], loaded[b]
        if fa is None or fb is None or _count(fa) == 0 or _count(fb) == 0:
            out.append(PairVerdict(a, b, 0))
            continue
        out.append(PairVerdict(a, b, *verify_pair(fa, fb, _hints.get((a, b), _mirror), _min_inliers, _model, *_screen,
                                                counts=_counts, rotation=True)))
    return out


def _init_worker() -> None:
    from vladsearch.encoding.compact_codes import one_thread_after_fork

    one_thread_after_fork()  # one process per core; and the parent's OpenMP pool does not survive the fork


def verify_pairs(pairs: Sequence[tuple[int, int]], features_of: Callable[[int], FeaturePair | None],
                 workers: int | None = None, mirror: bool = False, min_inliers: int = DEFAULT_MIN_INLIERS,
                 model: str = "homography", screen: int = 0, screen_inliers: int = 0,
                 hints: Mapping[tuple[int, int], bool | str] | None = None,
                 counts: bool = True) -> list[PairVerdict]:
    """Verify every (a, b) pair of image ids, in parallel; results in input order.

    features_of(id) -> (keypoints, descriptors) or None (a missing image: 0 inliers). It is
    called inside forked workers, so it may read memory-mapped caches or a dict filled
    before this call. workers: processes (None: all cores; 1: in this process).
    screen, screen_inliers: the cheap first pass of `verify_pair` (0: none).
    hints: per (a, b), the `mirror` argument of `verify_pair` for that pair (default `mirror`).
    counts: as in `verify_pair` (False: skip fitting pairs that cannot reach `min_inliers`).
    """
    global _features_of, _mirror, _min_inliers, _model, _screen, _hints, _counts
    _counts = counts
    _features_of, _mirror, _min_inliers, _model, _hints = features_of, mirror, min_inliers, model, hints or {}
    _screen = (screen, screen_inliers)
    pairs = [(int(a), int(b)) for a, b in pairs]
    workers = workers or len(os.sched_getaffinity(0))
    chunks = [pairs[i:i + PAIRS_PER_TASK] for i in range(0, len(pairs), PAIRS_PER_TASK)]
    if workers == 1 or len(chunks) <= 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return [v for chunk in chunks for v in _verify_chunk(chunk)]
    with multiprocessing.get_context("fork").Pool(min(workers, len(chunks)), initializer=_init_worker) as pool:
        return [v for result in pool.imap(_verify_chunk, chunks) for v in result]
