"""Build images/s and per-query time of `--preset places` against the default SIFT, in one run.

    python benchmarks/places_cost.py DATASET [--presets exact places] [--queries 20] [--verify 10]
        [--workers 2] [--match-keypoints 1024] [--scratch /tmp/places_cost]

DATASET is in vladsearch's layout (benchmarks/places_devset.py). For each preset it builds an
index of DATASET/images with `Index.build(..., **preset_with(preset))` (what `vladsearch build
--preset P` does), then times, per query: the search (extracting the query's features + VLAD +
faiss, `Index.search`) and the verification of the `--verify` first candidates with the
preset's matcher and geometric model (`query.matching.match_features` +
`rerank.verify_matches` on features extracted for the candidates beforehand, i.e. as a feature
cache would serve them). Prints one row per preset and the machine's load average, since
figures on a shared machine move with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vladsearch import Index  # noqa: E402
from vladsearch.encoding.encoder import preset_with  # noqa: E402
from vladsearch.evaluation.datasets import load_dataset  # noqa: E402
from vladsearch.io.images import load_image  # noqa: E402
from vladsearch.query.matching import match_features, verification_for  # noqa: E402
from vladsearch.query.rerank import verify_matches  # noqa: E402


def time_preset(dataset, preset: str, scratch: Path, n_queries: int, n_verify: int, workers: int,
                match_keypoints: int) -> dict:
    params = preset_with(preset)
    path = scratch / f"{preset}.vlad"
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    index = Index.build(dataset.images_dir, index=path, workers=workers, progress=False, **params)
    build_s = time.perf_counter() - start
    queries = dataset.queries[:n_queries]
    search_s, verify_s = [], []
    extractor = index.encoder.extractor()
    settings = verification_for(params["features"])
    max_side = index.encoder.params.max_side
    features: dict[str, object] = {}

    def features_of(path: Path):
        if str(path) not in features:
            image = load_image(path, max_side)
            f = extractor.extract(image.gray, image.scale, image.size)
            keep = np.argsort(-f.scores, kind="stable")[:match_keypoints]  # as the index caches them
            features[str(path)] = type(f)(f.keypoints[keep], f.descriptors[keep], f.scores[keep], f.image_size)
        return features[str(path)]

    for query in queries:
        start = time.perf_counter()
        result = index.search([str(query.path)], top=n_verify, rerank=0)[0]  # VLAD + faiss only
        search_s.append(time.perf_counter() - start)
        candidates = [features_of(dataset.images_dir / match.image) for match in result.matches]
        query_features = features_of(query.path)
        start = time.perf_counter()
        for candidate in candidates:
            matches = match_features(params["features"], query_features, candidate)
            verify_matches(query_features.keypoints, candidate.keypoints, matches, model=settings.model,
                           threshold=settings.threshold)
        verify_s.append(time.perf_counter() - start)
    return {"preset": preset, "features": params["features"], "images": len(dataset.database),
            "build s": build_s, "images/s": len(dataset.database) / build_s,
            "search s/query": float(np.median(search_s)), f"verify {n_verify} s/query": float(np.median(verify_s))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--presets", nargs="+", default=["exact", "places"])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--verify", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--match-keypoints", type=int, default=1024,
                        help="match each image's N strongest keypoints (the index caches 1,024)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/places_cost"))
    args = parser.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.dataset)
    for preset in args.presets:
        row = time_preset(dataset, preset, args.scratch, args.queries, args.verify, args.workers,
                          args.match_keypoints)
        print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
