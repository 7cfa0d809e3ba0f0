"""Evaluation datasets in their standard layouts, read into one structure.

`load_dataset(path)` recognises:

- **vladsearch layout** (see shared/data/README.md): `images/`, `queries/` (files or
  relative links into images/), `gt.json` = {"queries": {name: {"positives", "ignore"}}};
- **INRIA Holidays** (Jégou et al. 2008): `jpg/` or a flat folder of `NNNNNN.jpg`; image
  groups are `id // 100`, the first of each group (id divisible by 100) is the query,
  the rest of its group are positives and the query itself is ignored. (Some Holidays
  photos are stored rotated; the "rotated" variant that many papers use fixes them.)
- **UKBench** (Nistér & Stewénius 2006): `full/ukbench%05d.jpg` (or a flat folder),
  groups of 4; every image is a query whose positives are the other 3 of its group and
  which ignores itself (so mAP over the 3 others; the N-S score counts itself in the top 4);
- **revisited Oxford / Paris** (Radenović et al. 2018): `gnd_roxford5k.pkl` or
  `gnd_rparis6k.pkl` next to `jpg/`. The pickle is read by a restricted unpickler that
  admits only numpy arrays and builtin containers. Protocols: "easy" (positives easy;
  ignore junk+hard), "medium" (positives easy+hard; ignore junk; the default), "hard"
  (positives hard; ignore junk+easy). Query bounding boxes are kept in `Query.bbox`.

Database images are named by their path relative to `Dataset.images_dir` (posix
separators), the names `Index` reports in `Match.image`.
"""

from __future__ import annotations

import importlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vladsearch.io.images import list_images

PROTOCOLS = ("easy", "medium", "hard")


@dataclass
class Query:
    """One query image and its ground truth (names are database names).

    bbox: (x1, y1, x2, y2) region of interest in query pixels, or None for the whole image.
    """

    name: str
    path: Path
    positives: set[str]
    ignore: set[str] = field(default_factory=set)
    bbox: tuple[float, float, float, float] | None = None


@dataclass
class Dataset:
    """A database folder, the names of its database images, and the queries with ground truth."""

    name: str
    images_dir: Path
    database: list[str]
    queries: list[Query]
    layout: str = "vladsearch"


def load_dataset(path: str | Path, protocol: str = "medium") -> Dataset:
    """Read the dataset at `path`, whichever supported layout it has (see the module docstring).

    protocol: "easy" | "medium" | "hard", used by revisited Oxford/Paris only.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if (root / "gt.json").is_file():
        return _load_vladsearch(root)
    pickles = sorted(root.glob("gnd_r*.pkl"))
    if pickles:
        return _load_revisited(root, pickles[0], protocol)
    for folder in (root / "full", root):
        if folder.is_dir() and _numbered(folder, _UKBENCH):
            return _load_ukbench(root, folder)
    for folder in (root / "jpg", root):
        if folder.is_dir() and _numbered(folder, _HOLIDAYS):
            return _load_holidays(root, folder)
    raise ValueError(
        f"{root} is not a dataset layout vladsearch knows: expected gt.json + images/ + queries/ "
        "(see shared/data/README.md), INRIA Holidays (jpg/NNNNNN.jpg), UKBench (full/ukbenchNNNNN.jpg) "
        "or revisited Oxford/Paris (gnd_roxford5k.pkl / gnd_rparis6k.pkl + jpg/)"
    )


def _relative_images(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in list_images(folder)]


def _check_known(dataset: Dataset) -> Dataset:
    """Ground truth that names images missing from the database is a broken dataset: say which."""
    known = set(dataset.database)
    unknown = sorted({name for q in dataset.queries for name in q.positives - known})
    if unknown:
        raise ValueError(f"{dataset.name}: {len(unknown)} positive image(s) are not in {dataset.images_dir}, "
                         f"e.g. {', '.join(unknown[:5])}")
    if not dataset.queries:
        raise ValueError(f"{dataset.name}: the dataset has no queries")
    return dataset


# --- vladsearch layout -------------------------------------------------------------
def _load_vladsearch(root: Path) -> Dataset:
    images_dir, queries_dir = root / "images", root / "queries"
    if not images_dir.is_dir():
        raise ValueError(f"{root}/gt.json found but no images/ folder next to it")
    try:
        gt = json.loads((root / "gt.json").read_text())
        entries = gt["queries"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{root}/gt.json is not {{\"queries\": {{name: {{\"positives\": [...], "
                         f"\"ignore\": [...]}}}}}} ({exc})") from exc
    queries, missing = [], []
    for name, truth in entries.items():
        path = _follow_link_stub(queries_dir / name)
        if not path.exists():  # also catches a dangling link
            missing.append(name)
        queries.append(Query(name, path, set(truth.get("positives", [])), set(truth.get("ignore", []))))
    if missing:
        raise ValueError(f"{len(missing)} query file(s) of {root}/gt.json are missing from {queries_dir}, "
                         f"e.g. {', '.join(missing[:5])}")
    return _check_known(Dataset(root.name, images_dir, _relative_images(images_dir), queries))


def _follow_link_stub(path: Path) -> Path:
    """The target of a symbolic link stored as a small text file, else `path` itself.

    Copies made without symlink support (git with core.symlinks=false, some archivers)
    turn `queries/x.jpg -> ../images/x.jpg` into a file whose content is `../images/x.jpg`.
    """
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1024:
            return path
        target = path.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return path
    if not target or "\n" in target or Path(target).is_absolute():
        return path
    resolved = path.parent / target
    return resolved if resolved.is_file() else path


# --- INRIA Holidays and UKBench: ground truth from file numbers --------------------
_HOLIDAYS = re.compile(r"^(\d{6})\.jpg$", re.IGNORECASE)
_UKBENCH = re.compile(r"^ukbench(\d{5})\.jpg$", re.IGNORECASE)


def _numbered(folder: Path, pattern: re.Pattern) -> dict[str, int]:
    """{file name: number} of the files directly in `folder` whose name matches `pattern`."""
    return {p.name: int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))}


def _grouped_dataset(root: Path, folder: Path, pattern: re.Pattern, group_size: int, layout: str,
                     is_query) -> Dataset:
    numbers = _numbered(folder, pattern)
    groups: dict[int, set[str]] = {}
    for name, number in numbers.items():
        groups.setdefault(number // group_size, set()).add(name)
    queries = [Query(name, folder / name, groups[number // group_size] - {name}, {name})
               for name, number in sorted(numbers.items()) if is_query(number)]
    return _check_known(Dataset(root.name, folder, sorted(numbers), queries, layout))


def _load_holidays(root: Path, folder: Path) -> Dataset:
    return _grouped_dataset(root, folder, _HOLIDAYS, 100, "holidays", lambda n: n % 100 == 0)


def _load_ukbench(root: Path, folder: Path) -> Dataset:
    return _grouped_dataset(root, folder, _UKBENCH, 4, "ukbench", lambda n: True)


# --- revisited Oxford / Paris ------------------------------------------------------
def _numpy_core(submodule: str, name: str) -> Any:
    """numpy's internal `name` from numpy._core (numpy ≥ 2) or numpy.core (numpy 1)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this numpy has no {submodule}.{name}")


# What a pickle of dicts, lists and numpy arrays needs. `_codecs.encode` turns a str
# into bytes: protocol-2 pickles written by Python 3 store an array's bytes that way.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *(("builtins", name) for name in ("list", "dict", "tuple", "set", "frozenset", "bytearray",
                                      "bytes", "str", "int", "float", "complex", "bool")),
}
_NUMPY_INTERNALS = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays, dtypes, scalars and builtin containers.

    Any other global (a class, `os.system`, …) raises `pickle.UnpicklingError`, so a
    crafted ground-truth file cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins"}.get(module, module)  # Python 2 names in protocol ≤ 2
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        for package in ("numpy.core.", "numpy._core."):
            if module.startswith(package) and (module[len(package):], name) in _NUMPY_INTERNALS:
                return _numpy_core(module[len(package):], name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a ground-truth pickle may hold only lists, dicts and "
            "numpy arrays (this file may have been tampered with; get it again from its source)"
        )


def safe_load_pickle(path: str | Path) -> Any:
    """Read a pickle of lists, dicts and numpy arrays without ever running its code."""
    with open(path, "rb") as handle:
        return SafeUnpickler(handle, encoding="latin1").load()


def _load_revisited(root: Path, gnd_path: Path, protocol: str) -> Dataset:
    protocol = protocol.lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    images_dir = root / "jpg"
    if not images_dir.is_dir():
        raise ValueError(f"{gnd_path.name} found but no jpg/ folder next to it in {root}")
    try:
        cfg = safe_load_pickle(gnd_path)
        imlist, qimlist, gnd = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{gnd_path} lacks the revisited 'imlist', 'qimlist', 'gnd' entries ({exc})") from exc
    database = [f"{name}.jpg" for name in imlist]
    queries = []
    picks = {  # (positive keys, ignored keys) of the revisitop protocols
        "easy": (("easy",), ("junk", "hard")),
        "medium": (("easy", "hard"), ("junk",)),
        "hard": (("hard",), ("junk", "easy")),
    }[protocol]
    for qname, truth in zip(qimlist, gnd):
        positives, ignore = ({database[int(i)] for key in keys for i in truth.get(key, ())} for keys in picks)
        bbox = tuple(float(v) for v in truth["bbx"]) if truth.get("bbx") is not None else None
        queries.append(Query(f"{qname}.jpg", images_dir / f"{qname}.jpg", positives, ignore, bbox))
    missing = [q.name for q in queries if not q.path.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} query image(s) of {gnd_path.name} are missing from {images_dir}, "
                         f"e.g. {', '.join(missing[:5])}")
    name = gnd_path.stem.removeprefix("gnd_")
    return _check_known(Dataset(f"{name}-{protocol}", images_dir, database, queries, "revisited"))
