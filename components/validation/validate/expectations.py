"""Expectation suites built from the data contract, the validation config and the drift reference.

Each expectation carries meta {"table", "check", "column"}: the check name is what a person reads in the
failure message and the run summary ("referential integrity", "key uniqueness", "drift: label rate", ...).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import great_expectations as gx
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
) -> list[Any]:
    """Expectations for one table. `keys` holds the key values of every table, for referential integrity."""
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
        out.append(
            E.ExpectColumnMeanToBeBetween(
                column=t.label_column,
                min_value=cfg.click_rate_min,
                max_value=cfg.click_rate_max,
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
            E.ExpectColumnKLDivergenceToBeLessThan(
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
