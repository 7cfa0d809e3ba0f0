"""Retrieval on a "same place" dev set for several features, keypoint budgets and normalisations.

    python benchmarks/places_eval.py DATASET --features sift aliked xfeat [--budgets 0 1000]
        [--norms default centered] [--clusters 64] [--max-side 1024] [--rerank 10]
        [--match-keypoints 1024] [--cache /tmp/places_cache] [--json OUT.json]

DATASET is in vladsearch's layout (benchmarks/places_devset.py writes one). Local features are
extracted once per (feature, max side) and cached under --cache, so sweeps re-use them. Each
configuration trains its own codebook on the database's descriptors and encodes as
`vladsearch.encoding.encoder.Encoder` does (`vlad.vlad` + `normalize_vlad`), then ranks by cosine.

Candidate fixes for "large images attract each other" (docs/BENCHMARKS.md, "Places"):

- ``--budgets N``: keep each image's N strongest keypoints (0: the extractor's cap);
- ``--norms``: ``default`` (intra + signed square root + L2, what the index does), ``centered``
  (the same, then the database's mean vector subtracted and L2 again: the part every image shares,
  which grows with the number of occupied words, no longer counts), ``pca`` (PCA-whitening to
  min(images - 1, 256) dimensions, as ``--pca``), ``nointra`` (no intra-normalisation, as
  ``--no-intra``), ``power0.2`` (signed power 0.2 instead of 0.5: stronger burstiness damping).

It prints R@1 / R@5, and a size-bias diagnostic: of the queries whose first answer is wrong, the
share whose wrong answer has more keypoints (before any budget) than the database median
("big wins"), beside the share expected by chance, and "size corr": the rank correlation,
over unrelated pairs, between their cosine and their keypoint counts. With
``--rerank N`` the N first candidates are matched with the feature's matcher
(`query.matching.match_features`) and verified by `query.matching.verification_for`;
it then prints R@1 after reranking, the most inliers an unrelated candidate reached, and the
share of queries whose true partner among the candidates was confirmed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vladsearch.encoding.codebook import Codebook  # noqa: E402
from vladsearch.encoding.vlad import PCAWhitening, l2_normalize, normalize_vlad, vlad  # noqa: E402
from vladsearch.evaluation.datasets import load_dataset  # noqa: E402
from vladsearch.features import get_extractor  # noqa: E402
from vladsearch.features.base import Features  # noqa: E402
from vladsearch.io.images import load_image  # noqa: E402


def cached_features(paths: list[Path], feature: str, max_side: int, cache: Path) -> list[Features]:
    """Features of every path, extracted once and kept as .npz under `cache`."""
    folder = cache / f"{feature}_{max_side}"
    folder.mkdir(parents=True, exist_ok=True)
    extractor, results = None, []
    for path in paths:
        key = hashlib.sha1(f"{Path(path).resolve()}:{Path(path).stat().st_size}".encode()).hexdigest()
        file = folder / f"{key}.npz"
        if not file.exists():
            if extractor is None:
                extractor = get_extractor(feature, **({"device": "cpu"} if feature not in ("sift", "rootsift") else {}))
            image = load_image(path, max_side)
            f = extractor.extract(image.gray, image.scale, image.size)
            np.savez(file, keypoints=f.keypoints, descriptors=f.descriptors, scores=f.scores,
                     image_size=np.array(f.image_size))
        with np.load(file) as data:
            results.append(Features(data["keypoints"], data["descriptors"], data["scores"],
                                    tuple(int(v) for v in data["image_size"])))
    return results


def strongest(features: Features, budget: int) -> Features:
    if not budget or len(features) <= budget:
        return features
    keep = np.argsort(-features.scores, kind="stable")[:budget]
    return Features(features.keypoints[keep], features.descriptors[keep], features.scores[keep], features.image_size)


def encode(db: list[Features], queries: list[Features], clusters: int, norm: str) -> tuple[np.ndarray, np.ndarray]:
    pool = np.concatenate([f.descriptors for f in db])
    sample = pool[np.random.default_rng(0).permutation(len(pool))[:200_000]]
    codebook = Codebook(clusters).fit(sample)

    def raw(sets: list[Features]) -> np.ndarray:
        return np.stack([vlad(f.descriptors, codebook.centroids_, codebook.assign(f.descriptors)) for f in sets])

    power, intra = {"nointra": (0.5, False), "power0.2": (0.2, True)}.get(norm, (0.5, True))
    db_vectors = normalize_vlad(raw(db), clusters, power, intra)
    q_vectors = normalize_vlad(raw(queries), clusters, power, intra)
    if norm == "centered":
        mean = db_vectors.mean(axis=0)
        db_vectors, q_vectors = l2_normalize(db_vectors - mean), l2_normalize(q_vectors - mean)
    elif norm == "pca":
        pca = PCAWhitening(min(len(db) - 1, 256)).fit(db_vectors)
        db_vectors, q_vectors = l2_normalize(pca.transform(db_vectors)), l2_normalize(pca.transform(q_vectors))
    elif norm not in ("default", "nointra", "power0.2"):
        raise SystemExit(f"unknown norm {norm!r}")
    return db_vectors, q_vectors


def recall(ranked: list[list[str]], dataset, k: int, prefix: str = "") -> float:
    """R@k over the queries whose name starts with `prefix`."""
    hits = [any(name in q.positives for name in ranked[i][:k])
            for i, q in enumerate(dataset.queries) if q.name.startswith(prefix)]
    return float(np.mean(hits)) if hits else float("nan")


def rank(db_vectors, q_vectors, db_names, dataset) -> list[list[str]]:
    scores = q_vectors @ db_vectors.T
    ranked = []
    for i, query in enumerate(dataset.queries):
        ignore = set(query.ignore)
        ranked.append([db_names[j] for j in np.argsort(-scores[i], kind="stable") if db_names[j] not in ignore])
    return ranked


def big_wins(ranked, dataset, db_counts: dict[str, int]) -> tuple[float, float]:
    """Of the queries whose first answer is wrong, the share answered by a "big" image (more
    keypoints at the extractor's cap than the database median), and the share expected if the
    wrong answer were drawn at random from that query's unrelated images."""
    median = float(np.median(list(db_counts.values())))
    wins, expected = [], []
    for r, query in zip(ranked, dataset.queries):
        if r[0] in query.positives:
            continue
        wins.append(db_counts[r[0]] > median)
        unrelated = [name for name in r if name not in query.positives]
        expected.append(np.mean([db_counts[name] > median for name in unrelated]))
    return (float(np.mean(wins)), float(np.mean(expected))) if wins else (0.0, 0.0)


def size_correlation(db_vectors, q_vectors, db_names, dataset, db_counts, q_counts) -> float:
    """Spearman correlation, over unrelated (query, database) pairs, between their cosine and the
    product of their keypoint counts: > 0 means that similarity follows image statistics."""
    scores = q_vectors @ db_vectors.T
    similarity, mass = [], []
    for i, query in enumerate(dataset.queries):
        for j, name in enumerate(db_names):
            if name not in query.positives and name not in query.ignore:
                similarity.append(scores[i, j])
                mass.append(np.log1p(q_counts[i]) + np.log1p(db_counts[name]))

    def ranks(values):
        return np.argsort(np.argsort(values)).astype(np.float64)

    return float(np.corrcoef(ranks(similarity), ranks(mass))[0, 1])


THRESHOLDS = (0.5, 1.0, 2.0, 4.0)


def rerank(feature, ranked, dataset, db_by_name, queries, depth: int, cache: Path, keypoints: int) -> dict:
    """Verify the `depth` first candidates; R@k after moving verified ones first, and calibration
    figures: per threshold, the most inliers an unrelated candidate reached and the share of
    queries whose partner among the candidates beat that."""
    from vladsearch.query.matching import match_features, verification_for
    from vladsearch.query.rerank import verify_matches

    settings = verification_for(feature)
    thresholds = sorted({*THRESHOLDS, settings.threshold})
    folder = cache / "matches" / feature
    queries = [strongest(f, keypoints) for f in queries]
    db_by_name = {name: strongest(f, keypoints) for name, f in db_by_name.items()}
    folder.mkdir(parents=True, exist_ok=True)
    reranked, seconds, pairs = [], [], []  # pairs: (query index, is positive, {threshold: inliers})
    for i, query in enumerate(dataset.queries):
        start = time.perf_counter()
        inliers = {}
        for name in ranked[i][:depth]:
            key = hashlib.sha1(f"{query.path.resolve()}|{name}|{len(queries[i])}|{len(db_by_name[name])}".encode())
            file = folder / f"{key.hexdigest()}.npy"
            if file.exists():
                matches = np.load(file)
            else:
                matches = match_features(feature, queries[i], db_by_name[name])
                np.save(file, matches)
            by_threshold = {t: verify_matches(queries[i].keypoints, db_by_name[name].keypoints, matches,
                                              model=settings.model, threshold=t)[0] for t in thresholds}
            inliers[name] = by_threshold[settings.threshold]
            pairs.append((i, name in query.positives, by_threshold, name))
        seconds.append(time.perf_counter() - start)
        verified = sorted((name for name in inliers if inliers[name] >= settings.min_inliers),
                          key=lambda name: -inliers[name])
        reranked.append(verified + [name for name in ranked[i] if name not in set(verified)])
    row = {"R@1 reranked": recall(reranked, dataset, 1), "R@5 reranked": recall(reranked, dataset, 5),
           "R@1 rot90 reranked": recall(reranked, dataset, 1, "rot90__"),
           "s per query (uncached)": float(np.median(seconds))}
    row["pairs"] = [{"query": dataset.queries[p[0]].name, "image": p[3], "positive": p[1],
                     "inliers": p[2][settings.threshold]} for p in pairs]
    for t in thresholds:
        worst = max((p[2][t] for p in pairs if not p[1]), default=0)
        with_partner = {p[0] for p in pairs if p[1]}
        beaten = {p[0] for p in pairs if p[1] and p[2][t] > worst}
        row[f"t{t} max unrelated"] = int(worst)
        row[f"t{t} partner > it"] = len(beaten) / max(len(with_partner), 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--features", nargs="+", default=["sift"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[0])
    parser.add_argument("--norms", nargs="+", default=["default"])
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--rerank", type=int, default=0, help="verify the N first candidates")
    parser.add_argument("--match-keypoints", type=int, default=1024,
                        help="with --rerank: match each image's N strongest keypoints (0: all)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/places_cache"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset)
    db_names = list(dataset.database)
    rows = []
    for feature in args.features:
        start = time.perf_counter()
        db_all = cached_features([dataset.images_dir / n for n in db_names], feature, args.max_side, args.cache)
        q_all = cached_features([q.path for q in dataset.queries], feature, args.max_side, args.cache)
        print(f"# {feature}: features ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        # keypoints at the cap, ties (many images reach the cap) broken by pixel area
        counts = {name: len(f) + f.image_size[0] * f.image_size[1] / 1e9 for name, f in zip(db_names, db_all)}
        for budget in args.budgets:
            db = [strongest(f, budget) for f in db_all]
            queries = [strongest(f, budget) for f in q_all]
            for norm in args.norms:
                db_vectors, q_vectors = encode(db, queries, args.clusters, norm)
                ranked = rank(db_vectors, q_vectors, db_names, dataset)
                row = {"features": feature, "budget": budget or "cap", "norm": norm,
                       "R@1": recall(ranked, dataset, 1), "R@5": recall(ranked, dataset, 5),
                       "R@1 rot90": recall(ranked, dataset, 1, "rot90__"),
                       **dict(zip(("big wins", "by chance"), big_wins(ranked, dataset, counts))),
                       "size corr": size_correlation(db_vectors, q_vectors, db_names, dataset, counts,
                                                     [len(f) for f in q_all])}
                if args.rerank:
                    row.update(rerank(feature, ranked, dataset, dict(zip(db_names, db)), queries, args.rerank,
                                      args.cache, args.match_keypoints))
                rows.append(row)
                print(" | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                 if k != "pairs"),
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
