"""Re-ranking: geometric verification of the best VLAD candidates, and query expansion.

VLAD ranks by appearance; a candidate that really shows the query's scene also shares
many local matches that agree on one geometric transformation (Philbin et al., "Object
retrieval with large vocabularies and fast spatial matching", CVPR 2007). We match the
query's local features to each candidate's, fit a homography (or a fundamental matrix)
with MAGSAC++ (Barath et al., CVPR 2020) and score the candidate by its inliers.

Query expansion (αQE) and database-side augmentation (DBA) smooth the global vectors
with their neighbours (Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with
no human annotation", TPAMI 2018; Arandjelović & Zisserman, CVPR 2012 for DBA).

All functions are pure: numpy arrays in, new arrays out; inputs are never modified.
Shapes: keypoints N×2 float32 (x, y) pixels, descriptors N×D float32, matches M×2 int
(query index, database index), global vectors n×d float32, L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vladsearch.features.base import Features

# A candidate is "verified" when it has at least this many inliers. Measured with
# `python benchmarks/verification_threshold.py` (SIFT, 1024 strongest keypoints a side,
# ratio 0.8, MAGSAC++ at 4 px of a 1024 px image). Inliers per pair:
#   2,730 pairs of unrelated photographs  median 4, p99 7, max 7 (max 8 with a 4096-
#   (scikit-image, Oxford affine, homogr)  keypoint query, a 2048-keypoint database or
#                                          RootSIFT)
#   174 corridor frames ≥ 30 apart         median 0, max 6
#   162 true pairs (synthetic scale/JPEG/  median 238, p10 31, p5 10; 94% ≥ 15. The 9
#   crop/rotation/perspective copies,      below (4-10 inliers) are graf at 50-60° of
#   Oxford sequences, homogr, stereo)      viewpoint change and homogr's LePoint1-3 and
#                                          CapitalRegion: failures of SIFT matching itself
# 15 is about twice the largest unrelated count: 0 false verifications with margin.
# A fundamental matrix constrains only one coordinate per point, so unrelated pairs
# reach more inliers (median 8, max 15): its threshold is 30 (0 false, 90% of true pairs).
# Cost: ≈ 5 ms a pair at 1024 keypoints (matching ≈ 4.5 ms, MAGSAC++ ≈ 0.4 ms; one core).
DEFAULT_MIN_INLIERS = 15
DEFAULT_MIN_INLIERS_BY_MODEL = {"homography": DEFAULT_MIN_INLIERS, "fundamental": 30}
DEFAULT_THRESHOLD_PX = 4.0
DEFAULT_RATIO = 0.8
REFERENCE_SIDE = 1024  # thresholds are pixels of an image whose longer side is this
MIN_SAMPLE = {"homography": 4, "fundamental": 8}


@dataclass
class RerankedMatch:
    """One candidate after verification: its id, inlier count, VLAD score and verdict."""

    id: int
    inliers: int
    vlad_score: float
    verified: bool


def _squared_distances(desc_q: np.ndarray, desc_db: np.ndarray) -> np.ndarray:
    """Squared L2 distances Nq×Ndb as |a|² + |b|² - 2ab (one matrix product); rounding can
    leave a distance slightly below 0 (callers clip what they compare)."""
    dist = desc_q @ (desc_db * np.float32(-2.0)).T
    dist += np.einsum("ij,ij->i", desc_q, desc_q)[:, None]
    dist += np.einsum("ij,ij->i", desc_db, desc_db)[None, :]
    return dist


def match_descriptors(desc_q: np.ndarray, desc_db: np.ndarray, ratio: float = DEFAULT_RATIO) -> np.ndarray:
    """Mutual nearest neighbours that pass Lowe's ratio test (Lowe, IJCV 2004).

    A pair (i, j) is kept when j is i's nearest database descriptor, i is j's nearest
    query descriptor, and dist(i, j) < ratio · dist(i, second nearest of i). With a
    single database descriptor there is no second neighbour and the test passes.
    desc_q: Nq×D, desc_db: Ndb×D (any float dtype; raw SIFT is fine, no normalisation
    is assumed) -> M×2 int64 (query index, database index), sorted by query index.
    """
    desc_q = np.asarray(desc_q, np.float32)
    desc_db = np.asarray(desc_db, np.float32)
    if desc_q.ndim != 2 or desc_db.ndim != 2 or desc_q.shape[1] != desc_db.shape[1]:
        raise ValueError(f"descriptors must be N×D with the same D, got {desc_q.shape} and {desc_db.shape}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if len(desc_q) == 0 or len(desc_db) == 0:
        return np.zeros((0, 2), np.int64)
    dist = _squared_distances(desc_q, desc_db)
    rows = np.arange(len(desc_q))
    nearest = dist.argmin(axis=1)
    best = dist[rows, nearest]
    # mutual: no query descriptor is closer to j = nearest[i] than i. A column minimum is a
    # row-wise reduction (fast on a C-ordered matrix); argmin over axis 0 is strided, 6× slower.
    mutual = best <= dist.min(axis=0)[nearest]
    best = np.maximum(best, 0.0)
    dist[rows, nearest] = np.inf  # the second nearest is then the row minimum (cheaper than a sort)
    second = np.maximum(dist.min(axis=1), 0.0)
    passes_ratio = best < (ratio * ratio) * second  # squared distances: square the ratio
    if ratio == 1:
        passes_ratio |= best == second  # keep ties only when the test is switched off
    keep = np.flatnonzero(passes_ratio & mutual)
    if len(keep) > 1:  # equal distances could match one database descriptor twice: the first query wins
        keep = keep[np.sort(np.unique(nearest[keep], return_index=True)[1])]
    return np.stack([rows[keep], nearest[keep]], axis=1).astype(np.int64)


def _working_scale(points: np.ndarray, reference_side: int | None) -> float:
    """Factor that brings a point set's extent to at most `reference_side` pixels (≤ 1)."""
    finite = points[np.isfinite(points).all(axis=1)]
    if not reference_side or len(finite) == 0:
        return 1.0
    extent = float(np.ptp(finite, axis=0).max())
    return min(1.0, reference_side / extent) if extent > 0 else 1.0


def verify_matches(
    kps_q: np.ndarray,
    kps_db: np.ndarray,
    matches: np.ndarray,
    model: str = "homography",
    threshold: float = DEFAULT_THRESHOLD_PX,
    reference_side: int | None = REFERENCE_SIDE,
    max_iters: int = 2000,
    confidence: float = 0.999,
    seed: int = 0,
) -> tuple[int, np.ndarray]:
    """Count the matches consistent with one homography / fundamental matrix (MAGSAC++).

    `threshold` is the reprojection (or Sampson) error in pixels of an image whose
    keypoints span `reference_side` pixels: each side's coordinates are first scaled
    down so that their extent is at most `reference_side`, so one threshold serves
    thumbnails and 40-megapixel photographs alike (None: raw pixels). OpenCV's USAC
    is seeded with `seed`, so the result is deterministic.
    kps_q: Nq×2, kps_db: Ndb×2 float32 (x, y); matches: M×2 int (query, db index)
    -> (inlier count, inlier mask M bool). Never raises on degenerate geometry: fewer
    matches than the minimal sample, collinear or coincident points give 0 inliers.
    """
    if model not in MIN_SAMPLE:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MIN_SAMPLE)}")
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    no_inliers = np.zeros(len(matches), bool)
    if len(matches) < MIN_SAMPLE[model]:
        return 0, no_inliers
    kps_q = np.asarray(kps_q, np.float64).reshape(-1, 2)
    kps_db = np.asarray(kps_db, np.float64).reshape(-1, 2)
    src, dst = kps_q[matches[:, 0]], kps_db[matches[:, 1]]
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        return 0, no_inliers
    # All keypoints' extent stands for the image size (matches may cover a small part).
    src = src * _working_scale(kps_q, reference_side)
    dst = dst * _working_scale(kps_db, reference_side)

    params = cv2.UsacParams()
    params.sampler = cv2.SAMPLING_UNIFORM
    params.score = cv2.SCORE_METHOD_MAGSAC
    params.loMethod = cv2.LOCAL_OPTIM_SIGMA
    params.final_polisher = cv2.MAGSAC
    params.threshold = float(threshold)
    params.confidence = float(confidence)
    params.maxIterations = int(max_iters)
    params.randomGeneratorState = int(seed)
    params.isParallel = False  # parallel USAC is not reproducible
    try:
        if model == "homography":
            _, mask = cv2.findHomography(src, dst, params=params)
        else:
            _, mask = cv2.findFundamentalMat(src, dst, params=params)
    except cv2.error:
        return 0, no_inliers
    if mask is None or len(mask) != len(matches):
        return 0, no_inliers
    mask = mask.ravel().astype(bool)
    return int(mask.sum()), mask


def rerank_candidates(
    query: Features,
    candidates: Sequence[tuple[int, np.ndarray, np.ndarray]],
    vlad_scores: Sequence[float],
    min_inliers: int | None = None,
    ratio: float = DEFAULT_RATIO,
    model: str = "homography",
    threshold: float = DEFAULT_THRESHOLD_PX,
    seed: int = 0,
) -> list[RerankedMatch]:
    """Verify each candidate against the query and re-order them.

    candidates: (id, keypoints N×2 float32, descriptors N×D float32) per database image,
    as `FeatureStore.get` returns them; vlad_scores: one per candidate; min_inliers:
    the verification threshold (None: DEFAULT_MIN_INLIERS_BY_MODEL[model]).
    Order: verified candidates (inliers ≥ min_inliers) first, by inliers then VLAD
    score; then the unverified ones in their VLAD order, because an inlier count below
    the threshold is noise (see DEFAULT_MIN_INLIERS) and would only shuffle them.
    """
    if model not in MIN_SAMPLE:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MIN_SAMPLE)}")
    if min_inliers is None:
        min_inliers = DEFAULT_MIN_INLIERS_BY_MODEL[model]
    if len(candidates) != len(vlad_scores):
        raise ValueError(f"{len(candidates)} candidates but {len(vlad_scores)} VLAD scores")
    results = []
    for (image_id, keypoints, descriptors), vlad_score in zip(candidates, vlad_scores):
        matches = match_descriptors(query.descriptors, descriptors, ratio=ratio)
        inliers, _ = verify_matches(query.keypoints, keypoints, matches, model=model,
                                    threshold=threshold, seed=seed)
        results.append(RerankedMatch(int(image_id), inliers, float(vlad_score), inliers >= min_inliers))
    results.sort(key=lambda r: (not r.verified, -r.inliers if r.verified else 0, -r.vlad_score))
    return results


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def average_query_expansion(
    xq: np.ndarray, xb_neighbours: np.ndarray, alpha: float = 3.0, n: int | None = None
) -> np.ndarray:
    """αQE (Radenović et al., TPAMI 2018): the query becomes a weighted mean of itself
    and its top-n database neighbours, with weights max(sim, 0)^α (the query's own
    weight is 1 = sim(q, q)^α). α = 0 gives plain average query expansion (Chum et al.,
    ICCV 2007). Use neighbours from a first search, ideally the verified ones.
    xq: nq×d, xb_neighbours: nq×k×d (best first; n ≤ k of them are used)
    -> nq×d float32, L2-normalised.
    """
    xq = np.asarray(xq, np.float32)
    xb_neighbours = np.asarray(xb_neighbours, np.float32)
    if xb_neighbours.ndim != 3 or xq.ndim != 2 or xb_neighbours.shape[::2] != xq.shape:
        raise ValueError(f"expected xq nq×d and xb_neighbours nq×k×d, got {xq.shape} and {xb_neighbours.shape}")
    if n is not None:
        xb_neighbours = xb_neighbours[:, :n]
    sims = np.einsum("qd,qkd->qk", xq, xb_neighbours)
    weights = np.maximum(sims, 0.0) ** alpha
    return _l2_normalise(xq + np.einsum("qk,qkd->qd", weights, xb_neighbours))


def database_augmentation(
    xb: np.ndarray, neighbours_idx: np.ndarray, sims: np.ndarray, alpha: float = 3.0
) -> np.ndarray:
    """DBA: each database vector becomes the weighted mean of itself and its neighbours
    (weights max(sim, 0)^α, its own weight 1), renormalised — αQE applied to the database
    offline (Arandjelović & Zisserman, CVPR 2012; Radenović et al., TPAMI 2018).
    xb: nb×d; neighbours_idx: nb×k int and sims: nb×k as `index.search(xb, k)` returns
    them (the row's own id and faiss's -1 padding are skipped) -> nb×d float32.
    """
    xb = np.asarray(xb, np.float32)
    neighbours_idx = np.asarray(neighbours_idx, np.int64)
    sims = np.asarray(sims, np.float32)
    if xb.ndim != 2 or neighbours_idx.shape != sims.shape or len(neighbours_idx) != len(xb):
        raise ValueError(f"expected xb nb×d, neighbours_idx and sims nb×k, got "
                         f"{xb.shape}, {neighbours_idx.shape}, {sims.shape}")
    if neighbours_idx.size and neighbours_idx.max() >= len(xb):
        raise ValueError("neighbours_idx holds ids beyond xb: pass positions into xb, not image ids")
    own = np.arange(len(xb))[:, None]
    valid = (neighbours_idx >= 0) & (neighbours_idx != own)
    weights = np.where(valid, np.maximum(sims, 0.0) ** alpha, 0.0).astype(np.float32)
    safe_idx = np.where(valid, neighbours_idx, 0)
    augmented = xb.copy()
    for j in range(neighbours_idx.shape[1]):  # one column at a time: memory nb×d, not nb×k×d
        augmented += weights[:, j:j + 1] * xb[safe_idx[:, j]]
    return _l2_normalise(augmented)


def mirror_sift_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """SIFT descriptors of the horizontally mirrored image, without extracting again.

    OpenCV's SIFT descriptor is 4×4 spatial cells × 8 orientation bins in the keypoint's
    canonical frame. Mirroring the image mirrors that frame: the cell rows swap and
    orientation bin o becomes (−o) mod 8 (checked against SIFT on a flipped photograph).
    Works for RootSIFT too (an element-wise map commutes with a permutation).
    descriptors: N×128 float32 -> N×128 float32 (a new array).
    """
    cells = np.asarray(descriptors, np.float32).reshape(-1, 4, 4, 8)
    return np.ascontiguousarray(cells[:, ::-1][:, :, :, (-np.arange(8)) % 8].reshape(-1, 128))
