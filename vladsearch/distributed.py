"""Build and add on a Ray cluster: the local write path's own functions, mapped over images by Ray Data.

The driver lists the images and visits them in the local build's seeded order. The first
`codebook_images` of that order are extracted on the cluster and come back in that order,
so the reservoir sample, the codebook, the PCA and the faiss template are trained on the
driver exactly as `writer.train_and_stream` trains them (the same `writer._train`). Every
other image goes to `SegmentEncoder` actors (Ray Data `map_batches` with a callable
class): each decodes and extracts with `extraction.extract_images` and encodes with the
`Encoder` and `writer.SegmentStream` the local build uses, writing its own staged segment
per batch into the index's staging area, and hands back only that segment's description
and its image rows. The driver commits everything in one transaction (catalog.py), so a
failed worker or Ctrl-C leaves the index at its last commit; what was staged is removed.

Workers read the images and write the staging area by path: the index directory and the
photos must be at the same path on every node (shared storage). See docs/RAY.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vladsearch import catalog, compaction, segments, writer
from vladsearch.codebook import SAMPLE_POINTS_PER_CLUSTER, Codebook, DescriptorSample, PendingDescriptors
from vladsearch.encoder import BuildParams, Encoder
from vladsearch.extraction import ExtractedImage, WorkerEncoding, extract_images, keep_freed_memory, single_blas_thread
from vladsearch.features import Features, extractor_class
from vladsearch.images import IMAGE_EXTENSIONS, collect_inputs, expand_inputs
from vladsearch.progress import progress_bar
from vladsearch.snapshot import TEMPLATE_BLOB

RAY_INSTALL = 'pip install "vladsearch[ray]"'
# CPUs each actor reserves, per CPU it runs on. Less than 1 leaves room for Ray Data's own
# tasks: a pool of one-CPU actors filling every CPU deadlocks (ray issue #44687).
ACTOR_CPU_SHARE = 0.5
# Network extractors on GPUs: actors per GPU, so that several processes decode while one infers.
ACTORS_PER_GPU = 4
# Images per map_batches call (one staged segment each): about 4 batches per actor keeps the
# actors busy to the end; bounded so that a retried batch costs little.
MIN_BATCH, MAX_BATCH, BATCHES_PER_ACTOR = 16, 2048, 4


def import_ray():
    """The ray module, or a RuntimeError with the install line."""
    try:
        import ray
        import ray.data  # Ray Data ships as the [data] extra
    except ImportError:
        raise RuntimeError(f"--ray needs Ray Data: {RAY_INSTALL}") from None
    return ray


# --- inputs ---------------------------------------------------------------------------------
# --- the cluster -----------------------------------------------------------------------------
@contextlib.contextmanager
def cluster(address: str | None = None) -> Iterator[Any]:
    """Ray for one command: join `address` ('auto', 'host:port', 'ray://…'), or start a local
    instance (None or 'local') that is shut down, every process of it, on the way out.
    A caller that already called ray.init() keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address in (None, "", "local"):
        ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR)
    else:
        # The driver's vladsearch travels with the job, so every node runs the same code.
        ray.init(address=address, logging_level=logging.WARNING,
                 runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]})
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass
class Plan:
    """How the images are spread over the cluster (reported by `build --json`)."""

    actors: int
    num_cpus: float
    num_gpus: float
    batch_size: int
    resources: dict[str, float]
    nodes: int


def plan(ray, count: int, network: bool, actors: int | None = None) -> Plan:
    """Actors, their resources and the batch size for `count` images (network: a GPU-capable extractor)."""
    resources = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    use_gpus = network and gpus >= 1
    if actors is None:
        actors = int(gpus * ACTORS_PER_GPU) if use_gpus else max(1, int(cpus))
    actors = max(1, min(actors, math.ceil(count / MIN_BATCH)))
    num_cpus = round(min(1.0, cpus / actors) * ACTOR_CPU_SHARE, 3)
    num_gpus = round(gpus / actors, 3) if use_gpus else 0.0
    batch = min(MAX_BATCH, max(MIN_BATCH, math.ceil(count / (actors * BATCHES_PER_ACTOR))))
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return Plan(actors, num_cpus, num_gpus, batch, resources, nodes)


def _map(ray, items: list[dict[str, str]], worker: type, kwargs: dict[str, Any], setup: Plan, ordered: bool):
    """A Ray Data dataset of `worker`'s output over `items` (rows {"path", "name"})."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = ordered
    context.enable_progress_bars = False  # the driver shows its own
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not "progress bars disabled"
    dataset = ray.data.from_items(items)
    return dataset.map_batches(worker, fn_constructor_kwargs=kwargs, batch_size=setup.batch_size,
                               compute=ray.data.ActorPoolStrategy(size=setup.actors), num_cpus=setup.num_cpus,
                               num_gpus=setup.num_gpus or None, batch_format="numpy")


def executor_report(index) -> dict[str, Any]:
    """What ran a build or add, for `--json`: {"executor": "local"} or Ray with the cluster's resources."""
    setup = getattr(index, "cluster", None)
    if setup is None:
        return {"executor": "local"}
    return {"executor": "ray", "ray": asdict(setup)}


# --- worker side -----------------------------------------------------------------------------
class _SharedStaging:
    """The driver's staging directory, seen from a worker (the driver holds its lock)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    new_segment = segments.Staging.new_segment  # the local writer's own method: it only reads self.directory


class FeatureExtractor:
    """Ray Data callable class: decode + extract a batch of paths, as the local pool does."""

    def __init__(self, params: dict[str, Any], feature_config: dict[str, Any], weights: str | None,
                 blobs: dict[str, bytes | None] | None = None) -> None:
        import cv2

        cv2.setNumThreads(1)  # one image per actor at a time, as in the local pool's workers
        keep_freed_memory()   # and the same malloc settings (extraction.keep_freed_memory)
        self.encoder = Encoder(BuildParams.from_dict(params), feature_config, weights)
        if blobs is not None:
            self.encoder.load_blobs(blobs["codebook.npy"], pca=blobs.get("pca.npz"), coarse=blobs.get("coarse.npz"),
                                    descriptor_pq=blobs.get("descriptor_pq.faiss"))
        self.extractor = self.encoder.extractor()

    def extract(self, paths) -> Iterator[ExtractedImage]:
        p = self.encoder.params
        return extract_images([str(path) for path in paths], self.extractor, p.max_side, workers=1,
                              max_pixels=p.max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns: dict[str, list] = {key: [] for key in _FEATURE_COLUMNS}
        for item in self.extract(batch["path"]):
            f = item.features
            arrays = (f.keypoints, f.descriptors, f.scores) if f is not None else ()
            values = (str(item.path), item.error or "", item.file_size, item.mtime, item.sha1,
                      *(f.image_size if f is not None else (0, 0)),
                      *([np.asarray(a, np.float32).tobytes() for a in arrays] or [b""] * 3))
            for key, value in zip(_FEATURE_COLUMNS, values):
                columns[key].append(value)
        return {key: np.array(values, object if key in _BYTES else None) for key, values in columns.items()}


# Extracted features travel as plain columns (float32 bytes), never pickled.
_FEATURE_COLUMNS = ("path", "error", "file_size", "mtime", "sha1", "width", "height", "keypoints", "descriptors",
                    "scores")
_BYTES = ("keypoints", "descriptors", "scores")


def _extracted(row: dict[str, Any], dim: int) -> ExtractedImage:
    """The ExtractedImage a FeatureExtractor row describes."""
    if row["error"]:
        return ExtractedImage(Path(row["path"]), None, error=str(row["error"]))
    descriptors = np.frombuffer(row["descriptors"], np.float32).reshape(-1, dim).copy()
    features = Features(np.frombuffer(row["keypoints"], np.float32).reshape(-1, 2).copy(), descriptors,
                        np.frombuffer(row["scores"], np.float32).copy(), (int(row["width"]), int(row["height"])))
    return ExtractedImage(Path(row["path"]), features, int(row["file_size"]), float(row["mtime"]), str(row["sha1"]))


class SegmentEncoder(FeatureExtractor):
    """Ray Data callable class: decode, extract, encode a batch into one staged segment.

    Returns one row: the segment's description and the batch's image rows (JSON), the same
    rows `writer.SegmentStream` gives the local build.
    """

    def __init__(self, params: dict[str, Any], feature_config: dict[str, Any], weights: str | None,
                 blobs: dict[str, bytes | None], staging: str) -> None:
        super().__init__(params, feature_config, weights, blobs)
        self.staging = _SharedStaging(staging)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = {str(path): str(name) for path, name in zip(batch["path"], batch["name"])}
        out = writer.SegmentStream(self.staging, self.encoder, lambda path: names[str(path)], writer.Report())
        with single_blas_thread(self.extractor):
            for item in self.extract(batch["path"]):
                out.arrive(item)
                if item.features is not None:
                    out.queue(item)
            staged = out.finish()
        described = [{**asdict(s), "directory": str(s.directory)} for s in staged]
        rows = json.dumps(out.rows, default=lambda value: value.item())  # numpy scalars
        return {"segments": np.array([json.dumps(described)]), "rows": np.array([rows])}


# --- driver side -----------------------------------------------------------------------------
def _worker_kwargs(encoder: Encoder, blobs: dict[str, bytes | None] | None = None) -> dict[str, Any]:
    return {"params": vars(encoder.params), "feature_config": encoder.feature_config, "weights": encoder.weights,
            "blobs": blobs}  # what each actor receives once (docs/RAY.md)


def _failed(exc: BaseException) -> RuntimeError:
    """A one-line error naming the worker's own exception (the first `SomeError: …` of Ray's trace)."""
    lines = str(exc).strip().splitlines()
    cause = next((line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)),
                 lines[-1] if lines else type(exc).__name__)
    return RuntimeError(f"a Ray worker failed ({cause}); nothing was committed and the index keeps its last commit")


def train_on_cluster(ray, training: list[Path], names: dict[str, str], encoder: Encoder,
                     out: writer.SegmentStream, setup: Plan, progress: bool, timings: dict[str, float]) -> bytes | None:
    """Extract the training images on the cluster, in order, and train exactly as the local build."""
    p = encoder.params
    encoder.codebook = Codebook(p.clusters, restarts=p.restarts, seed=p.seed)
    sample = DescriptorSample(SAMPLE_POINTS_PER_CLUSTER * p.clusters, seed=p.seed)
    items = [{"path": str(path), "name": names[str(path)]} for path in training]
    dataset = _map(ray, items, FeatureExtractor, _worker_kwargs(encoder), setup, ordered=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vladsearch-") as scratch, single_blas_thread(encoder.extractor()):
        waiting = PendingDescriptors(scratch)
        dim = encoder.feature_dim
        rows = progress_bar((_extracted(row, dim) for row in dataset.iter_rows()), total=len(training),
                            desc="extract (codebook images)", enabled=progress)
        for item in rows:
            out.arrive(item)
            if item.features is not None:
                sample.add(item.features.descriptors)
                waiting.append(item)
        timings["extract"] = time.perf_counter() - start
        # The actors get the codebook with the next stage, so nothing for the local pool's WorkerEncoding.
        return writer._train(encoder, sample.sample(), waiting, out, timings, WorkerEncoding())


def encode_on_cluster(ray, paths: list[Path], names: dict[str, str], encoder: Encoder, staging_dir: Path,
                      setup: Plan, progress: bool) -> tuple[list[segments.StagedSegment], list[dict[str, Any]]]:
    """Extract + encode `paths` in SegmentEncoder actors; returns their staged segments and image rows."""
    if not paths:
        return [], []
    items = [{"path": str(path), "name": names[str(path)]} for path in paths]
    kwargs = {**_worker_kwargs(encoder, encoder.blobs()), "staging": str(staging_dir)}
    dataset = _map(ray, items, SegmentEncoder, kwargs, setup, ordered=False)
    staged, rows = [], []
    results = progress_bar(_per_image(dataset.iter_rows()), total=len(paths), desc="extract+encode (cluster)",
                           enabled=progress)
    for batch_staged, row in results:
        staged += batch_staged
        rows.append(row)
    position = {names[str(path)]: i for i, path in enumerate(paths)}
    rows.sort(key=lambda row: position[row["path"]])  # ids follow the visiting order, as locally
    return staged, rows


def _per_image(results) -> Iterator[tuple[list[segments.StagedSegment], dict[str, Any]]]:
    """(new staged segments, image row) per image of each batch result, so progress counts images."""
    for result in results:
        staged = [segments.StagedSegment(**{**s, "directory": Path(s["directory"])})
                  for s in json.loads(result["segments"])]
        for row in json.loads(result["rows"]):
            yield staged, row
            staged = []


def _count(report: writer.Report, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        if row["status"] == catalog.STATUS_SKIPPED:
            report.skipped.append((row["path"], row["reason"]))
            continue
        report.indexed += 1
        if row["status"] == catalog.STATUS_NO_KEYPOINTS:
            report.no_keypoints.append(row["path"])


def build_index(images: str | os.PathLike, *, index: str | os.PathLike, force: bool = False, features: str = "sift",
                clusters: int = 64, weights: str | None = None, workers: int | None = None, progress: bool = True,
                address: str | None = None, **params: Any):
    """`Index.build` on a Ray cluster: the same vectors as the local build with the same seed.

    images: a folder or a text file listing image paths; address: see `cluster`;
    workers: actors (default: one per cluster CPU, or ACTORS_PER_GPU per GPU for networks).
    Returns the Index, with `.cluster` describing the Plan.
    """
    from vladsearch.index import Index, _relative

    extractor_class(features)  # unknown names fail before any work
    index_dir = Path(os.path.abspath(index))
    writer.prepare_directory(index_dir, force)
    root, paths = collect_inputs(images)
    if not paths:
        raise ValueError(f"no images found in {images} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    encoder = Encoder(BuildParams(features=features, clusters=clusters, **params), weights=weights)
    extractor = encoder.extractor()
    names = {str(p): _relative(p, root) for p in paths}
    order = np.random.default_rng(encoder.params.seed).permutation(len(paths))
    visiting = [paths[i] for i in order]
    train_count = min(len(paths), encoder.params.codebook_images)
    report = writer.Report()
    timings = {"codebook": 0.0}
    start = time.perf_counter()
    try:
        with segments.Staging(index_dir) as staging, cluster(address) as ray:  # Ray stops first
            timings["start"] = time.perf_counter() - start
            setup = plan(ray, len(paths), extractor.runs_in_main_process, workers)
            out = writer.SegmentStream(staging, encoder, lambda p: names[str(p)], report)
            try:
                template = train_on_cluster(ray, visiting[:train_count], names, encoder, out, setup, progress,
                                            timings)
                out.finish()
                t0 = time.perf_counter()
                staged, rows = encode_on_cluster(ray, visiting[train_count:], names, encoder, staging.directory,
                                                 setup, progress)
                timings["encode"] = time.perf_counter() - t0
            except ray.exceptions.RayError as exc:
                raise _failed(exc) from None
            _count(report, rows)
            t0 = time.perf_counter()
            if encoder.params.codes:  # compact codes: trained on every staged vector, as locally
                from vladsearch.quantizer import train_codes

                encoder.coder = train_codes(encoder, out.staged + staged)
            meta = {**writer.build_meta(encoder, index_dir, root), "timings": timings, "next_id": 0}
            writer.commit(index_dir, out.staged + staged, out.rows + rows, report, "build",
                          replace={"meta": meta, "blobs": {**encoder.blobs(), TEMPLATE_BLOB: template}})
        compaction.auto_merge(index_dir, encoder.dim, encoder.feature_dim if encoder.params.keep_features else None,
                              encoder.params.keep_features)
        timings["index"] = time.perf_counter() - t0
    except OSError as exc:
        raise writer.disk_error(index_dir, exc) from None
    built = Index(index_dir, encoder, meta, root)
    built.report, built.timings, built.cluster = report, timings, setup
    return built


def add_images(index, paths: list[str | os.PathLike], *, address: str | None = None, workers: int | None = None,
               progress: bool = True, merge: bool = True) -> writer.Report:
    """`Index.add` on a Ray cluster: new or changed files encoded by actors, committed by the driver."""
    from vladsearch.index import _relative

    writer.check_writable(index.path)
    index._writable()  # a format 1 index migrates first, as with a local add
    index_dir = Path(os.path.abspath(index.path))
    files = {_relative(f, index.root): f for given in paths for f in expand_inputs(given)}
    report = writer.Report()
    db = catalog.connect(index_dir, readonly=True)
    try:
        todo = []
        for name, path in files.items():
            if path.exists() and writer._unchanged(catalog.find_image(db, name), path):
                report.unchanged += 1
            else:  # a listed file that is missing goes too: its worker reports it by name
                todo.append(Path(os.path.abspath(path)))
    finally:
        db.close()
    names = {str(Path(os.path.abspath(path))): name for name, path in files.items()}
    try:
        with segments.Staging(index_dir) as staging, cluster(address) as ray:  # Ray stops first
            index.cluster = plan(ray, max(1, len(todo)), index.encoder.extractor().runs_in_main_process, workers)
            try:
                staged, rows = encode_on_cluster(ray, todo, names, index.encoder, staging.directory, index.cluster,
                                                 progress)
            except ray.exceptions.RayError as exc:
                raise _failed(exc) from None
            _count(report, rows)
            if rows:
                root = index.root
                writer.commit(index_dir, staged, rows, report, "add", index.meta["build_id"],
                              meta=catalog.root_meta(index_dir, root) if root.is_dir() else None)
    except OSError as exc:
        raise writer.disk_error(index_dir, exc) from None
    if merge and report.segments:
        compaction.auto_merge(index_dir, index.encoder.dim, index._feature_dim(), index.params.keep_features)
    index.refresh()
    index.report = report
    return report
