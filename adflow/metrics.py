"""Offline metrics for CTR models, as plain functions over arrays (the gate and the reports use these)."""

from __future__ import annotations

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
