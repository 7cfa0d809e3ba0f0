"""Millions of images on one machine: compact codes (--preset large) against exact search.

    python benchmarks/scale.py --vectors 1000000 --json scale.json [--work DIR] [--queries 500]

How the N database vectors are made (they must behave like real VLADs, not noise):

1. Real photographs: every image of ../shared/data/*/{images,queries} (when present) and the
   scikit-image sample photographs. Each becomes 1 + --augment database images: itself and
   edited copies (random crops of 50–90 % of the area, rescales to 40–100 %, rotations by
   90° or 5–20°, left-right flips, hue/brightness shifts, JPEG quality 40–95; the edits of
   benchmarks/make_copy_benchmark.py). All are indexed by vladsearch itself (SIFT, K=64,
   the default build), which gives R real 8,192-d VLAD vectors.
2. Mixtures fill the collection up to N: each is normalise(Σ w_i·v_i + ε) over 3 real
   vectors v_i drawn at random, weights w ~ Dirichlet(1, 1, 1), ε ~ N(0, 0.01²) per
   coordinate: VLAD-shaped (same sparsity pattern and norms per visual word), not copies.
3. Queries: for --queries of the original photographs, one more edited copy that is not in
   the collection, encoded by the index's own extractor and codebook. The right answer is
   the original photograph.

Measured in one run, on one machine:
  exact      brute-force inner product over all N vectors (read back in float32 chunks)
  large      a vladsearch index with --preset large over the same N vectors: the same writer
             functions as a build (float16 segments, codes trained on a bounded seeded sample)
  ram_bytes_per_image     marginal RAM of the opened index (code + id + locations), and
                          the process's measured RSS growth per vector when it opened
  disk_bytes_per_image    segments + catalog on disk per vector
  single_query_ms         one query vector at a time, one thread, median over the queries
  batched_ms_per_query    all queries in one call, default threads
  near_copy_recall_at_1_vs_exact   recall@1 (large) ÷ recall@1 (exact)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_description, source_photos
from make_copy_benchmark import crop, flipcrop, rescale, rotate

from vladsearch import Index
from vladsearch.encoding.encoder import Encoder, preset_params
from vladsearch.features.extraction import extract_images
from vladsearch.io.images import list_images
from vladsearch.store import catalog, orchestrator, segments, writer

SHARED = PROJECT.parent / "shared" / "data"
SKIMAGE = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
           "retina", "brick", "gravel", "coins", "moon", "page", "text", "clock", "grass", "horse")


def _edit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    edit = [crop, flipcrop, rescale, rotate][int(rng.integers(0, 4))]
    out, _ = edit(image, rng)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-20, 21))) % 180
        hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.7, 1.3), 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    return out


def make_real_images(work: Path, augment: int, queries: int, seed: int) -> tuple[Path, Path, dict[str, str]]:
    """work/db/ (originals + edited copies) and work/queries/ (one more edit each); query -> original name."""
    rng = np.random.default_rng(seed)
    sources: list[np.ndarray] = []
    for folder in sorted(SHARED.glob("*/images")) + sorted(SHARED.glob("*/queries")):
        sources += [cv2.imread(str(p)) for p in list_images(folder)]
    sources = [s for s in sources if s is not None] + source_photos(SKIMAGE)
    db, qdir = work / "db", work / "queries"
    db.mkdir(parents=True)
    qdir.mkdir()
    answers = {}
    picked = set(rng.permutation(len(sources))[:queries].tolist())
    for number, image in enumerate(sources):
        if max(image.shape[:2]) > 1024:
            scale = 1024 / max(image.shape[:2])
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        name = f"src{number:05d}.jpg"
        cv2.imwrite(str(db / name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        for copy in range(augment):
            cv2.imwrite(str(db / f"src{number:05d}_edit{copy:02d}.jpg"), _edit(image, rng),
                        [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
        if number in picked:
            query = f"q_src{number:05d}.jpg"
            cv2.imwrite(str(qdir / query), _edit(image, rng), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
            answers[query] = name
    return db, qdir, answers


def mixtures(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """count × D: normalise(w1·v1 + w2·v2 + w3·v3 + ε), see the module docstring."""
    picks = rng.integers(0, len(real), (count, 3))
    weights = rng.dirichlet(np.ones(3), count).astype(np.float32)
    mixed = rng.standard_normal((count, real.shape[1]), dtype=np.float32) * np.float32(0.01)
    for j in range(3):
        mixed += weights[:, j:j + 1] * real[picks[:, j]]
    return mixed / np.linalg.norm(mixed, axis=1, keepdims=True)


def write_large_index(target: Path, source: Index, real: np.ndarray, real_names: list[str], total: int,
                      seed: int) -> tuple[dict[str, int], float]:
    """A --preset large index of `total` vectors (real first, then mixtures) via the writer's own functions."""
    params = {**vars(source.params), **preset_params("large")}
    encoder = Encoder(type(source.params)(**params), source.encoder.feature_config, source.encoder.weights)
    encoder.codebook, encoder.pca = source.encoder.codebook, source.encoder.pca
    writer.prepare_directory(target, force=True)
    rng = np.random.default_rng(seed)
    rows, ids_of = [], {}
    start = time.perf_counter()
    with segments.Staging(target) as staging:
        staged = []
        written = 0
        while written < total:
            seg = staging.new_segment(encoder.dim, dtype="float16")
            while seg.rows < writer.SEGMENT_VECTORS and written < total:
                n = min(2048, total - written, writer.SEGMENT_VECTORS - seg.rows)
                real_part = max(0, min(n, len(real) - written))
                block = np.concatenate([real[written:written + real_part], mixtures(real, n - real_part, rng)])
                first = seg.append(block)
                for k in range(n):
                    number = written + k
                    name = real_names[number] if number < len(real) else f"mix/{number:08d}.jpg"
                    rows.append({"path": name, "status": catalog.STATUS_INDEXED, "file_size": 1, "mtime": 0.0,
                                 "sha1": f"{number:040d}", "width": 640, "height": 480, "keypoints": 1,
                                 "segment": seg.name, "row": first + k})
                written += n
            staged.append(seg.finish())
        encoder.coder = orchestrator.train_codes(encoder, staged)
        meta = {**writer.build_meta(encoder, target, source.root), "next_id": 0}
        writer.commit(target, staged, rows, writer.Report(), "build",
                      replace={"meta": meta, "blobs": {**encoder.blobs(), "template.faiss": None}})
    seconds = time.perf_counter() - start
    db = catalog.connect(target, readonly=True)
    ids_of = {path: image_id for image_id, path in db.execute("SELECT id, path FROM images WHERE path NOT LIKE 'mix/%'")}
    db.close()
    return ids_of, seconds


def exact_top1(index_dir: Path, xq: np.ndarray) -> np.ndarray:
    """Brute force over every stored vector (float32 products of the float16 storage), chunk by chunk."""
    db = catalog.connect(index_dir, readonly=True)
    live = catalog.live_segments(db)
    best_score = np.full(len(xq), -np.inf, np.float32)
    best_id = np.full(len(xq), -1, np.int64)
    for seg in live:
        rows = np.array(db.execute("SELECT row, id FROM images WHERE segment = ? ORDER BY row",
                                   (seg["name"],)).fetchall(), np.int64)
        vectors = segments.open_vectors(index_dir, seg["name"], xq.shape[1], seg["vectors"], "float16")
        for start in range(0, len(rows), 16384):
            chunk = rows[start:start + 16384]
            scores = np.asarray(vectors[chunk[:, 0]], np.float32) @ xq.T      # n × q
            top = scores.argmax(axis=0)
            better = scores[top, np.arange(len(xq))] > best_score
            best_score[better] = scores[top, np.arange(len(xq))][better]
            best_id[better] = chunk[top[better], 1]
    db.close()
    return best_id


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def run(args: argparse.Namespace) -> dict:
    import faiss

    work = Path(args.work or tempfile.mkdtemp(prefix="vladsearch-scale-"))
    large_dir = work / "large.vlad"
    saved = work / "queries.npz"
    prepared = write_seconds = 0.0
    real_count = 0
    if args.reuse and saved.exists() and large_dir.exists():  # measure again an index made earlier
        with np.load(saved) as arrays:
            xq, truth, real_count = arrays["xq"], arrays["truth"], int(arrays["real"])
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        db_dir, query_dir, answers = make_real_images(work, args.augment, args.queries, args.seed)
        real_index = Index.build(db_dir, index=work / "real.vlad", progress=False)
        real_ids = list(real_index.snapshot.loaded_ids)
        real = real_index.vectors_of(real_ids)
        names = real_index.snapshot.paths_of(real_ids)
        real_names = [names[i] for i in real_ids]
        real_count = len(real)
        query_files = sorted(query_dir.iterdir())
        items = list(extract_images(query_files, real_index.extractor(), real_index.params.max_side))
        keep = [i for i, item in enumerate(items) if item.features is not None and len(item.features)]
        xq = real_index.encode([items[i].features.descriptors for i in keep])
        truth_names = [answers[query_files[i].name] for i in keep]
        prepared = time.perf_counter() - t0
        ids_of, write_seconds = write_large_index(large_dir, real_index, real, real_names, args.vectors, args.seed)
        truth = np.array([ids_of[n] for n in truth_names])
        np.savez(saved, xq=xq, truth=truth, real=real_count)

    before = rss_bytes()
    start = time.perf_counter()
    large = Index.open(large_dir)
    large.snapshot  # noqa: B018 - load it now
    large.snapshot.refine = preset_params("large")["refine"]  # today's preset, also for an index made earlier
    open_seconds = time.perf_counter() - start
    rss_growth = (rss_bytes() - before) / args.vectors
    info = large.info()
    from threadpoolctl import threadpool_limits

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    single = []
    with threadpool_limits(1):  # one thread: faiss's OpenMP and numpy's BLAS
        for q in range(len(xq)):
            t = time.perf_counter()
            large.search_vectors(xq[q:q + 1], 10)
            single.append(1000 * (time.perf_counter() - t))
        by_refine = {}
        for refine in (64, 128, 256):  # how many candidates the exact re-scoring needs
            large.snapshot.refine = refine
            t = time.perf_counter()
            found = np.array([large.search_vectors(xq[q:q + 1], 1)[1][0, 0] for q in range(len(xq))])
            by_refine[refine] = {"recall_at_1": float(np.mean(found == truth)),
                                 "single_query_ms": round(1000 * (time.perf_counter() - t) / len(xq), 3)}
        large.snapshot.refine = preset_params("large")["refine"]
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    _, I = large.search_vectors(xq, 10)
    batched = 1000 * (time.perf_counter() - t) / len(xq)
    recall_large = float(np.mean(I[:, 0] == truth))
    t = time.perf_counter()
    exact = exact_top1(large_dir, xq)
    exact_seconds = time.perf_counter() - t
    recall_exact = float(np.mean(exact == truth))
    agree = float(np.mean(exact == I[:, 0]))
    result = {
        "vectors": args.vectors, "real_vectors": real_count, "queries": len(xq), "dim": int(xq.shape[1]),
        "machine": cpu_description(), "nlist": int(large.snapshot.backend.index.nlist),
        "nprobe": int(large.snapshot.backend.index.nprobe), "refine": large.snapshot.refine,
        "ram_bytes_per_image": info["bytes_per_image"]["ram"], "ram_rss_growth_per_image": round(rss_growth, 1),
        "disk_bytes_per_image": info["bytes_per_image"]["disk"],
        "single_query_ms": round(float(np.median(single)), 3), "single_query_p99_ms": round(float(np.percentile(single, 99)), 3),
        "batched_ms_per_query": round(batched, 3),
        "recall_at_1_large": recall_large, "recall_at_1_exact": recall_exact,
        "near_copy_recall_at_1_vs_exact": round(recall_large / max(recall_exact, 1e-9), 4),
        "top1_agreement_with_exact": agree, "by_refine": by_refine,
        "seconds": {"prepare_real": round(prepared, 1), "write_and_train": round(write_seconds, 1),
                    "open": round(open_seconds, 2), "exact_bruteforce": round(exact_seconds, 1)},
    }
    if not args.keep and not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--augment", type=int, default=8, help="edited copies per real photograph in the collection")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="working folder (default: a temporary one; needs ~17 GB per million)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--reuse", action="store_true", help="with --work: measure the index a kept run wrote")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
