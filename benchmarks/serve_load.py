"""Load on `vladsearch serve`: throughput and latency with concurrent clients, against the CLI and the floor.

    python benchmarks/serve_load.py INDEX [--seconds 30] [--clients 1 4 8 16] [--rerank 20]
                                          [--workers N] [--cli-runs 5] [--json out.json]

Every query is the exact file of an indexed image, so its right answer (that image first)
is known: an answer with another image first counts as wrong; a non-200 or a failed request
as an error. For each rerank setting (0 and --rerank N), with and without a concurrent writer
(a `vladsearch add` process committing a batch of new images again and again on the same
index), and for each client count, clients (threads, each with one keep-alive connection,
bodies encoded in advance) send queries back to back for --seconds.

Compared with:
- the CLI: `vladsearch search INDEX QUERY --json` run --cli-runs times (process start +
  open + search per query); its rate is 1/that time per process, cores/that at best.
- in process: `Index.search([query], workers=1)` one at a time in one warm process, and
  `cores` threads doing so at once (what the machine gives the same work without HTTP);
  the extraction floor = cores ÷ (decode + SIFT of one query on one core).

The index is used in place and grows by the writer's batches (new files under a scratch
folder, indexed by absolute path): run it on a copy if that matters.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "tests"))
sys.path.insert(0, str(PROJECT / "benchmarks"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "vladsearchbench"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def pick_queries(index_dir: Path, count: int) -> list[tuple[str, Path]]:
    """(indexed path, file) of `count` indexed images spread over the collection."""
    from vladsearch import Index

    index = Index.open(index_dir)
    paths = [p for p in index.image_paths() if not os.path.isabs(p)]
    step = max(1, len(paths) // count)
    return [(p, index.root / p) for p in paths[::step][:count]]


def in_process_floor(index_dir: Path, queries: list[tuple[str, Path]], rerank: int) -> dict:
    """Median seconds, warm, one query at a time: Index.search (workers=1, as the CLI and the server
    run it: OpenCV may use every core inside one SIFT call), and decode + extraction alone on one
    core (cv2.setNumThreads(1)), the issue's floor unit."""
    import cv2

    from vladsearch import Index
    from vladsearch.io.images import load_image

    index = Index.open(index_dir)
    extractor = index.encoder.extractor()
    index.search([queries[0][1]], workers=1, rerank=rerank)  # warm: snapshot, extractor, caches
    search_s, extract_s = [], []
    threads = cv2.getNumThreads()
    for _, path in queries[:15]:
        start = time.perf_counter()
        index.search([path], workers=1, rerank=rerank)
        search_s.append(time.perf_counter() - start)
        cv2.setNumThreads(1)
        start = time.perf_counter()
        image = load_image(path, index.params.max_side)
        extractor.extract(image.gray, image.scale, image.size)
        extract_s.append(time.perf_counter() - start)
        cv2.setNumThreads(threads)
    return {"search_s": statistics.median(search_s), "extract_s": statistics.median(extract_s)}


def in_process_parallel(index_dir: Path, queries: list[tuple[str, Path]], threads: int, seconds: float,
                        rerank: int) -> float:
    """Queries per second of `threads` threads calling Index.search (workers=1) back to back in one process:
    what the machine gives the same work right now, without HTTP (compare the server's rate with it)."""
    from vladsearch import Index

    index = Index.open(index_dir)
    index.search([queries[0][1]], workers=1, rerank=rerank)
    done = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def run(number: int) -> None:
        i = number
        while time.perf_counter() < deadline:
            index.search([queries[i % len(queries)][1]], workers=1, rerank=rerank)
            i += threads
            with lock:
                done[0] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return done[0] / (time.perf_counter() - started)


def cli_cost(index_dir: Path, query: Path, runs: int, rerank: int) -> float:
    """Median wall seconds of `vladsearch search INDEX QUERY --json` (a new process each time)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "vladsearch.cli", "search", str(index_dir), str(query),
                                 "--json", "--rerank", str(rerank), "--workers", "1"], check=False,
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT)})
        if result.returncode != 0:
            raise RuntimeError(f"vladsearch search exited {result.returncode}: {result.stderr.strip()[-500:]}")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Writer(threading.Thread):
    """`vladsearch add INDEX BATCH` in a loop, a fresh batch of images each time, until stopped."""

    def __init__(self, index_dir: Path, scratch: Path, batch: int) -> None:
        super().__init__(daemon=True)
        self.index_dir, self.scratch, self.batch = index_dir, scratch, batch
        self.stop, self.commits, self.failures, self.number = threading.Event(), 0, 0, 0

    def run(self) -> None:
        from live_helpers import make_images

        while not self.stop.is_set():
            self.number += 1
            folder = self.scratch / f"batch_{self.number:04d}"
            make_images(folder, self.batch, 10_000 + self.number, size=(640, 480), prefix="added")
            result = subprocess.run([sys.executable, "-m", "vladsearch.cli", "add", str(self.index_dir), str(folder),
                                     "-q", "--workers", "1"], check=False, capture_output=True, text=True,
                                    env={**os.environ, "PYTHONPATH": str(PROJECT)})
            if result.returncode == 0:
                self.commits += 1
            else:
                self.failures += 1
                print(f"  add failed: {result.stderr.strip()[-300:]}", flush=True)


def load(port: int, bodies: list[tuple[str, bytes, str]], clients: int, seconds: float, rerank: int) -> dict:
    """`clients` threads sending queries back to back for `seconds`; latencies, errors, wrong answers."""
    latencies: list[float] = []
    errors, wrong = [0], [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        i = number * 7
        while time.perf_counter() < deadline:
            expected, body, content_type = bodies[i % len(bodies)]
            i += 1
            start = time.perf_counter()
            try:
                connection.request("POST", f"/api/search?top=5&rerank={rerank}", body,
                                   {"Content-Type": content_type})
                response = connection.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - start
                ok = response.status == 200
                first = json.loads(payload)["matches"][0]["image"] if ok else None
            except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                ok, first, elapsed = False, None, time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors[0] += 1
                elif first != expected:
                    wrong[0] += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"requests": len(latencies), "qps": len(latencies) / wall, "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99), "errors": errors[0], "wrong": wrong[0]}


def start_server(index_dir: Path, workers: int | None, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "vladsearch.cli", "serve", str(index_dir), "--port", str(port), "--queue", "64"]
    if workers:
        command += ["--workers", str(workers)]
    server = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/info")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not start within 300 s")


def main(argv: list[str] | None = None) -> int:
    from common import cpu_description
    from server_helpers import free_port

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path)
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each load run (default 30)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rerank", type=int, default=20, help="the reranked runs verify this many (default 20)")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers (default: all cores)")
    parser.add_argument("--queries", type=int, default=40, help="distinct query images (default 40)")
    parser.add_argument("--cli-runs", type=int, default=5, help="`vladsearch search` processes timed (default 5)")
    parser.add_argument("--add-batch", type=int, default=10, help="images per concurrent `add` commit (default 10)")
    parser.add_argument("--no-add", action="store_true", help="skip the runs with a concurrent add")
    parser.add_argument("--json", type=Path, help="write every figure here too")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    queries = pick_queries(args.index, args.queries)
    print(f"{cpu_description()}; {cores} cores; load average {os.getloadavg()[0]:.2f}", flush=True)
    report: dict = {"index": str(args.index), "cores": cores, "seconds": args.seconds, "runs": []}
    reranks = [0, args.rerank] if args.rerank else [0]
    for rerank in reranks:
        floor = in_process_floor(args.index, queries, rerank)
        parallel = in_process_parallel(args.index, queries, cores, min(10.0, args.seconds), rerank)
        cli_s = cli_cost(args.index, queries[0][1], args.cli_runs, rerank)
        report[f"rerank{rerank}"] = {**floor, "parallel_qps": parallel, "cli_s": cli_s}
        print(f"rerank {rerank}: in process {1000 * floor['search_s']:.0f} ms/query (extraction "
              f"{1000 * floor['extract_s']:.0f} ms on one core: floor {cores / floor['extract_s']:.1f} q/s on {cores} cores); "
              f"{cores} threads in one process {parallel:.2f} q/s; CLI {cli_s:.2f} s/query "
              f"({1 / cli_s:.2f} q/s per process, {cores / cli_s:.2f} q/s on all cores); "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
    bodies = [(expected, *multipart(Path(path).name, Path(path).read_bytes())) for expected, path in queries]
    port = free_port()
    server = start_server(args.index, args.workers, port)
    scratch = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        for rerank in reranks:
            for with_add in ([False] if args.no_add else [False, True]):
                writer = Writer(args.index, scratch, args.add_batch) if with_add else None
                if writer:
                    writer.start()
                for clients in args.clients:
                    load(port, bodies, clients, min(3.0, args.seconds), rerank)  # warm-up, not counted
                    commits_before = writer.commits if writer else 0
                    result = load(port, bodies, clients, args.seconds, rerank)
                    result.update(rerank=rerank, add=with_add, clients=clients, load=os.getloadavg()[0],
                                  commits=(writer.commits - commits_before) if writer else 0)
                    report["runs"].append(result)
                    print(f"  rerank {rerank:3d}  add {'yes' if with_add else 'no ':3s}  clients {clients:3d}: "
                          f"{result['qps']:6.2f} q/s  p50 {result['p50_ms']:7.0f} ms  p99 {result['p99_ms']:7.0f} ms  "
                          f"{result['requests']:5d} requests, {result['errors']} errors, {result['wrong']} wrong, "
                          f"{result['commits']} commits meanwhile; load average {os.getloadavg()[0]:.1f}", flush=True)
                if writer:
                    writer.stop.set()
                    writer.join()
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
