"""Expectation suites built from the data contract, the validation config and the drift reference.

Each expectation carries meta {"table", "check", "column"}: the check name is what a person reads in the
failure message and the run summary ("referential integrity", "key uniqueness", "drift: label rate", ...).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd

from adflow.config import ValidationConfig
from adflow.contract import TABLES

from .profile import drift_numeric_columns

# What the pandas execution engine reports as the element type of each contract kind.
# GE 1.24 matches no name for tz-aware datetimes in a type list; for "ts" columns the timestamp-sanity range
# check does the type's job (it fails on values that are not comparable with UTC datetimes).
TYPE_NAMES = {
    "int": ["int64", "Int64Dtype", "int32"],
    "float": ["float64", "float32"],
    "str": ["str", "object", "string"],
}
IMAGE_OK = "_image_file_ok"
# The share a category absent on one side is given, so that a vanished or new category gives a finite
# divergence that grows with its share (s * ln(s / floor)) instead of infinity with no value to report
CATEGORY_SHARE_FLOOR = 1e-6


def plain_value(v: Any) -> Any:
    """A numpy scalar as the Python value it holds: numpy's int64 positions would not serialise into the
    report, and read "np.int64(360)" in a failure message."""
    return v.item() if isinstance(v, np.number | np.bool_) else v


def _kl(p: dict[Any, float], q: dict[Any, float]) -> float:
    """KL(p || q) in nats over the union of both sides' values, each share floored and renormalised."""
    values = set(p) | set(q)
    norm = 1 + CATEGORY_SHARE_FLOOR * len(values)

    def share(d: dict[Any, float], v: Any) -> float:
        return (d.get(v, 0.0) + CATEGORY_SHARE_FLOOR) / norm

    return float(sum(share(p, v) * math.log(share(p, v) / share(q, v)) for v in values))


class ExpectColumnCategorySharesToStayClose(gx.expectations.ExpectColumnKLDivergenceToBeLessThan):
    """The categorical KL drift check, both ways. GE's own computes KL(current || reference) only, which a
    vanished category does not move (two categories merged passes) and a new one sends to infinity (failing
    with "observed None"). Here both KL(reference || current) and KL(current || reference) must stay under the
    threshold, shares are floored (CATEGORY_SHARE_FLOOR), and the result names the new and missing values.
    Its metrics (value counts, non-null count) and Data Docs renderers are GE's."""

    def _validate(
        self,
        metrics: dict[str, Any],
        runtime_configuration: dict[str, Any] | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        kwargs = self.configuration.kwargs
        partition, threshold = kwargs["partition_object"], float(kwargs["threshold"])
        total = sum(partition["weights"])
        ref = {v: w / total for v, w in zip(partition["values"], partition["weights"], strict=True)}
        counts = metrics["column.value_counts"]
        n = metrics["column_values.nonnull.count"]
        cur = {plain_value(v): float(c) / n for v, c in counts.items()} if n else {}
        forward, backward = _kl(ref, cur), _kl(cur, ref)
        missing = sorted((v for v in ref if v not in cur), key=str)
        new = sorted((v for v in cur if v not in ref), key=str)
        values = [*ref, *new]
        notes = [f"KL(reference||current) {forward:.3f}, KL(current||reference) {backward:.3f}"]
        if missing:
            notes.append(f"missing {missing[:10]}")
        if new:
            notes.append(f"new {new[:10]}")
        return {
            "success": forward <= threshold and backward <= threshold,
            "result": {
                "observed_value": max(forward, backward),
                "details": {
                    # the keys GE's renderers read
                    "observed_partition": {"values": values, "weights": [cur.get(v, 0.0) for v in values]},
                    "expected_partition": {"values": values, "weights": [ref.get(v, 0.0) for v in values]},
                    "kl_reference_current": forward,
                    "kl_current_reference": backward,
                    "missing_values": missing,
                    "new_values": new,
                    "note": "; ".join(notes),
                },
            },
        }


def _meta(table: str, check: str, column: str | None = None) -> dict[str, Any]:
    return {"table": table, "check": check, "column": column}


def build(
    table: str,
    df: pd.DataFrame,
    cfg: ValidationConfig,
    keys: dict[str, list[Any]],
    reference: dict[str, Any] | None,
    require_rows: bool,
    now: dt.datetime,
    source: str = "",
) -> list[Any]:
    """Expectations for one table. `keys` holds the key values of every table present, for referential
    integrity; `source` is the dataset's (its manifest's), which picks the label-rate bounds."""
    E = gx.expectations
    t = TABLES[table]
    present = [c for c in t.columns if c.name in df.columns]
    out: list[Any] = [
        E.ExpectTableColumnsToMatchSet(
            column_set=t.column_names + ([IMAGE_OK] if IMAGE_OK in df.columns else []),
            exact_match=True,
            meta=_meta(table, "schema: columns"),
        )
    ]
    if require_rows:
        out.append(E.ExpectTableRowCountToBeBetween(min_value=1, meta=_meta(table, "not empty")))
    for c in present:
        if c.kind in TYPE_NAMES:
            out.append(
                E.ExpectColumnValuesToBeInTypeList(
                    column=c.name, type_list=TYPE_NAMES[c.kind], meta=_meta(table, "schema: type", c.name)
                )
            )
        if not c.nullable:
            out.append(E.ExpectColumnValuesToNotBeNull(column=c.name, meta=_meta(table, "nulls", c.name)))
        lo, hi = c.min, c.max
        if table == "items" and c.name == "price":
            lo, hi = cfg.price_min, cfg.price_max
        if lo is not None or hi is not None:
            out.append(
                E.ExpectColumnValuesToBeBetween(
                    column=c.name, min_value=lo, max_value=hi, meta=_meta(table, "range", c.name)
                )
            )
        if c.allowed is not None:
            out.append(
                E.ExpectColumnValuesToBeInSet(
                    column=c.name, value_set=list(c.allowed), meta=_meta(table, "allowed values", c.name)
                )
            )
        if c.ref is not None and c.ref[0] in keys:
            out.append(
                E.ExpectColumnValuesToBeInSet(
                    column=c.name,
                    value_set=keys[c.ref[0]],
                    meta=_meta(table, f"referential integrity -> {c.ref[0]}.{c.ref[1]}", c.name),
                )
            )
        elif c.ref is not None and TABLES[c.ref[0]].optional:
            # The optional target table is absent, so nothing can point into it: a null reference is fine
            # (Taobao has no queries), a value names a row that is not there. (A missing required table
            # already fails "table present".)
            out.append(
                E.ExpectColumnValuesToBeNull(
                    column=c.name,
                    meta=_meta(
                        table, f"referential integrity -> {c.ref[0]}.{c.ref[1]} (table missing)", c.name
                    ),
                )
            )
        if c.kind == "ts":
            # events have a plausible start; an item may have launched any time before (old films)
            event = c.name == t.time_column and table != "items"
            earliest = pd.Timestamp(cfg.earliest_timestamp, tz="UTC").to_pydatetime() if event else None
            latest = now + dt.timedelta(hours=cfg.max_future_skew_hours)
            out.append(
                E.ExpectColumnValuesToBeBetween(
                    column=c.name,
                    min_value=earliest,
                    max_value=latest,
                    meta=_meta(table, "timestamp sanity", c.name),
                )
            )
    key_present = [k for k in t.key if k in df.columns]
    if len(key_present) == 1:
        out.append(
            E.ExpectColumnValuesToBeUnique(
                column=key_present[0], meta=_meta(table, "key uniqueness", key_present[0])
            )
        )
    elif key_present:
        out.append(
            E.ExpectCompoundColumnsToBeUnique(column_list=key_present, meta=_meta(table, "key uniqueness"))
        )
    if t.label_column and t.label_column in df.columns and len(df):
        lo, hi = cfg.click_rate_bounds(source)
        out.append(
            E.ExpectColumnMeanToBeBetween(
                column=t.label_column,
                min_value=lo,
                max_value=hi,
                meta=_meta(table, "label rate bounds", t.label_column),
            )
        )
    if IMAGE_OK in df.columns:
        out.append(
            E.ExpectColumnValuesToBeInSet(
                column=IMAGE_OK, value_set=[True], meta=_meta(table, "image files exist", t.image_column)
            )
        )
    ref = (reference or {}).get(table)
    if ref and len(df):
        out += _drift(table, df, cfg, ref)
    return out


def _drift(table: str, df: pd.DataFrame, cfg: ValidationConfig, ref: dict[str, Any]) -> list[Any]:
    E = gx.expectations
    out: list[Any] = []
    for col in drift_numeric_columns(table):
        r = ref.get("numeric", {}).get(col)
        if r is None or col not in df.columns or not df[col].notna().any():
            continue
        half = cfg.drift_mean_tolerance_std * max(r["std"], 1e-9)
        out.append(
            E.ExpectColumnMeanToBeBetween(
                column=col,
                min_value=r["mean"] - half,
                max_value=r["mean"] + half,
                meta=_meta(table, "drift: mean", col),
            )
        )
    for col, part in ref.get("categorical", {}).items():
        if col not in df.columns:
            continue
        values, weights = part["values"], part["weights"]
        total = sum(weights)
        out.append(
            ExpectColumnCategorySharesToStayClose(
                column=col,
                partition_object={"values": values, "weights": [w / total for w in weights]},
                threshold=cfg.drift_kl_threshold,
                meta=_meta(table, "drift: category shares (KL)", col),
            )
        )
    label = TABLES[table].label_column
    if label and "label_rate" in ref and label in df.columns:
        r = ref["label_rate"]
        tol = cfg.drift_click_rate_rel_tolerance * r
        out.append(
            E.ExpectColumnMeanToBeBetween(
                column=label,
                min_value=r - tol,
                max_value=r + tol,
                meta=_meta(table, "drift: label rate", label),
            )
        )
    return out
