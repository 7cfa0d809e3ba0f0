"""`Index`: a live image index on disk — its fitted state, where it lives, and its verbs.

The verbs delegate to one home each: build and add are orchestrated by
`vladsearch.store.orchestrator` (on this machine's process pool, or any other executor such as
`vladsearch.executors.ray`'s Ray), remove and copy commit through `vladsearch.store.writer`,
merging is `vladsearch.store.compaction`, the read path (query →
candidates → rerank → expansion) is `vladsearch.query.search`, what a reader sees is
`vladsearch.store.snapshot`, and the on-disk protocol is `vladsearch.store.catalog`. Every write
commits at once; `save` only copies an index elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import tempfile
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vladsearch.encoding.encoder import BuildParams, Encoder
from vladsearch.features import extractor_class
from vladsearch.io.images import IMAGE_EXTENSIONS, scan_input, scan_inputs
from vladsearch.query import search
from vladsearch.query.results import SearchResult
from vladsearch.store import catalog, compaction, migration, orchestrator, writer
from vladsearch.store.moves import find_moves
from vladsearch.store.segments import segment_dir
from vladsearch.store.snapshot import Snapshot
from vladsearch.store.writer import Report

__all__ = ["RERANK_KEYPOINTS", "BuildParams", "Index", "Report"]
RERANK_KEYPOINTS = search.RERANK_KEYPOINTS


class Index:
    """A VLAD index over a collection of images, stored in the directory `path`."""

    def __init__(self, path: Path, encoder: Encoder, meta: dict[str, Any], root: Path | None = None,
                 snapshot: Snapshot | None = None) -> None:
        self.path = Path(path)
        self.encoder = encoder
        self.meta = meta
        self.root = Path(root) if root is not None else self._find_root()
        self.report = Report()
        self.timings: dict[str, float] = meta.get("timings", {})
        self._snapshot = snapshot  # None: loaded on first use

    @property
    def params(self) -> BuildParams:
        return self.encoder.params

    # --- construction --------------------------------------------------------------
    @classmethod
    def build(cls, images: str | os.PathLike, *, index: str | os.PathLike | None = None, force: bool = False,
              features: str = "sift", clusters: int = 64, weights: str | None = None, workers: int | None = None,
              progress: bool = True, executor: orchestrator.Executor | None = None, **params: Any) -> Index:
        """Index every image under the folder `images` into the directory `index`, committed.

        index: where the index lives (None: a temporary directory — call `save`); an
        existing index there is replaced only with force=True. executor: what extracts and
        encodes (None: this machine's process pool with `workers` processes).
        """
        extractor_class(features)  # unknown names and bad parameters fail before any work
        build_params = BuildParams(features=features, clusters=clusters, **params)
        root, scan = scan_inputs(images)  # a folder, or a text file listing images
        paths = scan.images
        if not paths:
            raise ValueError(f"no images found in {images} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        temporary = index is None
        index_dir = Path(tempfile.mkdtemp(prefix="vladsearch-index-")) if temporary else Path(index)
        created = temporary or not index_dir.exists()
        writer.prepare_directory(index_dir, force)
        report = Report(not_images=[(_relative(p, root), why) for p, why in scan.not_images])
        names = {str(p): _relative(p, root) for p in paths}
        try:
            encoder = Encoder(build_params, weights=weights)
            encoder.extractor()
            meta, timings = orchestrator.build(index_dir, root, paths, names, encoder,
                                               executor or orchestrator.LocalExecutor(workers), report, progress)
        except BaseException as exc:
            if created:  # a failed first build leaves no half index behind
                shutil.rmtree(index_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise writer.disk_error(index_dir, exc) from None
            raise
        built = cls(index_dir, encoder, meta, root)
        built.report, built.timings = report, timings
        if temporary:
            weakref.finalize(built, shutil.rmtree, str(index_dir), True)
        return built

    @classmethod
    def open(cls, path: str | os.PathLike, weights: str | None = None, root: str | os.PathLike | None = None) -> Index:
        """Open an index directory (format 2, or format 1 read as is until its first write)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"index {path} does not exist: create it with "
                                    f"`vladsearch build IMAGES_DIR --index {path}`")
        if migration.is_format1(path):
            return migration.open_format1(cls, path, weights, root)
        db = catalog.connect(path, readonly=True)
        try:
            meta = catalog.read_meta(db)
            codebook, pca = catalog.read_blob(db, "codebook.npy"), catalog.read_blob(db, "pca.npz")
            coarse = catalog.read_blob(db, "coarse.npz")
            descriptor_pq = catalog.read_blob(db, "descriptor_pq.faiss")
            _, meta["updated_at"] = catalog.last_commit(db)
        finally:
            db.close()
        if codebook is None:
            raise catalog.IndexDamagedError(f"the catalog of {path} has no codebook; run `vladsearch check {path}`")
        encoder = Encoder(BuildParams.from_dict(meta["params"]), meta["features"], weights or meta.get("weights_path"))
        encoder.load_blobs(codebook, pca, coarse, descriptor_pq)
        return cls(path, encoder, meta, Path(root) if root else None)

    def _find_root(self) -> Path:
        """The photos' folder: beside the index as recorded relative to it, else its absolute path."""
        relative = self.meta.get("root_relative")
        candidates = [self.path / relative] if relative else []
        candidates.append(Path(self.meta.get("root", ".")))
        for candidate in candidates:
            if candidate.is_dir():
                return Path(os.path.abspath(candidate))
        warnings.warn(f"the photos' folder of {self.path} ({candidates[-1]}) is gone: reranking cannot read "
                      "database images; pass --root PHOTOS_DIR", stacklevel=3)
        return candidates[-1]

    # --- reading ---------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        """The committed state being searched (loaded on first use; see `refresh`)."""
        if self._snapshot is None:
            p = self.params
            snapshot = Snapshot(self.path, self.encoder.dim, self.encoder.feature_dim if p.keep_features else None,
                                p.factory, p.vector_dtype, p.refine, self.encoder.descriptor_codec)
            snapshot.refresh()
            self._snapshot = snapshot
        return self._snapshot

    def refresh(self) -> bool:
        """Follow other processes' commits; True when something changed."""
        return self._snapshot.refresh() if self._snapshot is not None else False

    @property
    def backend(self):
        return self.snapshot.backend

    def extractor(self):
        return self.encoder.extractor()

    def encode(self, descriptor_sets: list[np.ndarray]) -> np.ndarray:
        """Final index vectors of images given their descriptors: n × dim float32."""
        return self.encoder.encode(descriptor_sets)

    def search(self, queries: list[str | os.PathLike], top: int | None = None, *,
               options: search.SearchOptions | None = None, workers: int | None = None, progress: bool = False,
               verified_only: bool | None = None, **settings) -> list[SearchResult]:
        """The answer for each query image file (or folder of them); see vladsearch.query.search.

        Confirmed matches first (identical, copy, same scene), "not in the collection" when none;
        `settings` override fields of `SearchOptions` (rerank=0: the plain VLAD neighbours;
        unverified=True: the unconfirmed candidates after the confirmed ones; min_confidence, …).
        verified_only: kept for old callers; confirmed-only is now the default.
        """
        options = dataclasses.replace(options or search.SearchOptions(), **settings)
        if top is not None:
            options.top = top
        if verified_only:
            options.unverified = False
        return search.search_index(self.encoder, self.snapshot, self.root, queries, options, workers=workers,
                                   progress=progress)

    def search_vectors(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss-style search: xq nq×dim float32 -> (D nq×k scores, I nq×k image ids, -1 padded)."""
        return self.snapshot.search(xq, k, nprobe)

    def vectors_of(self, ids: list[int]) -> np.ndarray:
        return self.snapshot.reconstruct(ids)

    def image_paths(self) -> list[str]:
        """Paths of the images that have vectors, in id order."""
        return [r["path"] for r in catalog.image_rows(self.snapshot.db) if r["segment"] is not None]

    # --- writing ---------------------------------------------------------------------
    def _writable(self) -> None:
        if migration.is_format1(self.path):
            migration.migrate(self.path, self)
            self.meta = Index.open(self.path, self.encoder.weights, self.root).meta
            self._snapshot = None

    def add(self, paths: list[str | os.PathLike], workers: int | None = None, progress: bool = True,
            merge: bool = True, executor: orchestrator.Executor | None = None) -> Report:
        """Encode new or changed images with the existing codebook, commit them, merge by the log policy.

        executor: what extracts and encodes (None: this machine's pool with `workers` processes).
        """
        writer.check_writable(self.path)
        self._writable()
        scans = [scan_input(given) for given in paths]
        files = {_relative(f, self.root): f for scan in scans for f in scan.images}
        renamed = self._rename_moved(files)  # moved files keep their entry: no extraction
        files = {name: f for name, f in files.items() if name not in renamed}
        self.report = orchestrator.add(self.path, self.encoder, self.meta["build_id"], files,
                                       executor or orchestrator.LocalExecutor(workers), progress, self.root, merge)
        self.report.renamed = len(renamed)
        self.report.not_images = [(_relative(f, self.root), why) for scan in scans for f, why in scan.not_images]
        self.refresh()
        return self.report

    def remove(self, images: list[str | os.PathLike]) -> list[str]:
        """Drop images by their indexed path (or a filesystem path to them); returns the missing ones."""
        writer.check_writable(self.path)
        self._writable()
        names = [self._indexed_name(image) for image in images]
        missing = set(writer.remove_names(self.path, names))
        self.refresh()
        return [str(given) for given, name in zip(images, names) if name in missing]

    def rename(self, moves: Mapping[str | os.PathLike, str | os.PathLike]) -> int:
        """Change the stored path of indexed images old → new in one commit, without extracting again.

        Paths as `add`/`remove` take them: an indexed name (relative to the photos' folder) or
        a file's path (absolute, or relative to the current folder when that file exists and
        the name does not). The vector, cached features and content hash stay. Returns the
        number renamed; raises ValueError, renaming nothing, for an old path not indexed or a
        new path that already is.
        """
        writer.check_writable(self.path)
        self._writable()
        db = catalog.connect(self.path, readonly=True)
        try:
            names = {self._indexed_name(old, db): self._new_name(new) for old, new in moves.items()}
        finally:
            db.close()
        count = self._rename_names(names)
        self.refresh()
        return count

    def _rename_names(self, names: dict[str, str]) -> int:
        return writer.rename_names(self.path, names)

    def _new_name(self, image: str | os.PathLike) -> str:
        """The indexed name of a new path: relative to the photos' folder, or an existing file from here."""
        given = Path(image)
        if given.is_absolute() or (not (self.root / given).exists() and given.exists()):
            return _relative(given, self.root)
        return given.as_posix()

    def _rename_moved(self, files: dict[str, Path]) -> dict[str, str]:
        """Rename the entries of indexed files that now lie under another of `files`' names; new → old."""
        db = catalog.connect(self.path, readonly=True)
        try:
            found = find_moves(db, files, self.root)
        finally:
            db.close()
        try:
            self._rename_names(found)
        except ValueError:  # another writer changed these names meanwhile: extract as usual
            return {}
        return {new: old for old, new in found.items()}

    def _indexed_name(self, image: str | os.PathLike, db: sqlite3.Connection | None = None) -> str:
        given = str(image).replace(os.sep, "/")
        own = db is None
        db = catalog.connect(self.path, readonly=True) if own else db
        try:
            return given if catalog.find_image(db, given) else _relative(Path(image), self.root)
        finally:
            if own:
                db.close()

    def compact(self) -> compaction.MergeReport:
        """Merge every segment into one, dropping deleted vectors (`vladsearch compact`)."""
        writer.check_writable(self.path)
        self._writable()
        report = compaction.merge(self.path, self.encoder)
        self.refresh()
        return report

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Copy the committed index to `path` (nothing to do when it already lives there)."""
        path = Path(path)
        if path.exists() and path.resolve() == self.path.resolve():
            return path
        if migration.is_format1(self.path):
            raise ValueError(f"{self.path} is a format 1 index: run `vladsearch compact {self.path}` to migrate "
                             "it first, or copy the directory")
        writer.copy_index(self.path, self.snapshot.db, path, force, self.root)
        self.path, self._snapshot = path, None
        self.meta = Index.open(path, self.encoder.weights, self.root).meta
        return path

    # --- describing ------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        table = self.snapshot.db
        live = catalog.live_segments(table)
        counts = {"images": catalog.count_images(table), "vectors": len(self.snapshot.loaded_ids),
                  "indexed": catalog.count_images(table, catalog.STATUS_INDEXED),
                  "no_keypoints": catalog.count_images(table, catalog.STATUS_NO_KEYPOINTS),
                  "skipped": catalog.count_images(table, catalog.STATUS_SKIPPED),
                  "segments": len(live), "deletions": table.execute("SELECT COUNT(*) FROM deletions").fetchone()[0]}
        seq, _ = catalog.last_commit(table)
        return {
            "format_version": self.meta.get("format_version"), "created_by": self.meta.get("created_by"),
            "created": self.meta.get("created"), "updated": self.meta.get("updated"), "commits": seq,
            "root": str(self.root), "params": vars(self.params), "features": self.encoder.feature_config,
            "weights_path": self.encoder.weights, "dim": self.encoder.dim, "counts": counts,
            "segments": [{k: s[k] for k in ("name", "vectors", "bytes")} for s in live],
            "bytes_per_image": self._bytes_per_image(live),
            "verification_features": self._feature_cache_size(live, counts["vectors"]),
            "timings": self.timings,
            "skipped_files": [{"path": r["path"], "reason": r["reason"]}
                              for r in catalog.image_rows(table, catalog.STATUS_SKIPPED)],
            "no_keypoint_files": [r["path"] for r in catalog.image_rows(table, catalog.STATUS_NO_KEYPOINTS)],
        }


    def _feature_cache_size(self, live: list[dict[str, Any]], vectors: int) -> dict[str, Any]:
        """What the cached local features (for verification) cost on disk: in all and per image."""
        total = 0
        for segment in live:
            if segment["features"]:
                folder = segment_dir(self.path, segment["name"])
                total += sum(f.stat().st_size for f in folder.glob("*.bin"))
        return {"keypoints_per_image": self.params.keep_features,
                "descriptors": self.params.feature_codes or "float16" if self.params.keep_features else None,
                "bytes": total, "bytes_per_image": round(total / max(vectors, 1), 1)}

    def _bytes_per_image(self, live: list[dict[str, Any]]) -> dict[str, float]:
        """Marginal bytes one more image costs: in RAM (what a reader holds) and on disk (segments + catalog)."""
        vectors = sum(s["vectors"] for s in live)
        db = self.snapshot.db
        images = max(catalog.count_images(db), 1)
        pages = db.execute("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'images%'").fetchone()[0] \
            if _has_dbstat(db) else None
        catalog_bytes = (pages or 0) / images
        disk = sum(s["bytes"] for s in live) / max(vectors, 1) + catalog_bytes
        return {"ram": round(self.snapshot.ram_bytes_per_image(), 1), "disk": round(disk, 1)}


def _has_dbstat(db) -> bool:
    try:
        db.execute("SELECT 1 FROM dbstat LIMIT 1").fetchall()
        return True
    except Exception:  # noqa: BLE001 - SQLite built without the dbstat table
        return False


def indexed_name(path: Path, root: Path) -> str:
    """The table's name for a file: relative to the root (through symlinks too), else absolute."""
    absolute = Path(os.path.abspath(path))
    for candidate, base in ((absolute, root), (Path(os.path.realpath(path)), Path(os.path.realpath(root)))):
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            continue
    return absolute.as_posix()


_relative = indexed_name  # the short name this module uses
