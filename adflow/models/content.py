"""Content embeddings as the CTR models read them: whitened on the catalog.

A contrastively trained encoder can leave its embeddings nearly collapsed onto a few directions: on make
run's world the top five principal directions of MOON's 64-d catalog embeddings hold 96% of the variance
(MiniLM's top five: 32%). Cosines are then ruled by those few directions (category, the photo's look) and
the rest of what the embedding knows (colour within a category, style) moves them by little, so CiUBM's
similarities of the target to the user's clicks carry little of it. Whitening on the catalog (centre, turn
onto the principal directions, scale each to unit variance; BERT-whitening, Su et al. 2021) gives every
direction its say. It is fitted once on the feature set's catalog (content only: no click, no label reaches
it) and baked into the model's content table, so serving reads the same vectors; the embeddings in Feast stay as the encoder wrote them
(image search, MOON's own metric, needs them raw: whitening fitted on catalog products amplifies the
directions in which a query photo differs from its product and loses recall).
"""

from __future__ import annotations

import numpy as np

FIT_ROWS = 200_000  # the whitening is a D x D fit: a seeded sample of a larger catalog is plenty
CHUNK = 100_000


def whiten(emb: np.ndarray, eps: float, seed: int = 0) -> np.ndarray:
    """Rows of `emb` whitened on the rows themselves, unit length (float32).

    Rows are first scaled to unit length (the cosine is what the CTR models read; a norm is not).
    Each principal direction is scaled by 1 / sqrt(its variance + eps x the mean variance): eps 0 is full
    whitening, a larger eps keeps more of the original weighting (directions with next to no variance,
    mostly noise, are not blown up to the size of the others). Rows of zeros (no vector) stay zeros."""
    x = np.asarray(emb, np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"whiten needs a non-empty [items, dim] matrix, got shape {x.shape}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    have = np.abs(x).sum(1) > 0
    if have.sum() < 2:
        raise ValueError("whiten needs at least two items with a vector to fit on")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    fit = x[have]
    if len(fit) > FIT_ROWS:
        fit = fit[np.random.default_rng(seed).choice(len(fit), FIT_ROWS, replace=False)]
    mean = fit.mean(0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    var = s**2 / len(fit)
    keep = var > var.max() * 1e-12  # directions the catalog does not span carry nothing to scale up
    proj = vt[keep].T / np.sqrt(var[keep] + eps * var.mean())
    out = np.zeros((len(x), int(keep.sum())), np.float32)
    for i in range(0, len(x), CHUNK):
        z = (x[i : i + CHUNK] - mean) @ proj
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        out[i : i + CHUNK] = z
    out[~have] = 0.0
    return out
