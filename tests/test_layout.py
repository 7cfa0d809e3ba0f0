"""The layers: old flat import paths still work with a warning, and no layer imports one above it."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

import vladsearch
from vladsearch import _moved

PACKAGE = Path(vladsearch.__file__).parent
# bottom to top; a module may import its own layer and the ones under it only
LAYERS = ["version", "io", "features", "encoding", "store", "query", "index",
          "executors", "collection", "evaluation", "live", "server", "cli"]


def test_an_old_import_path_gives_the_same_module_and_warns_with_the_new_path():
    sys.modules.pop("vladsearch.search", None)
    with pytest.warns(DeprecationWarning, match=r"vladsearch\.search moved to vladsearch\.query\.search") as caught:
        import vladsearch.search as old
    from vladsearch.query import search

    assert caught[0].filename == __file__  # the warning points at the line that imports the old path
    assert old is search
    assert search.__spec__.name == "vladsearch.query.search"  # the new module keeps its own spec


def test_a_renamed_module_is_found_under_its_old_name_by_from_import():
    sys.modules.pop("vladsearch.legacy", None)
    with pytest.warns(DeprecationWarning, match="vladsearch.store.migration"):
        from vladsearch import legacy
    from vladsearch.store import migration

    assert legacy is migration


def test_every_old_path_names_a_module_that_exists():
    for old, new in _moved.MOVED.items():
        assert (PACKAGE.parent / (new.replace(".", "/") + ".py")).is_file(), f"{old} -> {new}: no such module"
        assert not (PACKAGE.parent / (old.replace(".", "/") + ".py")).exists(), f"{old} is still a real module"


def test_the_new_paths_import_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for new in _moved.MOVED.values():
            importlib.import_module(new)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "vladsearch" or len(parts) < 2:
        return None  # the package's face and other packages
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_imports_point_down_only():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = _layer(module)
        if own is None:
            continue
        for name in _imports(path):
            target = _layer(name)
            if target is not None and target > own:
                upward.append(f"{module} imports {name}")
    assert upward == []
