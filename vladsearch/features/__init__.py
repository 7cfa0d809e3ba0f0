"""Local feature extractors and their registry.

`EXTRACTORS` maps a feature name to the class that implements it, as "module:Class" so
that listing the names (the CLI's choices) never imports torch. `get_extractor`
imports lazily and builds one. `capabilities(name)` says what a feature can do (mirror its
descriptors, survive rotation, run without torch, which matcher verifies it): the one place
other modules ask, instead of lists of feature names. `extraction.py` runs an extractor over
many images on a process pool (decoding through `vladsearch.io.images`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from vladsearch.features.base import Extractor, Features

# name -> ("module:Class", extra keyword arguments, one-line description)
EXTRACTORS: dict[str, tuple[str, dict[str, Any], str]] = {
    "sift": ("vladsearch.features.sift:SIFT", {}, "OpenCV SIFT, 128-d (default; no weights needed)"),
    "rootsift": ("vladsearch.features.sift:SIFT", {"root": True}, "SIFT with RootSIFT (Hellinger) descriptors"),
    "superpoint": ("vladsearch.features.superpoint:SuperPoint", {}, "SuperPoint v1, 256-d (needs torch)"),
    "aliked": ("vladsearch.features.aliked:ALIKED", {}, "ALIKED n16, 128-d (needs torch)"),
    "disk": ("vladsearch.features.disk:DISK", {}, "DISK depth model, 128-d (needs torch and kornia)"),
    "aliked-rot": ("vladsearch.features.aliked:ALIKED", {"model": "n16rot"},
                   "ALIKED n16rot, 128-d, trained for in-plane rotation (needs torch)"),
    "xfeat": ("vladsearch.features.xfeat:XFeat", {}, "XFeat, 64-d, fast on CPU (needs torch and kornia)"),
}


@dataclass(frozen=True)
class Capabilities:
    """What a registered feature type can do.

    mirrorable: a horizontally flipped image's descriptors can be computed from the original's
    (SIFT's cell and bin permutation, `rerank.mirror_sift_descriptors`), so flipped copies are
    searched and verified without extracting again; rotation_invariant: descriptors follow the
    keypoint's orientation, so a 90° turn still matches; needs_torch: the `torch` extra;
    matcher: how two images' features are matched (`query.matching.match_features`):
    "mutual-nn" is mutual nearest neighbours with Lowe's ratio test, "lightglue" LightGlue
    with the weights trained for this feature, "lighterglue" XFeat's LighterGlue.
    """

    mirrorable: bool = False
    rotation_invariant: bool = False
    needs_torch: bool = True
    matcher: str = "mutual-nn"


CAPABILITIES: dict[str, Capabilities] = {
    "sift": Capabilities(mirrorable=True, rotation_invariant=True, needs_torch=False),
    "rootsift": Capabilities(mirrorable=True, rotation_invariant=True, needs_torch=False),
    "superpoint": Capabilities(),
    "aliked": Capabilities(matcher="lightglue"),
    # n16rot is not invariant to a 90° turn: 5 LightGlue inliers between graf 1 and itself turned
    # 90° (n16: 76), 315 at 45° (n16: 248); docs/FEATURES.md
    "aliked-rot": Capabilities(matcher="lightglue"),
    "disk": Capabilities(matcher="lightglue"),
    "xfeat": Capabilities(matcher="lighterglue"),
}


def capabilities(name: str) -> Capabilities:
    """The capabilities of feature type `name`; ValueError listing valid names otherwise."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature type {name!r}; choose one of: {', '.join(EXTRACTORS)}")
    return CAPABILITIES.get(name, Capabilities())


def extractor_class(name: str) -> type[Extractor]:
    """The class registered under `name`; ValueError listing valid names otherwise."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature type {name!r}; choose one of: {', '.join(EXTRACTORS)}")
    target = EXTRACTORS[name][0]
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_extractor(name: str, **params: Any) -> Extractor:
    """Build the extractor registered under `name` with its preset and `params` on top.

    Parameters that are None are dropped so that callers can pass CLI options through.
    """
    preset = dict(EXTRACTORS[name][1]) if name in EXTRACTORS else {}
    cls = extractor_class(name)
    preset.update({key: value for key, value in params.items() if value is not None})
    return cls(**preset)


__all__ = ["CAPABILITIES", "EXTRACTORS", "Capabilities", "Extractor", "Features", "capabilities", "extractor_class",
           "get_extractor"]
