"""The data contract: the canonical tables every stage reads, defined once.

A dataset is a folder:

    dataset.json              manifest: source, seed, row counts, contract version
    <table>.parquet           one file per table below
    images/items/<id>.png     catalog images (synthetic world, catalog-CSV imports)
    images/creatives/<id>.png creative images
    truth/*.parquet           ground truth, synthetic world only (never read by training code)

Importers fill the same tables; columns marked nullable may be empty where a source has no such data
(MovieLens has no images, Taobao no titles). Tables marked optional may be absent (no creative pairs in
MovieLens). Validation (components/validation/validate) turns this definition into expectations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

CONTRACT_VERSION = "1"

Kind = Literal["int", "float", "str", "ts"]
PANDAS_DTYPES: dict[Kind, str] = {
    "int": "int64",
    "float": "float64",
    "str": "object",
    "ts": "datetime64[ns, UTC]",
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    doc: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | tuple[int, ...] | None = None
    ref: tuple[str, str] | None = None  # (table, key column) this column must point into


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    optional: bool = False
    time_column: str | None = None
    label_column: str | None = None
    image_column: str | None = None
    categorical: tuple[str, ...] = field(default=())  # profiled for drift by share of each value

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


EVENT_TYPES = ("click", "cart", "fav", "purchase", "view", "rate")
FACTORS = ("prominence", "clutter", "legibility", "theme")
PAIR_SPLITS = ("train", "test", "test_unseen")

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "items",
            "The catalog: one row per product.",
            (
                Column("item_id", "int", "product id", min=0),
                Column("title", "str", "product title (may be empty for ID-only sources)"),
                Column("category", "str", "leaf category name"),
                Column("attributes", "str", "JSON object of attribute name -> value"),
                Column("price", "float", "list price", nullable=True),
                Column("image_path", "str", "image file, relative to the dataset folder", nullable=True),
                Column(
                    "box_x0", "float", "core-region box, left, fraction of width", nullable=True, min=0, max=1
                ),
                Column("box_y0", "float", "core-region box, top", nullable=True, min=0, max=1),
                Column("box_x1", "float", "core-region box, right", nullable=True, min=0, max=1),
                Column("box_y1", "float", "core-region box, bottom", nullable=True, min=0, max=1),
                Column("launch_ts", "ts", "when the item became available"),
            ),
            key=("item_id",),
            time_column="launch_ts",
            image_column="image_path",
            categorical=("category",),
        ),
        Table(
            "creatives",
            "Ad creatives: several images per item, described by their design factors.",
            (
                Column("creative_id", "int", "creative id", min=0),
                Column("item_id", "int", "the product shown", ref=("items", "item_id")),
                Column("image_path", "str", "creative image, relative to the dataset folder", nullable=True),
                Column(
                    "prominence",
                    "float",
                    "share of the canvas the product fills",
                    nullable=True,
                    min=0,
                    max=1,
                ),
                Column("clutter", "float", "background clutter level", nullable=True, min=0, max=1),
                Column("legibility", "float", "contrast of the text banner", nullable=True, min=0, max=1),
                Column(
                    "theme", "str", "colour theme", nullable=True, allowed=("warm", "cool", "dark", "bright")
                ),
            ),
            key=("creative_id",),
            image_column="image_path",
            categorical=("theme",),
        ),
        Table(
            "users",
            "Users, with the interest segment the creative selector conditions on.",
            (
                Column("user_id", "int", "user id", min=0),
                Column("segment", "str", "interest segment", nullable=True),
            ),
            key=("user_id",),
            categorical=("segment",),
        ),
        Table(
            "queries",
            "Search queries that led to impressions.",
            (
                Column("query_id", "int", "query id", min=0),
                Column("user_id", "int", "who searched", ref=("users", "user_id")),
                Column("ts", "ts", "when"),
                Column("text", "str", "query text"),
                Column("category", "str", "category the query targets", nullable=True),
            ),
            key=("query_id",),
            optional=True,
            time_column="ts",
        ),
        Table(
            "impressions",
            "Ads shown, with the click label.",
            (
                Column("impression_id", "int", "impression id", min=0),
                Column("ts", "ts", "when it was shown"),
                Column("user_id", "int", "who saw it", ref=("users", "user_id")),
                Column("item_id", "int", "the product advertised", ref=("items", "item_id")),
                Column("creative_id", "int", "the creative shown", ref=("creatives", "creative_id")),
                Column("query_id", "int", "the query served", nullable=True, ref=("queries", "query_id")),
                Column("session_id", "int", "session id", min=0),
                Column("position", "int", "slot on the page, 1 = top", min=1, max=100),
                Column("click", "int", "1 if clicked", allowed=(0, 1)),
            ),
            key=("impression_id",),
            time_column="ts",
            label_column="click",
            categorical=("position",),
        ),
        Table(
            "behaviour",
            "User behaviour events (the sequences CTR models attend over).",
            (
                Column("event_id", "int", "event id", min=0),
                Column("ts", "ts", "when"),
                Column("user_id", "int", "who", ref=("users", "user_id")),
                Column("item_id", "int", "on which product", ref=("items", "item_id")),
                Column("event_type", "str", "what happened", allowed=EVENT_TYPES),
                Column("value", "float", "event value (rating for 'rate')", nullable=True),
            ),
            key=("event_id",),
            time_column="ts",
            categorical=("event_type",),
        ),
        Table(
            "creative_pairs",
            "CreativePair: two creatives of one item, which is better for a user segment, and why.",
            (
                Column("pair_id", "int", "pair id", min=0),
                Column("item_id", "int", "the product", ref=("items", "item_id")),
                Column("creative_a", "int", "first creative", ref=("creatives", "creative_id")),
                Column("creative_b", "int", "second creative", ref=("creatives", "creative_id")),
                Column("user_id", "int", "a user of that segment", nullable=True, ref=("users", "user_id")),
                Column("user_segment", "str", "the segment the label is for"),
                Column("user_interests", "str", "short summary of the user's interests"),
                Column("label", "str", "better creative", allowed=("A", "B")),
                Column("deciding_factor", "str", "factor that decided the label", allowed=FACTORS),
                Column("rationale", "str", "chain-of-thought rationale naming the deciding factor"),
                Column(
                    "split",
                    "str",
                    "train/test/test_unseen (unseen: item never in train)",
                    allowed=PAIR_SPLITS,
                ),
            ),
            key=("pair_id",),
            optional=True,
            label_column=None,
            categorical=("label", "split"),
        ),
    )
}

REQUIRED_TABLES = tuple(n for n, t in TABLES.items() if not t.optional)


class ContractError(ValueError):
    """A dataset folder that does not follow the contract's layout."""


def empty_frame(table: str) -> pd.DataFrame:
    t = TABLES[table]
    return pd.DataFrame({c.name: pd.Series(dtype=PANDAS_DTYPES[c.kind]) for c in t.columns})


def conform(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """Cast a frame to the contract's dtypes and column order (for writers; readers do not coerce)."""
    t = TABLES[table]
    out = pd.DataFrame(index=df.index)
    for c in t.columns:
        s = df[c.name] if c.name in df.columns else pd.Series([None] * len(df), index=df.index)
        if c.kind == "int":
            s = s.astype("Int64") if c.nullable else s.astype("int64")
        elif c.kind == "float":
            s = s.astype("float64")
        elif c.kind == "ts":
            s = pd.to_datetime(s, utc=True).astype("datetime64[ns, UTC]")
        else:
            s = s.astype(object).where(s.notna(), None)
        out[c.name] = s
    return out.reset_index(drop=True)


def write_table(root: Path, table: str, df: pd.DataFrame) -> Path:
    path = Path(root) / f"{table}.parquet"
    conform(table, df).to_parquet(path, index=False)
    return path


def read_table(root: Path, table: str) -> pd.DataFrame:
    """Read a table as stored. A missing optional table reads as empty; a missing required one is an error."""
    path = Path(root) / f"{table}.parquet"
    if not path.exists():
        if TABLES[table].optional:
            return empty_frame(table)
        raise ContractError(f"{root}: required table '{table}' is missing ({path.name} not found)")
    return pd.read_parquet(path)


def write_manifest(root: Path, source: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    root = Path(root)
    counts = {
        n: len(pd.read_parquet(root / f"{n}.parquet")) for n in TABLES if (root / f"{n}.parquet").exists()
    }
    manifest = {"contract_version": CONTRACT_VERSION, "source": source, "rows": counts, **(extra or {})}
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / "dataset.json"
    if not path.exists():
        raise ContractError(f"{root}: not a dataset folder (dataset.json not found)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def schema_markdown() -> str:
    """The contract as Markdown (docs/data-contract.md is generated from this)."""
    out = [f"# Data contract v{CONTRACT_VERSION}", ""]
    for t in TABLES.values():
        opt = " (optional)" if t.optional else ""
        out += [f"## `{t.name}`{opt}", "", t.doc, "", f"Key: `{', '.join(t.key)}`", ""]
        out += ["| column | type | nullable | constraint | meaning |", "|---|---|---|---|---|"]
        for c in t.columns:
            cons = []
            if c.min is not None or c.max is not None:
                cons.append(f"[{c.min if c.min is not None else ''}, {c.max if c.max is not None else ''}]")
            if c.allowed:
                cons.append("in {" + ", ".join(map(str, c.allowed)) + "}")
            if c.ref:
                cons.append(f"-> {c.ref[0]}.{c.ref[1]}")
            out.append(
                f"| {c.name} | {c.kind} | {'yes' if c.nullable else 'no'} | {' '.join(cons)} | {c.doc} |"
            )
        out.append("")
    return "\n".join(out)
