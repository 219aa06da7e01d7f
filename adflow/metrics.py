"""Offline metrics for CTR models, as plain functions over arrays (the gate and the reports use these)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def auc(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def gauc(users: np.ndarray, y: np.ndarray, p: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC, over users with both a click and a non-click."""
    users, y, p = np.asarray(users), np.asarray(y), np.asarray(p)
    order = np.argsort(users, kind="stable")
    users, y, p = users[order], y[order], p[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    total, weight = 0.0, 0
    for yy, pp in zip(np.split(y, bounds), np.split(p, bounds), strict=True):
        if 0 < yy.sum() < len(yy):
            total += roc_auc_score(yy, pp) * len(yy)
            weight += len(yy)
    return total / weight if weight else float("nan")


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, list[float] | float]:
    """Predicted vs observed CTR by predicted-probability decile, and the expected calibration error."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    order = np.argsort(p, kind="stable")
    pred, obs, counts = [], [], []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            pred.append(float(p[chunk].mean()))
            obs.append(float(y[chunk].mean()))
            counts.append(len(chunk))
    ece = float(sum(c * abs(a - b) for a, b, c in zip(pred, obs, counts, strict=True)) / max(1, sum(counts)))
    return {"predicted": pred, "observed": obs, "ece": ece}


def paired_auc_diff(
    users: np.ndarray, y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, n_boot: int = 400, seed: int = 0
) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same impressions, with a 95% interval from a user-cluster bootstrap.

    Users, not impressions, are resampled: one user's impressions share her taste, and treating them as
    independent would make the interval too narrow. Both models are scored on every resample, so the
    interval is for the difference itself (paired), far tighter than comparing two separate intervals.
    """
    users, y, p_a, p_b = (np.asarray(x) for x in (users, y, p_a, p_b))
    if len(y) == 0:  # e.g. a test split without cold-start items: nothing to compare
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan}
    diff = auc(y, p_a) - auc(y, p_b)
    codes, inverse = np.unique(users, return_inverse=True)
    rows_of = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[k] for k in rng.integers(0, len(codes), len(codes))])
        d = auc(y[idx], p_a[idx]) - auc(y[idx], p_b[idx])
        if np.isfinite(d):
            draws.append(d)
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    return {"diff": float(diff), "lo": float(lo), "hi": float(hi)}


def cluster_var(x: np.ndarray, clusters: np.ndarray) -> float:
    """Variance of the mean of `x` treating `clusters`, not rows, as the independent draws: the cluster-robust
    (sandwich) variance with the small-sample factor C/(C-1). Rows of one cluster (one user's impressions in an
    A/B test; the two orders of a creative pair and every pair of one product) move together, so the
    row-independent variance is too small. Infinite with fewer than two clusters: they say nothing of spread."""
    x = np.asarray(x, float)
    codes, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    c = len(codes)
    if c < 2 or len(x) == 0:
        return float("inf")
    sums = np.bincount(inverse, weights=x - x.mean(), minlength=c)
    return c / (c - 1) * float(np.sum(sums**2)) / len(x) ** 2


def clustered_mean(x: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """The mean of `x` and its 95% half-width by `cluster_var`; for a paired difference pass x = b - a."""
    x = np.asarray(x, float)
    return {
        "mean": float(x.mean()) if len(x) else float("nan"),
        "ci95": float(1.96 * np.sqrt(cluster_var(x, clusters))),
    }


def ctr_report(
    users: np.ndarray, y: np.ndarray, p: np.ndarray, cold: np.ndarray, oracle: np.ndarray | None = None
) -> dict[str, float]:
    out = {
        "auc": auc(y, p),
        "gauc": gauc(users, y, p),
        "logloss": logloss(y, p),
        "ece": float(calibration(y, p)["ece"]),  # type: ignore[arg-type]
        "cold_auc": auc(y[cold], p[cold]) if cold.any() else float("nan"),
        "cold_share": float(cold.mean()),
        "mean_pred": float(np.mean(p)),
        "ctr": float(np.mean(y)),
    }
    if oracle is not None and np.isfinite(oracle).all():
        out["oracle_auc"] = auc(y, oracle)
        out["oracle_cold_auc"] = auc(y[cold], oracle[cold]) if cold.any() else float("nan")
    return out


def linear_probe(x: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression reading `labels` from the rows of `x` (stratified k-fold):
    how much of an attribute an embedding keeps where a linear model, as a CTR model's layers are, can use it.
    NaN when there are too few rows or only one label."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or len(labels) < 2 * folds:
        return float("nan")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cv = StratifiedKFold(min(folds, int(counts.max())), shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a rare label with fewer rows than folds only warns
        warnings.simplefilter("ignore", UserWarning)
        scores = cross_val_score(LogisticRegression(C=10.0, max_iter=3000), x, labels, cv=cv)
    return float(scores.mean())
