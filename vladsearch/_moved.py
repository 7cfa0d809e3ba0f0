"""Old import paths that still work: `vladsearch.search` is `vladsearch.query.search`, with a warning.

The modules moved into layer folders (io, features, encoding, store, query, collection, executors,
evaluation, live). Code that still imports an old flat name gets the very module object of the
new path and a DeprecationWarning that names it; `install()` (called by `vladsearch/__init__.py`)
puts the finder that does this on `sys.meta_path`. Remove an entry once nobody imports it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old module name -> new module name
MOVED: dict[str, str] = {f"vladsearch.{old}": f"vladsearch.{new}" for old, new in {
    "arguments": "io.arguments",
    "image_formats": "io.image_formats",
    "images": "io.images",
    "progress": "io.progress",
    "extraction": "features.extraction",
    "codebook": "encoding.codebook",
    "vlad": "encoding.vlad",
    "encoder": "encoding.encoder",
    "quantizer": "encoding.compact_codes",
    "catalog": "store.catalog",
    "segments": "store.segments",
    "feature_store": "store.feature_store",
    "index_backend": "store.index_backend",
    "snapshot": "store.snapshot",
    "transaction": "store.transaction",
    "writer": "store.writer",
    "compaction": "store.compaction",
    "legacy": "store.migration",
    "check": "store.check",
    "moves": "store.moves",
    "orchestrator": "store.orchestrator",
    "rerank": "query.rerank",
    "pair_verification": "query.pair_verification",
    "verification": "query.verification",
    "results": "query.results",
    "search": "query.search",
    "distributed": "executors.ray",
    "collection_knn": "collection.knn",
    "duplicates": "collection.duplicates",
    "pairs": "collection.pairs",
    "keep_choice": "collection.keep_choice",
    "duplicate_actions": "collection.duplicate_actions",
    "file_moves": "collection.file_moves",
    "duplicates_report": "collection.report",
    "datasets": "evaluation.datasets",
    "metrics": "evaluation.metrics",
    "evaluate": "evaluation.evaluate",
    "watch": "live.watcher",
    "watch_events": "live.events",
    "watch_cli": "live.cli",
    "features.matching": "query.matching",
}.items()}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new name (the same object, its own spec kept)."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the old name's spec on it


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old flat module names of MOVED; warns once per import with the new path."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; import it from there ({fullname} will be removed)",
                      DeprecationWarning, stacklevel=2)  # warnings skips importlib's frames: the importer's line
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder first on sys.meta_path, once (importing vladsearch does this).

    First: a stale file of an old name elsewhere on the path (an editable install of an older
    checkout, say) must not be imported instead of the moved module.
    """
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
