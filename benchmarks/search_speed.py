"""Search latency and memory of the faiss index behind vladsearch, on synthetic VLAD-sized vectors.

    python benchmarks/search_speed.py                       # 1k/10k/100k × {8192, 256} × {Flat, IVF…,PQ32}
    python benchmarks/search_speed.py --sizes 1000,10000 --dims 256 --json speed.json

Vectors are random unit vectors (Gaussian, L2-normalised) of the dimension of a VLAD vector
with K=64 clusters of 128-d SIFT descriptors (8192) and of the same after PCA to 256. They
go into `vladsearch.store.index_backend.FaissBackend` exactly as `Index` uses it (inner product,
ids), for exact search ("Flat") and an IVF/PQ factory sized to the collection
(about 4·√n lists: IVF128,PQ32np for 1k, IVF512,PQ32np for 10k, IVF1024,PQ32np for 100k;
--nprobe lists visited, default 16; "np" skips polysemous training, see `ivf_factory`).

Reported per configuration:
- single-query latency: one query per `search` call, top 10, one thread (median and 90th
  percentile, ms);
- batched: all queries in one call on all faiss threads, ms per query (throughput);
- bytes per vector: what the index stores for each vector (its code: 4·dim bytes for Flat,
  32 for PQ32, plus an 8-byte id), and the serialised index size divided by the number of
  vectors (which adds the IVF centroids and PQ codebooks, a fixed cost);
- near-copy found @1 / @10: queries made from database vectors plus noise (cosine ≈ 0.71 to
  their source, like an edited copy's VLAD); how often the source comes first / in the top 10;
- recall@10 vs Flat for the random queries. Random vectors have no cluster structure and
  their 10 nearest neighbours are barely nearer than the rest, so this is a worst case for
  IVF/PQ: real VLAD collections are far easier. The near-copy column is the relevant one.

100k × 8192 float32 is 3.3 GB for Flat: allow ~8 GB of RAM for the largest configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning
# threads steal the cores that the working ones need. Set before faiss loads its runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from common import cpu_description

from vladsearch.store.index_backend import FaissBackend

CHUNK = 10_000


def ivf_factory(n: int) -> str:
    """IVF/PQ sized to the collection: about 4·sqrt(n) lists (a power of two), 32-byte PQ codes.

    "np": no polysemous training. Plain "PQ32" also reorders the PQ codes by simulated
    annealing (polysemous training), a fixed ~150 s on a 2-core machine (~5 s on 16 cores),
    which IVF/PQ search does not use unless `polysemous_ht` is set; the search is the same.
    """
    nlist = 1 << max(4, round(float(np.log2(4 * np.sqrt(n)))))
    return f"IVF{nlist},PQ32np"


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def chunks(n: int, dim: int, seed: int):
    """The database in chunks of CHUNK vectors, each chunk from its own seed (regenerable)."""
    for number, start in enumerate(range(0, n, CHUNK)):
        yield start, unit_vectors(min(CHUNK, n - start), dim, seed * 1_000_003 + number)


def code_bytes(backend: FaissBackend, dim: int) -> int:
    """Bytes stored for each vector: its code (4·dim for Flat, m for PQm) plus its 8-byte id."""
    import faiss

    index = backend.index
    try:
        index = faiss.extract_index_ivf(index)
        return int(index.code_size) + 8
    except RuntimeError:
        return 4 * dim + 8


def planted_queries(n: int, dim: int, count: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Near-copies of database vectors from the last chunk: x + noise·(random unit direction), renormalised.

    With noise 1 the query's cosine similarity to its source is about 0.71 (a typical
    near-duplicate VLAD score); the source is then its exact nearest neighbour.
    """
    last = (n - 1) // CHUNK
    start = last * CHUNK
    block = unit_vectors(min(CHUNK, n - start), dim, seed * 1_000_003 + last)
    rows = np.random.default_rng(seed + 11).choice(len(block), size=min(count, len(block)), replace=False)
    xq = block[rows] + noise * unit_vectors(len(rows), dim, seed + 13)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return xq.astype(np.float32), (start + rows).astype(np.int64)


def measure(n: int, dim: int, factory: str, xq: np.ndarray, k: int, nprobe: int, train_size: int,
            seed: int, planted: tuple[np.ndarray, np.ndarray]) -> tuple[dict, np.ndarray]:
    import faiss

    start = time.perf_counter()
    backend = FaissBackend.create(dim, factory)
    if not backend.index.is_trained:
        backend.train(unit_vectors(min(n, train_size), dim, seed * 1_000_003))  # chunk 0's vectors (or fewer)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    for offset, xb in chunks(n, dim, seed):
        backend.add(xb, np.arange(offset, offset + len(xb), dtype=np.int64))
        del xb
    add_s = time.perf_counter() - start
    if factory == "Flat" and n * dim > 100_000_000:  # do not copy 3.3 GB just to count it: vector + id
        serialized = n * (4 * dim + 8)
    else:
        serialized = int(faiss.serialize_index(backend.index).size)
    # One query per call runs on one thread (as faiss does for a single query anyway); on a
    # busy machine, idle OpenMP threads would otherwise spin and distort the timing.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    backend.search(xq[:1], k, nprobe=nprobe)  # warm-up
    single = []
    for row in range(len(xq)):
        t0 = time.perf_counter()
        backend.search(xq[row:row + 1], k, nprobe=nprobe)
        single.append(1000 * (time.perf_counter() - t0))
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    _, ids = backend.search(xq, k, nprobe=nprobe)
    batched = 1000 * (time.perf_counter() - t0) / len(xq)
    _, found = backend.search(planted[0], k, nprobe=nprobe)
    row = {"n": n, "dim": dim, "factory": factory, "nprobe": nprobe if "IVF" in factory else None,
           "single_ms_median": float(np.median(single)), "single_ms_p90": float(np.percentile(single, 90)),
           "batched_ms_per_query": batched, "code_bytes_per_vector": code_bytes(backend, dim),
           "serialized_bytes_per_vector": serialized / n, "train_s": train_s, "add_s": add_s,
           "planted@1": float(np.mean(found[:, 0] == planted[1])),
           "planted@10": float(np.mean([source in row for source, row in zip(planted[1], found)]))}
    del backend
    return row, ids


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(nbytes) < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GB"


def render(rows: list[dict], info: dict) -> str:
    header = ("| vectors | dim | index | nprobe | 1 query: median ms | 1 query: p90 ms | batched ms/query | "
              "bytes/vector (code+id) | index size/vector | near-copy found @1 / @10 | recall@10 vs Flat (random) | "
              "train s | add s |")
    lines = [header, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        recall = "exact" if r["factory"] == "Flat" else f"{r['recall@10']:.3f}"
        lines.append(f"| {r['n']:,} | {r['dim']} | {r['factory']} | {r['nprobe'] or '–'} | "
                     f"{r['single_ms_median']:.2f} | {r['single_ms_p90']:.2f} | {r['batched_ms_per_query']:.3f} | "
                     f"{r['code_bytes_per_vector']:,} B | {human(r['serialized_bytes_per_vector'])} | "
                     f"{r['planted@1']:.2f} / {r['planted@10']:.2f} | {recall} | {r['train_s']:.1f} | {r['add_s']:.1f} |")
    note = (f"{info['queries']} random queries for the timings; {info['queries']} near-copy queries (cosine "
            f"≈ {1 / np.sqrt(1 + info['noise'] ** 2):.2f} to a database vector) for 'found'; top {info['k']}; "
            f"faiss {info['faiss']}, {info['threads']} OpenMP threads for batched search, 1 for single queries; "
            f"{info['machine']}; {info['date']}.")
    lines += ["", note, f"Command: `{info['command']}`"]
    return "\n".join(lines) + "\n"


def machine_description() -> str:
    return cpu_description()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]
    parser.add_argument("--sizes", type=ints, default=[1_000, 10_000, 100_000], help="default 1000,10000,100000")
    parser.add_argument("--dims", type=ints, default=[8192, 256], help="default 8192 (VLAD K=64×128),256 (PCA)")
    parser.add_argument("--factories", default="Flat,ivf",
                        help="comma-separated faiss factories; 'ivf' = IVF…,PQ32np sized to the collection")
    parser.add_argument("--queries", type=int, default=50, help="queries timed (default 50)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists visited (default 16)")
    parser.add_argument("--train-size", type=int, default=20_000,
                        help="training vectors for IVF/PQ (default 20000, capped at the collection)")
    parser.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: faiss's)")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="near-copy queries: source + noise × random unit vector (default 1: cosine ≈ 0.71)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = parser.parse_args(argv)

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    info = {"queries": args.queries, "k": args.k, "noise": args.noise, "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
            "machine": machine_description(), "date": dt.date.today().isoformat(),
            "command": "python " + " ".join(shlex.quote(a) for a in
                                            ["benchmarks/search_speed.py", *(sys.argv[1:] if argv is None else argv)])}
    rows = []
    for dim in args.dims:
        xq = unit_vectors(args.queries, dim, seed=args.seed + 7)
        for n in args.sizes:
            exact = None
            planted = planted_queries(n, dim, args.queries, args.seed, args.noise)
            for factory in [f.strip() for f in args.factories.split(",") if f.strip()]:
                factory = ivf_factory(n) if factory == "ivf" else factory
                row, ids = measure(n, dim, factory, xq, args.k, args.nprobe, args.train_size, args.seed, planted)
                if factory == "Flat":
                    exact = ids
                elif exact is not None:
                    row["recall@10"] = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, exact)]))
                else:
                    row["recall@10"] = float("nan")
                rows.append(row)
                print(f"n={n:>7,} dim={dim:>5} {factory:14s} 1 query {row['single_ms_median']:8.2f} ms  batched "
                      f"{row['batched_ms_per_query']:7.3f} ms/q  near-copy@10 {row['planted@10']:.2f}",
                      file=sys.stderr, flush=True)
                if args.json:
                    args.json.write_text(json.dumps({"rows": rows, "info": info}, indent=1))
    print(render(rows, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
