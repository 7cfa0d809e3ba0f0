"""Decode and extract local features for many images, once each, on all cores.

CPU extractors (SIFT) run decode + extraction together in worker processes. Network
extractors (`runs_in_main_process`) get their images decoded by the workers while the
main process runs the model on batches, so decoding overlaps inference. A sliding
window of in-flight images bounds memory whatever the collection's size, and results
come back in input order. A file that fails is reported, never raised.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vladsearch.features.base import Extractor, Features
from vladsearch.io.images import DEFAULT_MAX_PIXELS, ImageError, LoadedImage, load_image


@dataclass
class ExtractedImage:
    """What extraction produced for one input file: features, or an error (never both)."""

    path: Path
    features: Features | None
    file_size: int = 0
    mtime: float = 0.0
    sha1: str = ""
    error: str | None = None
    feature_rows: tuple[int, int] | None = None  # (offset, count) in the index's feature cache
    # Unnormalised VLAD (K·D float32) computed where the features were extracted, when the
    # caller's `WorkerEncoding` had its function set before this image was handed out.
    raw_vlad: np.ndarray | None = None


class WorkerEncoding:
    """Lets the extraction workers also reduce each image to its raw VLAD (see extract_images).

    Give one to `extract_images(encode=...)` and call `set(function)` whenever the
    function is known (during a build: once the codebook is trained). `function` must be
    picklable and map descriptors N×D float32 to a 1-D float32 vector, e.g.
    `vladsearch.encoding.vlad.RawVLAD(codebook)`. Images handed to the workers after `set` arrive
    with `raw_vlad` filled and, unless `keep_descriptors`, `features.descriptors` None
    (not sent back between processes); images handed out before arrive as without it
    (`raw_vlad` None, descriptors kept), and so does an image whose encoding raised.
    """

    def __init__(self, function: Callable[[np.ndarray], np.ndarray] | None = None,
                 keep_descriptors: bool = False) -> None:
        self.function = function
        self.keep_descriptors = keep_descriptors

    def set(self, function: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.function = function

    def payload(self) -> tuple[Callable[[np.ndarray], np.ndarray], bool] | None:
        return None if self.function is None else (self.function, self.keep_descriptors)


def single_blas_thread(extractor: Extractor):
    """Context: one BLAS thread in this process while CPU extractors keep every core busy.

    The main process then only does small matrix products (VLAD encoding); BLAS threads
    would spin against the workers (measured on 2 busy cores: 18 ms per image with 2
    threads, 4 ms with 1). Networks running here keep their threads.
    """
    if extractor.runs_in_main_process:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --- worker side -------------------------------------------------------------------
_worker_extractor: Extractor | None = None
_worker_max_side: int | None = None
_worker_max_pixels: int | None = DEFAULT_MAX_PIXELS  # set before the fork (workers inherit it)


def _init_worker(extractor: Extractor | None, max_side: int | None, parent: int | None = None) -> None:
    """Worker set-up; `parent` (the pool owner's pid, recorded before the fork) ties the worker's life to it."""
    global _worker_extractor, _worker_max_side
    _worker_extractor, _worker_max_side = extractor, max_side
    if parent is not None:
        _die_with_parent(parent)
        keep_freed_memory()


PR_SET_PDEATHSIG = 1
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> None:
    """Let a worker reuse the memory it freed instead of unmapping and faulting it in again per image.

    SIFT allocates tens of MB of pyramid buffers per image. With glibc's defaults these are
    mmap-ed, unmapped on free and zero-faulted again for the next image whenever the
    dynamic threshold does not adapt, which depends on the heap the worker inherited at the
    fork: measured on 300 640×480 images, 5.3 M minor faults and 9 s of system time
    (12.1 s wall) against 38 k faults and 0.2 s (7.5 s wall) with these settings. Fixed
    thresholds keep buffers of up to 32 MiB on the heap and up to 256 MiB of freed heap
    for the next image.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    libc.mallopt(M_TOP_PAD, 16 << 20)


def _die_with_parent(parent: int) -> None:
    """Make this worker exit when `parent` dies, even by SIGKILL (no orphans holding memory).

    Linux: the kernel sends SIGKILL when the parent exits (prctl PR_SET_PDEATHSIG); the
    parent may have died between the fork and the prctl, so check it is still there.
    Elsewhere: a daemon thread polls getppid() every second.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="vladsearch-parent-watch", daemon=True).start()


def _load(path: Path, max_side: int | None) -> LoadedImage | ExtractedImage:
    try:
        return load_image(path, max_side, _worker_max_pixels)
    except ImageError as exc:
        return ExtractedImage(path, None, error=str(exc))
    except MemoryError:
        return ExtractedImage(path, None, error="out of memory while decoding")


def _from_loaded(path: Path, image: LoadedImage, features: Features) -> ExtractedImage:
    return ExtractedImage(path, features, image.file_size, image.mtime, image.sha1)


def _decode_and_extract(path: Path) -> ExtractedImage:
    loaded = _load(path, _worker_max_side)
    if isinstance(loaded, ExtractedImage):
        return loaded
    try:
        features = _worker_extractor.extract(loaded.gray, loaded.scale, loaded.size)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch
        return ExtractedImage(path, None, error=f"feature extraction failed ({exc})")
    return _from_loaded(path, loaded, features)


def _decode_only(path: Path) -> LoadedImage | ExtractedImage:
    return _load(path, _worker_max_side)


_worker_blas_limited = False


def _encode(item: ExtractedImage, payload: tuple[Callable, bool] | None) -> ExtractedImage:
    """Fill item.raw_vlad with payload's function (and drop the descriptors unless kept)."""
    if payload is None or not isinstance(item, ExtractedImage) or item.features is None:
        return item
    function, keep_descriptors = payload
    try:
        item.raw_vlad = np.asarray(function(item.features.descriptors), np.float32)
    except Exception:  # noqa: BLE001 - the caller encodes it again (and reports a real problem)
        return item
    if not keep_descriptors:
        item.features.descriptors = None
    return item


def _run_chunk(function, paths: list[Path], payload) -> list:
    """Worker task: `function` on each of a few paths (one task per chunk: less IPC, no idle gaps)."""
    global _worker_blas_limited
    if payload is not None and not _worker_blas_limited:
        # Small matrix products, one process per core: BLAS threads would only spin.
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        _worker_blas_limited = True
    return [_encode(function(path), payload) for path in paths]


# --- main side ---------------------------------------------------------------------
def _ordered(make_executor: Callable[[int], ProcessPoolExecutor] | None, function, paths: list[Path],
             window: int, chunk: int, encoding: WorkerEncoding | None) -> Iterator:
    """Apply `function` to every path in worker processes, results in input order.

    Paths go out in chunks of `chunk` (a task each) with at most `window` paths in flight.
    If a worker dies (a decoder crash), the paths whose results were lost are each run
    again alone in a fresh process, so that only the culprit is reported, and a new pool
    takes the rest.
    """
    def payload():
        return encoding.payload() if encoding is not None else None

    if make_executor is None:
        yield from (_encode(function(path), payload()) for path in paths)
        return
    executor = make_executor(0)
    chunks = (paths[i:i + chunk] for i in range(0, len(paths), chunk))
    pending: deque[tuple[list[Path], Future]] = deque()
    in_flight = 0

    def refill() -> None:
        nonlocal in_flight
        while in_flight < window:
            batch = next(chunks, None)
            if batch is None:
                return
            pending.append((batch, executor.submit(_run_chunk, function, batch, payload())))
            in_flight += len(batch)

    try:
        refill()
        while pending:
            batch, future = pending.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                # Every unfinished task of the pool is lost: isolate each of their paths.
                lost = [batch] + [other for other, f in pending
                                  if not f.done() or isinstance(f.exception(), BrokenProcessPool)]
                done = {id(other): f.result() for other, f in pending
                        if f.done() and not isinstance(f.exception(), BrokenProcessPool)}
                redone = {id(other): [_isolated(make_executor, function, path, payload()) for path in other]
                          for other in lost}
                executor.shutdown(wait=True, cancel_futures=True)
                results = redone[id(batch)]
                finished = list(pending)
                pending.clear()
                in_flight = 0
                executor = make_executor(0)
                for other, _f in finished:
                    resolved = Future()
                    resolved.set_result(redone.get(id(other), done.get(id(other))))
                    pending.append((other, resolved))
                    in_flight += len(other)
            in_flight -= len(batch)
            refill()
            yield from results
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _isolated(make_executor, function, path: Path, payload) -> object:
    """Run one path alone in a fresh worker process: a crash there can only be this file's."""
    with make_executor(1) as single:
        try:
            return single.submit(_run_chunk, function, [path], payload).result()[0]
        except BrokenProcessPool:
            return ExtractedImage(path, None, error="decoder crashed on this file")


# In flight per worker process, in images (a chunk is one task): enough that a worker never
# waits for the main process (whose own work, e.g. training the codebook, pauses the hand-out),
# few enough that results waiting in order stay small.
CHUNK = 4
WINDOW_PER_WORKER = 16


def extract_images(
    paths: Iterable[str | os.PathLike],
    extractor: Extractor,
    max_side: int | None = 1024,
    workers: int | None = None,
    batch_size: int = 8,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    encode: WorkerEncoding | None = None,
) -> Iterator[ExtractedImage]:
    """Yield an `ExtractedImage` per path, in input order, decoding each file once.

    workers: processes for decoding (and for extraction with CPU extractors); None
    uses every core; 1 runs everything in this process.
    encode: see `WorkerEncoding`; with CPU extractors the workers compute `raw_vlad` (and
    the descriptors need not travel back), with networks this process does after the model.
    """
    global _worker_max_pixels
    _worker_max_pixels = max_pixels
    paths = [Path(p) for p in paths]
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    in_main = extractor.runs_in_main_process
    use_pool = workers > 1 and len(paths) > 1
    cv2_threads = cv2.getNumThreads()
    make_executor = None
    if use_pool:
        # One image per process, so OpenCV's own threads would only oversubscribe. Set it
        # here, before the fork: a forked child must not touch OpenCV's thread pool, whose
        # threads did not survive the fork (cv2.setNumThreads there can deadlock).
        cv2.setNumThreads(1)
        # fork starts workers at once and, unlike spawn/forkserver, does not re-run the
        # caller's __main__ (a user script without a main guard still works).
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")

        def make_executor(count: int) -> ProcessPoolExecutor:
            return ProcessPoolExecutor(max_workers=count or workers, mp_context=context, initializer=_init_worker,
                                       initargs=(None if in_main else extractor, max_side, os.getpid()))
    else:
        _init_worker(None if in_main else extractor, max_side)
    window = max(WINDOW_PER_WORKER * workers, batch_size)
    chunk = CHUNK if len(paths) >= 4 * CHUNK * workers else 1  # few paths: spread them over every worker
    try:
        if not in_main:
            yield from _ordered(make_executor, _decode_and_extract, paths, window, chunk, encode)
        else:
            decoded = _ordered(make_executor, _decode_only, paths, window, chunk, None)
            payload = encode.payload if encode is not None else lambda: None
            for item in _batched_in_main(decoded, paths, extractor, batch_size):
                yield _encode(item, payload())
    finally:
        cv2.setNumThreads(cv2_threads)


def _batched_in_main(loaded: Iterator, paths: list[Path], extractor: Extractor,
                     batch_size: int) -> Iterator[ExtractedImage]:
    batch: list[tuple[Path, LoadedImage]] = []

    def flush() -> Iterator[ExtractedImage]:
        try:
            features = extractor.extract_batch([im.gray for _, im in batch], [im.scale for _, im in batch],
                                               [im.size for _, im in batch])
        except Exception as exc:  # noqa: BLE001 - retry one by one to isolate the culprit
            if len(batch) == 1:
                yield ExtractedImage(batch[0][0], None, error=f"feature extraction failed ({exc})")
                return
            features = []
            for path, image in batch:
                try:
                    features.append(extractor.extract(image.gray, image.scale, image.size))
                except Exception as inner:  # noqa: BLE001
                    features.append(inner)
        for (path, image), result in zip(batch, features):
            if isinstance(result, Exception):
                yield ExtractedImage(path, None, error=f"feature extraction failed ({result})")
            else:
                yield _from_loaded(path, image, result)

    # Results must come out in input order, so failed decodes wait behind the batch.
    held: list[ExtractedImage | tuple[Path, LoadedImage]] = []
    for path, item in zip(paths, loaded):
        if isinstance(item, ExtractedImage):
            held.append(item)
        else:
            held.append((path, item))
            batch.append((path, item))
        if len(batch) >= batch_size:
            done = iter(flush())
            for entry in held:
                yield entry if isinstance(entry, ExtractedImage) else next(done)
            held, batch = [], []
    done = iter(flush()) if batch else iter(())
    for entry in held:
        yield entry if isinstance(entry, ExtractedImage) else next(done)
