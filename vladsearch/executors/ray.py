"""Build and add on a Ray cluster: `RayExecutor`, an executor of the one write orchestrator.

`build_index` and `add_images` are `Index.build` and `Index.add` with a `RayExecutor`: the
orchestration (orchestrator.py: prepare → train → stream → commit → merge) is the local
one, so a Ray build trains, commits and merges exactly as a local build does. The executor
only turns images into staged segments and rows. The training images (the first
`codebook_images` of the seeded visiting order) are extracted by `FeatureExtractor` actors
and come back in that order, so the driver trains on them as locally. Every other image
goes to `SegmentEncoder` actors (Ray Data `map_batches` with a callable class): each
decodes and extracts with `extraction.extract_images` and encodes with the `Encoder` and
`writer.SegmentStream` the local build uses, writing its own staged segment per batch into
the index's staging area, and hands back only that segment's description and its image
rows. The driver commits everything in one transaction (catalog.py), so a failed worker or
Ctrl-C leaves the index at its last commit; what was staged is removed.

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
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vladsearch.encoding.encoder import BuildParams, Encoder
from vladsearch.features import Features
from vladsearch.features.extraction import ExtractedImage, extract_images, keep_freed_memory, single_blas_thread
from vladsearch.io.progress import progress_bar
from vladsearch.store import segments, writer

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
        self.staging = segments.SharedStaging(staging)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = {str(path): str(name) for path, name in zip(batch["path"], batch["name"])}
        out = writer.SegmentStream(self.staging, self.encoder, lambda path: names[str(path)])
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


class RayExecutor:
    """The orchestrator's executor on a Ray cluster (orchestrator.py states the contract).

    address: see `cluster` (entered with the executor, left before the staging area is
    removed, so a local instance's workers are gone by then); workers: actors (default: one
    per cluster CPU, or ACTORS_PER_GPU per GPU for networks). `plan` describes the actors
    once the first images are handed out.
    """

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.address = address
        self.workers = workers
        self.plan: Plan | None = None
        self.ray = None
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        self.ray = self._stack.enter_context(cluster(self.address))
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _setup(self, count: int, encoder: Encoder) -> Plan:
        if self.plan is None:
            self.plan = plan(self.ray, max(1, count), encoder.extractor().runs_in_main_process, self.workers)
        return self.plan

    def extract(self, paths: list[Path], encoder: Encoder, progress: bool,
                then: list[Path] = ()) -> Iterable[ExtractedImage]:
        """The training images' features, extracted by FeatureExtractor actors, in order."""
        setup = self._setup(len(paths) + len(then), encoder)
        dataset = _map(self.ray, [{"path": str(path)} for path in paths], FeatureExtractor,
                       _worker_kwargs(encoder), setup, ordered=True)
        return progress_bar(self._guarded(_extracted(row, encoder.feature_dim) for row in dataset.iter_rows()),
                            total=len(paths), desc="extract (codebook images)", enabled=progress)

    def _guarded(self, items: Iterable) -> Iterator:
        try:
            yield from items
        except self.ray.exceptions.RayError as exc:
            raise _failed(exc) from None

    def encode(self, paths: list[Path], encoder: Encoder, out: writer.SegmentStream, progress: bool) -> None:
        """Extract + encode `paths` in SegmentEncoder actors, each batch a staged segment in out's staging area."""
        if not paths:
            return
        setup = self._setup(len(paths), encoder)
        names = {str(path): out.name_of(path) for path in paths}
        items = [{"path": str(path), "name": names[str(path)]} for path in paths]
        kwargs = {**_worker_kwargs(encoder, encoder.blobs()), "staging": str(out.staging.directory)}
        dataset = _map(self.ray, items, SegmentEncoder, kwargs, setup, ordered=False)
        staged, rows = [], []
        results = progress_bar(self._guarded(_per_image(dataset.iter_rows())), total=len(paths),
                               desc="extract+encode (cluster)", enabled=progress)
        for batch_staged, row in results:
            staged += batch_staged
            rows.append(row)
        position = {names[str(path)]: i for i, path in enumerate(paths)}
        rows.sort(key=lambda row: position[row["path"]])  # ids follow the visiting order, as locally
        out.adopt(staged, rows)


def _per_image(results) -> Iterator[tuple[list[segments.StagedSegment], dict[str, Any]]]:
    """(new staged segments, image row) per image of each batch result, so progress counts images."""
    for result in results:
        staged = [segments.StagedSegment(**{**s, "directory": Path(s["directory"])})
                  for s in json.loads(result["segments"])]
        for row in json.loads(result["rows"]):
            yield staged, row
            staged = []


def build_index(images: str | os.PathLike, *, index: str | os.PathLike, address: str | None = None,
                workers: int | None = None, **kwargs: Any):
    """`Index.build` on a Ray cluster: the same vectors as the local build with the same seed.

    images: a folder or a text file listing image paths; address, workers: see `RayExecutor`;
    kwargs: `Index.build`'s. Returns the Index, with `.cluster` describing the Plan.
    """
    from vladsearch.index import Index

    executor = RayExecutor(address, workers)
    built = Index.build(images, index=index, executor=executor, **kwargs)
    built.cluster = executor.plan
    return built


def add_images(index, paths: list[str | os.PathLike], *, address: str | None = None, workers: int | None = None,
               progress: bool = True, merge: bool = True) -> writer.Report:
    """`Index.add` on a Ray cluster: new or changed files encoded by actors, committed by the driver."""
    executor = RayExecutor(address, workers)
    report = index.add(paths, progress=progress, merge=merge, executor=executor)
    index.cluster = executor.plan
    return report
