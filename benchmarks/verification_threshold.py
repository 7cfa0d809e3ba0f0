"""Measure inlier counts of geometric verification on unrelated and on true image pairs.

The verification threshold (vladsearch.query.rerank.DEFAULT_MIN_INLIERS) must give no false
verification on unrelated photographs, with margin, while keeping true pairs. This
script prints both distributions and, for a range of thresholds, the false
verifications and the recall of true pairs.

    python benchmarks/verification_threshold.py [--max-keypoints 1024] [--model homography]

Unrelated pairs: every pair of distinct scenes among scikit-image's photographs and the
images of ../shared/data/{oxford_affine_subset,homogr_pairs} (images of one sequence or
pair, and scenes that appear in both sets, are not counted as unrelated), and frames of
../shared/data/corridor at least 30 apart (a hard case: the same corridor, other places).
True pairs: synthetic copies of each photograph (scaled, JPEG q=20, cropped, rotated,
perspective-warped), the pairs of each Oxford sequence, the 16 homogr pairs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import cv2
import numpy as np

from vladsearch.features import get_extractor
from vladsearch.io.images import load_image
from vladsearch.query.rerank import (
    DEFAULT_MIN_INLIERS_BY_MODEL,
    DEFAULT_THRESHOLD_PX,
    match_descriptors,
    verify_matches,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# chelsea is cat (the same photograph), so only one of them.
PHOTOS = ["astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina",
          "rocket", "text", "cell", "horse"]
# homogr and Oxford share scenes; these prefixes name one scene family.
MIN_TEXTURE = 50  # photographs with fewer SIFT keypoints give no true pairs
FAMILIES = {"LePoint1": "LePoint", "LePoint2": "LePoint", "LePoint3": "LePoint", "BruggeSquare": "Brugge",
            "BruggeTower": "Brugge", "Boston": "Boston", "BostonLib": "Boston"}


def gray_photo(name: str) -> np.ndarray:
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image)


def synthetic_copies(gray: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Transformed copies of one image with the homography original -> copy (3×3)."""
    h, w = gray.shape
    out = {}
    s = 0.5
    out["scale0.5"] = (cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA),
                       np.diag([s, s, 1.0]))
    _, jpeg = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 20])
    out["jpeg20"] = (cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE), np.eye(3))
    x0, y0 = w // 5, h // 5
    out["crop60"] = (gray[y0:y0 + 3 * h // 5, x0:x0 + 3 * w // 5].copy(),
                     np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], float))
    rot = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), 30, 0.9), [0, 0, 1]])
    out["rot30"] = (cv2.warpAffine(gray, rot[:2], (w, h)), rot)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + rng.uniform(-0.12, 0.12, (4, 2)).astype(np.float32) * np.float32([w, h])
    persp = cv2.getPerspectiveTransform(src, dst)
    out["persp"] = (cv2.warpPerspective(gray, persp, (w, h)), persp)
    return out


def extract_files(extractor, folder: Path) -> dict[str, object]:
    features = {}
    for path in sorted((folder / "images").iterdir()):
        image = load_image(path, max_side=1024)
        features[path.name] = extractor.extract(image.gray, image.scale, image.size)
    return features


def strongest(features, k: int):
    """The k highest-scoring keypoints, as the feature store keeps them."""
    keep = np.argsort(-features.scores, kind="stable")[:k]
    return features.keypoints[keep], features.descriptors[keep]


def count(query, database, model: str, threshold: float, query_kps: int, db_kps: int) -> tuple[int, float, float]:
    """Inliers of query (its query_kps strongest keypoints) against database (db_kps
    strongest), and the seconds spent matching and verifying."""
    kq, dq = strongest(query, query_kps)
    kb, db = strongest(database, db_kps)
    start = time.perf_counter()
    matches = match_descriptors(dq, db)
    matched = time.perf_counter()
    inliers = verify_matches(kq, kb, matches, model=model, threshold=threshold)[0]
    return inliers, matched - start, time.perf_counter() - matched


def summary(name: str, values: list[int]) -> None:
    v = np.asarray(values)
    q = np.percentile(v, [5, 10, 50, 90, 99, 99.9])
    print(f"{name:<30} n={len(v):4d} min={v.min():3d} p5={q[0]:5.1f} p10={q[1]:5.1f} median={q[2]:5.1f} "
          f"p90={q[3]:5.1f} p99={q[4]:5.1f} p99.9={q[5]:5.1f} max={v.max():4d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-keypoints", type=int, default=1024, help="database side (the feature store's cap)")
    parser.add_argument("--query-keypoints", type=int, default=None, help="query side (default: --max-keypoints)")
    parser.add_argument("--model", default="homography", choices=["homography", "fundamental"])
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_PX)
    parser.add_argument("--feature", default="sift")
    args = parser.parse_args()
    query_kps = args.query_keypoints or args.max_keypoints
    extractor = get_extractor(args.feature, max_keypoints=max(query_kps, args.max_keypoints))
    rng = np.random.default_rng(0)
    times: dict[str, list[tuple[float, float]]] = {"unrelated": [], "true": []}

    below_default: list[str] = []

    def verify(a, b, label: str = "") -> int:
        """Inliers of one pair; `label` names a true pair, none an unrelated one."""
        inliers, match_s, verify_s = count(a, b, args.model, args.threshold, query_kps, args.max_keypoints)
        times["true" if label else "unrelated"].append((match_s, verify_s))
        if label and inliers < DEFAULT_MIN_INLIERS_BY_MODEL[args.model]:
            below_default.append(f"{label} ({inliers})")
        return inliers

    # name -> (scene family, features)
    scenes: dict[str, tuple[str, object]] = {}
    true: dict[str, list[int]] = {}
    for name in PHOTOS:
        gray = gray_photo(name)
        original = extractor.extract(gray)
        scenes[name] = (name, original)
        if len(original) < MIN_TEXTURE:  # clock: 2 keypoints, colorwheel: 0; nothing to verify
            continue
        for kind, (copy, _) in synthetic_copies(gray, rng).items():
            true.setdefault(f"synthetic {kind}", []).append(verify(original, extractor.extract(copy), f"{name} {kind}"))
    left, right = _stereo_pair()
    true["stereo_motorcycle (skimage)"] = [verify(extractor.extract(left), extractor.extract(right), "stereo")]

    oxford = DATA / "oxford_affine_subset"
    if oxford.exists():
        feats = extract_files(extractor, oxford)
        for name, f in feats.items():
            scenes[f"oxford/{name}"] = (name.split("_")[0], f)
        for a, b in itertools.combinations(sorted(feats), 2):
            if a.split("_")[0] == b.split("_")[0]:
                true.setdefault(f"oxford {a.split('_')[0]}", []).append(verify(feats[a], feats[b], f"{a}-{b}"))
    homogr = DATA / "homogr_pairs"
    if homogr.exists():
        feats = extract_files(extractor, homogr)
        pairs = json.loads((homogr / "homographies.json").read_text())["pairs"]
        for pair in pairs:
            true.setdefault("homogr pairs", []).append(verify(feats[pair["a"]], feats[pair["b"]], pair["group"]))
            for key in ("a", "b"):
                group = pair["group"]
                scenes[f"homogr/{pair[key]}"] = (FAMILIES.get(group, group.lower()), feats[pair[key]])

    unrelated: dict[str, list[int]] = {"unrelated photographs": []}
    for (name_a, (fam_a, fa)), (name_b, (fam_b, fb)) in itertools.combinations(scenes.items(), 2):
        if fam_a == fam_b:
            continue
        unrelated["unrelated photographs"].append(verify(fa, fb))
    corridor = DATA / "corridor"
    if corridor.exists():
        feats = extract_files(extractor, corridor)
        names = sorted(feats)
        unrelated["corridor frames >= 30 apart"] = [
            verify(feats[names[i]], feats[names[j]]) for i in range(0, len(names), 3)
            for j in range(i + 30, len(names), 7)]

    print(f"{args.feature}, keypoints query={query_kps} database={args.max_keypoints}, model={args.model}, "
          f"threshold={args.threshold} px at 1024 px; inliers per pair:")
    for group in (unrelated, true):
        for name, values in group.items():
            summary(name, values)
    all_true = [v for values in true.values() for v in values]
    summary("ALL TRUE PAIRS", all_true)
    false_all = [v for values in unrelated.values() for v in values]
    print("\nthreshold  false verifications (unrelated)  recall of true pairs")
    for t in (6, 8, 10, 12, 15, 20, 25, 30, 40):
        mark = "  <- default" if t == DEFAULT_MIN_INLIERS_BY_MODEL[args.model] else ""
        print(f"{t:9d}  {sum(v >= t for v in false_all):5d} / {len(false_all):<5d}"
              f"                  {np.mean(np.asarray(all_true) >= t):.3f}{mark}")
    print(f"true pairs below the default threshold: {', '.join(below_default) or 'none'}\n")
    for kind, values in times.items():
        ms = 1000 * np.asarray(values)
        print(f"{kind} pairs ({len(ms)}), median ms: match {np.median(ms[:, 0]):.2f}  "
              f"verify {np.median(ms[:, 1]):.2f}  total {np.median(ms.sum(1)):.2f} (mean {ms.sum(1).mean():.2f})")


def _stereo_pair() -> list[np.ndarray]:
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    return [cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)]


if __name__ == "__main__":
    main()
