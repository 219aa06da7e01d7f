"""Reference profiles: what the last accepted dataset looked like, for drift checks on the next one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from adflow.contract import TABLES

MAX_CATEGORIES = 100  # wider categoricals (Taobao category ids) are not profiled by share


def drift_numeric_columns(table: str) -> list[str]:
    """Float columns that are measurements, not ids: their means are compared against the reference."""
    t = TABLES[table]
    return [c.name for c in t.columns if c.kind == "float" and c.ref is None and c.name not in t.key]


def profile_frame(table: str, df: pd.DataFrame) -> dict[str, Any]:
    t = TABLES[table]
    out: dict[str, Any] = {"rows": len(df), "numeric": {}, "categorical": {}}
    for col in drift_numeric_columns(table):
        if col in df and df[col].notna().any():
            s = df[col].astype(float)
            std = float(s.std()) if s.notna().sum() > 1 else 0.0
            out["numeric"][col] = {"mean": float(s.mean()), "std": 0.0 if math.isnan(std) else std}
    for col in t.categorical:
        if col in df and df[col].notna().any():
            shares = df[col].value_counts(normalize=True)
            if len(shares) <= MAX_CATEGORIES:
                # values keep their type (JSON keys would turn positions into strings)
                values = [v.item() if hasattr(v, "item") else v for v in shares.index]
                out["categorical"][col] = {"values": values, "weights": [float(w) for w in shares.to_numpy()]}
    if t.label_column and t.label_column in df and len(df):
        out["label_rate"] = float(df[t.label_column].mean())
    return out


def profile_dataset(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    return {name: profile_frame(name, df) for name, df in frames.items()}


def load_reference(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data
