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
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2

from vladsearch.features.base import Extractor, Features
from vladsearch.images import DEFAULT_MAX_PIXELS, ImageError, LoadedImage, load_image


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


PR_SET_PDEATHSIG = 1


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


# --- main side ---------------------------------------------------------------------
def _ordered(executor: ProcessPoolExecutor | None, function, paths: list[Path], window: int,
             init_here=None) -> Iterator:
    """Apply `function` to every path, at most `window` in flight, results in order.

    init_here() prepares this process to run `function` itself if the pool breaks.
    """
    if executor is None:
        yield from (function(path) for path in paths)
        return
    pending: deque[tuple[Path, Future]] = deque()
    remaining = iter(paths)
    for path in remaining:
        pending.append((path, executor.submit(function, path)))
        if len(pending) >= window:
            break
    while pending:
        path, future = pending.popleft()
        try:
            yield future.result()
        except BrokenProcessPool:
            # A worker died (e.g. a decoder crash): report this file; the pool is unusable,
            # so finish the rest in this process.
            yield ExtractedImage(path, None, error="decoder crashed on this file")
            init_here()
            for other, _ in pending:
                yield function(other)
            yield from (function(other) for other in remaining)
            return
        for path in remaining:
            pending.append((path, executor.submit(function, path)))
            break


def extract_images(
    paths: Iterable[str | os.PathLike],
    extractor: Extractor,
    max_side: int | None = 1024,
    workers: int | None = None,
    batch_size: int = 8,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[ExtractedImage]:
    """Yield an `ExtractedImage` per path, in input order, decoding each file once.

    workers: processes for decoding (and for extraction with CPU extractors); None
    uses every core; 1 runs everything in this process.
    """
    global _worker_max_pixels
    _worker_max_pixels = max_pixels
    paths = [Path(p) for p in paths]
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    in_main = extractor.runs_in_main_process
    use_pool = workers > 1 and len(paths) > 1
    executor = None
    cv2_threads = cv2.getNumThreads()
    if use_pool:
        # One image per process, so OpenCV's own threads would only oversubscribe. Set it
        # here, before the fork: a forked child must not touch OpenCV's thread pool, whose
        # threads did not survive the fork (cv2.setNumThreads there can deadlock).
        cv2.setNumThreads(1)
        # fork starts workers at once and, unlike spawn/forkserver, does not re-run the
        # caller's __main__ (a user script without a main guard still works).
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker,
            initargs=(None if in_main else extractor, max_side, os.getpid()),
        )
    else:
        _init_worker(None if in_main else extractor, max_side)
    window = 4 * workers + batch_size

    def init_here() -> None:
        _init_worker(None if in_main else extractor, max_side)

    try:
        if not in_main:
            yield from _ordered(executor, _decode_and_extract, paths, window, init_here)
        else:
            yield from _batched_in_main(_ordered(executor, _decode_only, paths, window, init_here),
                                        paths, extractor, batch_size)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
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
