"""Feature definitions: entities user and item; views over parquet tables built by adflow.features.

Every view has ttl=0 (no expiry): a user's last clicks stay their last clicks however old, and Feast's
file store drops entity rows whose data fall outside a TTL instead of returning nulls (FIELD-NOTES).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Float64, Int64, String

USER = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="a shopper")
ITEM = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="a product")
FOREVER = timedelta(0)

# view name -> (entity, parquet file, schema)
VIEWS: dict[str, tuple[Entity, str, list[Field]]] = {
    "user_behaviour": (
        USER,
        "user_behaviour.parquet",
        [
            Field(name="hist_item_ids", dtype=Array(Int64), description="last N clicked items, newest first"),
            Field(name="hist_ts", dtype=Array(Int64), description="their click times (unix seconds)"),
            Field(name="hist_categories", dtype=Array(String), description="their categories"),
            Field(name="clicks_1d", dtype=Int64, description="clicks in the day up to the latest click"),
            Field(name="clicks_7d", dtype=Int64, description="clicks in the week up to the latest click"),
            Field(name="clicks_total", dtype=Int64, description="all clicks so far"),
            Field(
                name="category_affinity",
                dtype=Array(Int64),
                description="click counts per clicked category, in affinity_categories' order",
            ),
            Field(
                name="affinity_categories",
                dtype=Array(String),
                description="the categories category_affinity counts (named: a later catalog's categories differ)",
            ),
            Field(name="snapshot_id", dtype=Int64, description="row id of this state (see SNAPSHOT_KEYS)"),
        ],
    ),
    "user_profile": (USER, "user_profile.parquet", [Field(name="segment", dtype=String)]),
    "item_stats": (
        ITEM,
        "item_stats.parquet",
        [
            Field(name="impressions_to_date", dtype=Int64, description="impressions before the snapshot day"),
            Field(name="clicks_to_date", dtype=Int64),
            Field(name="ctr_smoothed", dtype=Float64, description="CTR shrunk toward the global CTR"),
        ],
    ),
    "item_content": (
        ITEM,
        "item_content.parquet",
        [
            Field(name="category", dtype=String),
            Field(
                name="text_embedding",
                dtype=Array(Float32),
                description="all-MiniLM-L6-v2 of title/category/attributes",
            ),
            Field(
                name="moon_embedding",
                dtype=Array(Float32),
                description="MOON of image + title (empty when the run trained no MOON)",
            ),
        ],
    ),
}


# Views whose list features are attached after the point-in-time join by their snapshot id: Feast's file
# store joins list columns slowly (49 s for 42k rows, against 1 s for scalars), so training asks Feast for
# the id of the state in force at each impression and reads that state's lists by exact key.
SNAPSHOT_KEYS = {"user_behaviour": "snapshot_id"}

# Static per-item vectors the CTR model reads from its own content table (the catalog's, frozen in the model),
# not per impression: the point-in-time training join leaves them out. Serving reads them online.
NOT_IN_TRAINING = {"item_content": ("text_embedding", "moon_embedding")}


def feature_views(source_dir: str | Path) -> list[FeatureView]:
    views = []
    for name, (entity, file, schema) in VIEWS.items():
        source = FileSource(
            name=f"{name}_source", path=str(Path(source_dir) / file), timestamp_field="event_timestamp"
        )
        views.append(
            FeatureView(name=name, entities=[entity], ttl=FOREVER, schema=schema, source=source, online=True)
        )
    return views


def objects(source_dir: str | Path) -> list[Any]:
    return [USER, ITEM, *feature_views(source_dir)]


def feature_refs(*views: str) -> list[str]:
    return [f"{v}:{f.name}" for v in views for f in VIEWS[v][2]]
