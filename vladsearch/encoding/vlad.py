"""VLAD aggregation (Jégou et al., CVPR 2010) and its published normalisations, as plain functions.

A VLAD vector sums, for each visual word, the residuals of the descriptors assigned
to it: v_k = Σ_{x: NN(x)=k} (x - c_k), concatenated to a K·D vector. Improvements:
- power normalisation, signed square root (Jégou et al., PAMI 2012) — the notebook's;
- intra-normalisation: L2 per word block before the global L2 (Arandjelović &
  Zisserman, "All about VLAD", CVPR 2013), which tames bursty words;
- PCA + whitening to a smaller dimension (Jégou & Chum, ECCV 2012), in `PCAWhitening`.

None of these functions mutate their arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def vlad(descriptors: np.ndarray, centroids: np.ndarray, assignments: np.ndarray) -> np.ndarray:
    """Unnormalised VLAD: per-word residual sums, one vectorised pass.

    descriptors N×D float32, centroids K×D float32, assignments N int (word of each
    descriptor) -> K·D float32. No descriptors gives the zero vector.
    """
    k, d = centroids.shape
    sums = np.zeros((k, d), np.float32)
    counts = np.zeros(k, np.float32)
    if len(descriptors):
        np.add.at(counts, assignments, 1.0)
        # Sorting by word and summing contiguous runs is much faster than np.add.at on rows.
        order = np.argsort(assignments, kind="stable")
        sorted_words = assignments[order]
        starts = np.flatnonzero(np.r_[True, sorted_words[1:] != sorted_words[:-1]])
        sums[sorted_words[starts]] = np.add.reduceat(descriptors[order], starts, axis=0)
    # Σ(x - c) = Σx - n·c
    return (sums - counts[:, None] * centroids).reshape(-1).astype(np.float32, copy=False)


class RawVLAD:
    """A picklable `descriptors -> unnormalised VLAD` function for one codebook.

    For `extraction.WorkerEncoding`: worker processes reduce each image to its K·D float32
    raw VLAD, exactly as `vlad(descriptors, codebook.centroids_, codebook.assign(descriptors))`.
    codebook: a fitted `vladsearch.encoding.codebook.Codebook`.
    """

    def __init__(self, codebook) -> None:
        self.codebook = codebook

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:
        return vlad(descriptors, self.codebook.centroids_, self.codebook.assign(descriptors))


def power_normalize(vectors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Signed power normalisation sign(v)·|v|^alpha (alpha 0.5: signed square root)."""
    return (np.sign(vectors) * np.abs(vectors) ** alpha).astype(np.float32, copy=False)


def intra_normalize(vectors: np.ndarray, clusters: int) -> np.ndarray:
    """L2-normalise each of the `clusters` word blocks of every vector (… × K·D -> same)."""
    shape = vectors.shape
    blocks = vectors.reshape(*shape[:-1], clusters, -1)
    norms = np.linalg.norm(blocks, axis=-1, keepdims=True)
    return (blocks / np.maximum(norms, 1e-12)).reshape(shape).astype(np.float32, copy=False)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis; zero vectors stay zero (never NaN)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def normalize_vlad(vectors: np.ndarray, clusters: int, power: float | None = 0.5,
                   intra: bool = False) -> np.ndarray:
    """The normalisation chain applied to raw VLAD vectors (… × K·D float32).

    Order as in Arandjelović & Zisserman 2013: intra-normalisation (if chosen), then
    the power law (if chosen), then the global L2.
    """
    if intra:
        vectors = intra_normalize(vectors, clusters)
    if power is not None and power != 1.0:
        vectors = power_normalize(vectors, power)
    return l2_normalize(vectors)


class PCAWhitening:
    """PCA to `dim` components with optional whitening, fitted on VLAD vectors.

    Whitening divides each component by sqrt(eigenvalue + eps); Jégou & Chum (ECCV
    2012) show it helps VLAD once the vectors are re-L2-normalised afterwards.
    Learned state: mean_ (D,), components_ (dim×D), scale_ (dim,).
    """

    def __init__(self, dim: int = 256, whiten: bool = True, eps: float = 1e-6) -> None:
        if dim <= 0:
            raise ValueError(f"PCA dimension must be positive, got {dim}")
        self.dim = dim
        self.whiten = whiten
        self.eps = eps

    def fit(self, vectors: np.ndarray) -> PCAWhitening:
        """vectors: N×D float32, N ≥ 2."""
        vectors = np.asarray(vectors, np.float64)
        n, d = vectors.shape
        if n < 2:
            raise ValueError("PCA needs at least 2 images to fit; use --pca 0 to disable it")
        dim = min(self.dim, d, n - 1)
        self.mean_ = vectors.mean(axis=0)
        centred = vectors - self.mean_
        # SVD of the N×D data (N is usually ≪ D for VLAD) gives the top directions directly.
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        eigenvalues = singular[:dim] ** 2 / (n - 1)
        self.components_ = vt[:dim].astype(np.float32)
        self.scale_ = (1.0 / np.sqrt(eigenvalues + self.eps) if self.whiten
                       else np.ones(dim)).astype(np.float32)
        self.mean_ = self.mean_.astype(np.float32)
        return self

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """N×D -> N×dim float32, L2-normalised."""
        projected = (np.asarray(vectors, np.float32) - self.mean_) @ self.components_.T
        return l2_normalize(projected * self.scale_)

    @property
    def output_dim(self) -> int:
        return int(self.components_.shape[0])

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean_, "components": self.components_, "scale": self.scale_}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], whiten: bool) -> PCAWhitening:
        pca = cls(dim=int(arrays["components"].shape[0]), whiten=whiten)
        pca.mean_, pca.components_, pca.scale_ = arrays["mean"], arrays["components"], arrays["scale"]
        return pca
