"""The one write orchestrator: build and add run prepare → train → stream → commit → merge here.

A build visits the images in a seeded random order; the first `codebook_images` of that
order form the training set. Their descriptors feed a bounded reservoir sample for k-means
and wait, compactly on disk (float16), for the codebook; the driver (this process) trains
the codebook, the PCA and the faiss template on them, whatever executor extracted them, so
every executor gives the same vectors. Then every image is encoded into staged segments of
at most `writer.SEGMENT_VECTORS` rows (memory is bounded by the sample, not by the
collection), the compact codes are trained when the preset has them, and everything is
committed in one transaction (catalog.py states the protocol). `add` encodes the new or
changed files with the existing codebook and commits them the same way. Both end with the
log merge (compaction.py), so no executor can forget one of its settings.

An executor only turns images into staged segments and rows; it is a context manager
(entered around the whole write, left before the staging area is removed) with

- `extract(paths, encoder, progress, then)`: the training images' `ExtractedImage`s, in
  the order given (`then`: the images `encode` will get next, which it may start on);
- `encode(paths, encoder, out, progress)`: extract and encode `paths` into staged
  segments and image rows of `out` (a `writer.SegmentStream`): written through it, or
  staged by other processes in its staging area and handed over with `out.adopt`;

`LocalExecutor` (here) is this machine's process pool; `executors.ray.RayExecutor` maps the
same functions over a Ray cluster.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vladsearch.encoding.codebook import SAMPLE_POINTS_PER_CLUSTER, Codebook, DescriptorSample, PendingDescriptors
from vladsearch.encoding.compact_codes import CoarseCodes
from vladsearch.encoding.encoder import Encoder
from vladsearch.encoding.vlad import RawVLAD
from vladsearch.features.extraction import ExtractedImage, WorkerEncoding, extract_images, single_blas_thread
from vladsearch.io.progress import progress_bar
from vladsearch.store import catalog, compaction, segments
from vladsearch.store.index_backend import FaissBackend
from vladsearch.store.snapshot import TEMPLATE_BLOB
from vladsearch.store.writer import Report, SegmentStream, build_meta, commit, unchanged


class Executor(Protocol):
    """Turns images into staged segments and image rows (module docstring)."""

    def __enter__(self): ...  # returns self (no "-> Self": typing.Self needs Python 3.11)

    def __exit__(self, *exc_info) -> None: ...

    def extract(self, paths: list[Path], encoder: Encoder, progress: bool,
                then: list[Path]) -> Iterable[ExtractedImage]: ...

    def encode(self, paths: list[Path], encoder: Encoder, out: SegmentStream, progress: bool) -> None: ...


class LocalExecutor:
    """This machine: a process pool (extraction.extract_images) with `workers` processes (None: every core).

    A build's training images and the rest go through one pool and one stream: the workers
    start on the images after the training set while the driver trains, and encode every
    image handed out after the codebook exists (extraction.WorkerEncoding).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers
        self._stream: Iterator[ExtractedImage] | None = None
        self._then: list[str] = []
        self._encoding: WorkerEncoding | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._close()

    def _start(self, paths: list[Path], encoder: Encoder, encoding: WorkerEncoding) -> Iterator[ExtractedImage]:
        p = encoder.params
        return extract_images(paths, encoder.extractor(), p.max_side, self.workers, max_pixels=p.max_pixels,
                              encode=encoding)

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()  # stops the pool
            self._stream = None

    def extract(self, paths: list[Path], encoder: Encoder, progress: bool,
                then: list[Path] = ()) -> Iterable[ExtractedImage]:
        self._close()
        self._encoding = WorkerEncoding(keep_descriptors=bool(encoder.params.keep_features))
        self._stream = self._start([*paths, *then], encoder, self._encoding)
        self._then = [str(path) for path in then]
        return progress_bar(itertools.islice(self._stream, len(paths)), total=len(paths),
                            desc="extract (codebook images)", enabled=progress)

    def encode(self, paths: list[Path], encoder: Encoder, out: SegmentStream, progress: bool) -> None:
        raw_vlad = RawVLAD(encoder.codebook)  # the workers reduce each image to its raw VLAD
        if self._stream is not None and [str(path) for path in paths] == self._then:
            self._encoding.set(raw_vlad)  # the pool already works on them
            stream = self._stream
        else:
            self._close()
            stream = self._start(paths, encoder, WorkerEncoding(raw_vlad, bool(encoder.params.keep_features)))
            self._stream = stream
        try:
            with single_blas_thread(encoder.extractor()):
                for item in progress_bar(stream, total=len(paths), desc="extract+encode", enabled=progress):
                    out.arrive(item)
                    if item.features is not None:
                        out.queue(item, item.raw_vlad)
        finally:
            self._close()


# --- build ------------------------------------------------------------------------------
def build(index_dir: Path, root: Path, paths: list[Path], names: dict[str, str], encoder: Encoder,
          executor: Executor, report: Report, progress: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Train on the images' seeded sample, encode them all, commit them as the index's whole content, merge.

    names: str(path) -> indexed name; returns the committed meta and the timings.
    """
    p = encoder.params
    order = np.random.default_rng(p.seed).permutation(len(paths))
    visiting = [paths[i] for i in order]
    training, rest = visiting[:min(len(paths), p.codebook_images)], visiting[p.codebook_images:]
    timings = {"extract": 0.0, "codebook": 0.0, "encode": 0.0, "index": 0.0}
    start = time.perf_counter()
    with segments.Staging(index_dir) as staging, executor:  # the executor stops first
        out = SegmentStream(staging, encoder, lambda path: names[str(path)])
        with single_blas_thread(encoder.extractor()):
            template = train(encoder, executor.extract(training, encoder, progress, then=rest), out, timings)
        executor.encode(rest, encoder, out, progress)
        out.finish()
        t0 = time.perf_counter()
        if p.codes:  # compact codes: trained on every staged vector
            encoder.coder = train_codes(encoder, out.staged)
        timings["index"] += time.perf_counter() - t0 + out.seconds["write"]
        timings["encode"] = out.seconds["encode"]
        timings["extract"] = time.perf_counter() - start - sum(timings.values())
        report.count(out.rows)
        meta = {**build_meta(encoder, index_dir, root), "timings": timings, "next_id": 0}
        commit(index_dir, out.staged, out.rows, report, "build",
               replace={"meta": meta, "blobs": {**encoder.blobs(), TEMPLATE_BLOB: template}})
    compaction.auto_merge(index_dir, encoder)
    return meta, timings


def train(encoder: Encoder, training: Iterable[ExtractedImage], out: SegmentStream,
          timings: dict[str, float]) -> bytes | None:
    """Fit the codebook (and PCA, faiss template, descriptor codes) on the training images,
    in their order, then queue them into `out`; returns the trained faiss template."""
    p = encoder.params
    encoder.codebook = Codebook(p.clusters, restarts=p.restarts, seed=p.seed)
    sample = DescriptorSample(SAMPLE_POINTS_PER_CLUSTER * p.clusters, seed=p.seed)
    with tempfile.TemporaryDirectory(prefix="vladsearch-") as scratch:
        waiting = PendingDescriptors(scratch)
        for item in training:
            out.arrive(item)
            if item.features is not None:
                sample.add(item.features.descriptors)
                waiting.append(item)
        t0 = time.perf_counter()
        template = _fit(encoder, sample.sample(), waiting, out)
        timings["codebook"] += time.perf_counter() - t0
    return template


def _fit(encoder: Encoder, sample: np.ndarray, waiting: PendingDescriptors, out: SegmentStream) -> bytes | None:
    if not waiting.entries:
        skipped = [(row["path"], row["reason"]) for row in out.rows if row["status"] == catalog.STATUS_SKIPPED]
        reasons = "; ".join(f"{path}: {why}" for path, why in skipped[:5])
        raise ValueError(f"none of the {len(skipped)} training images could be read ({reasons})")
    if len(sample) == 0:
        raise ValueError("the training images have no keypoints at all; check the images or --features")
    encoder.codebook.fit(sample)
    p = encoder.params
    if p.keep_features and p.feature_codes:
        from vladsearch.encoding.compact_codes import DescriptorCodes

        encoder.descriptor_codec = DescriptorCodes.parse(p.feature_codes, encoder.feature_dim, p.seed).fit(sample)
    items = [entry[0] for entry in waiting.entries]
    raw = np.zeros((len(items), encoder.codebook.centroids_.size), np.float32)
    for row, item in enumerate(waiting):  # one image's descriptors in RAM at a time
        raw[row] = encoder.raw_vlads([item.features.descriptors])[0]
        if p.keep_features and item.feature_rows is None:
            item.feature_rows = out.segment().append_features(item.features)
    encoder.fit_pca(raw)
    backend = FaissBackend.create(encoder.dim, p.factory)
    backend.train(encoder.finish(raw))
    for item, vector in zip(items, raw):
        out.queue(item, vector)
    return backend.to_bytes()


# --- add --------------------------------------------------------------------------------
def add(index_dir: Path, encoder: Encoder, build_id: str, files: dict[str, Path], executor: Executor,
        progress: bool = True, root: Path | None = None, merge: bool = True) -> Report:
    """Encode new or changed files with the index's codebook, commit them, merge by the log policy.

    files: indexed name -> file (a listed file that is missing is reported by name);
    root: the photos' folder, recorded with the commit. Extraction runs without any lock;
    only the commit waits for other writers (and skips files one of them committed meanwhile).
    """
    catalog.check_writable(index_dir)
    report = Report()
    names = {}  # absolute path -> indexed name, for the files to encode
    db = catalog.connect(index_dir, readonly=True)
    try:
        for name, path in files.items():
            if path.exists() and unchanged(catalog.find_image(db, name), path):
                report.unchanged += 1
            else:
                names[os.path.abspath(path)] = name
    finally:
        db.close()
    try:
        with segments.Staging(index_dir) as staging, executor:  # the executor stops first
            out = SegmentStream(staging, encoder, lambda path: names[str(path)])
            if names:
                executor.encode([Path(path) for path in names], encoder, out, progress)
            out.finish()
            report.count(out.rows)
            if out.rows:
                commit(index_dir, out.staged, out.rows, report, "add", build_id,
                       meta=catalog.root_meta(index_dir, root) if root is not None and root.is_dir() else None)
    except OSError as exc:
        raise catalog.disk_error(index_dir, exc) from None
    if merge and report.segments:
        compaction.auto_merge(index_dir, encoder)
    return report


def train_codes(encoder, staged: list) -> CoarseCodes:
    """Train compact codes on a seeded sample of staged segments' vectors, then code every segment.

    encoder: the build's `Encoder` (dim, params.codes/seed/vector_dtype); staged:
    `segments.StagedSegment`s whose vectors are written; returns the trained codes.
    """
    p = encoder.params
    starts = np.cumsum([0] + [s.vectors for s in staged])

    def read_rows(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), encoder.dim), np.float32)
        which = np.searchsorted(starts, rows, side="right") - 1
        for segment in np.unique(which):
            pick = which == segment
            out[pick] = segments.read_vectors(staged[segment].directory, encoder.dim, p.vector_dtype,
                                              rows[pick] - starts[segment])
        return out

    coder = CoarseCodes(p.codes, seed=p.seed).fit(read_rows, int(starts[-1]))
    for segment in staged:
        segments.add_codes(segment, coder, encoder.dim, p.vector_dtype)
    return coder
