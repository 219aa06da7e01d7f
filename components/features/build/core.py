"""Feature stage: feature tables from the dataset, Feast apply + materialize, the point-in-time training set.

Locally:   the `features` step of ads_full (SQLite online store, parquet offline store under the workspace)
Cluster:   same code with placement.feast_env=cluster (Redis online store; feature_store/cluster/)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from adflow import features as F
from adflow.config import Settings, settings_from_json
from adflow.contract import read_table
from adflow.progress import log
from adflow.tracking import stage_run
from adflow.workspace import publish, shared

STAGE = "features"


def moon_embeddings(moon_dir: str | Path | None) -> Path | None:
    """The MOON stage's catalog embeddings, when it trained MOON (it writes moon.json either way)."""
    if moon_dir is None or not (Path(moon_dir) / "moon.json").exists():
        return None
    served = json.loads((Path(moon_dir) / "moon.json").read_text())
    return Path(moon_dir) / served["embeddings"] if served.get("embeddings") else None


def build(
    settings: Settings, dataset: str | Path, out_dir: str | Path, moon_dir: str | Path | None = None
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Feast's registry records the offline tables' paths: the feature server and the materialization job
    # read them from other pods, so on a cluster they are on the workspace volume (adflow/workspace.py)
    tables = shared(settings.placement, out) / "tables"
    t0 = time.perf_counter()
    counts = F.build_tables(dataset, tables, settings.features, moon_embeddings(moon_dir))
    if moon_dir is not None and (Path(moon_dir) / "moon.json").exists():
        # MOON's recall travels with the feature set: the gate turns it into the exchange rate
        shutil.copy(Path(moon_dir) / "moon.json", out / "moon.json")
    fs = F.store(settings.placement)
    F.apply(fs, tables)
    t1 = time.perf_counter()
    frame = F.training_frame(fs, dataset, tables)
    join_s = time.perf_counter() - t1
    splits = F.split(frame, settings.features)
    for name, df in splits.items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    # the catalog's attributes travel with the splits: the gate's reference model crosses them with history
    read_table(dataset, "items")[["item_id", "category", "attributes"]].to_parquet(
        out / "catalog.parquet", index=False
    )
    F.materialize(fs, tables)
    publish(tables.parent, out, ["tables"])  # the next steps read them from the feature set itself
    log(STAGE, f"training set {len(frame)} rows (train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])})")
    return {
        **{f"rows_{k}": v for k, v in counts.items()},
        **{f"rows_{k}_split": len(v) for k, v in splits.items()},
        "rows_joined": len(frame),
        "join_s": join_s,
        "total_s": time.perf_counter() - t0,
    }


def run(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: str | Path,
    out_dir: str | Path,
    moon_dir: str | Path | None = None,
) -> dict[str, Any]:
    s = settings_from_json(settings_json)
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        sr.params({"features": s.features.model_dump(), "feast_env": s.placement.feast_env})
        summary = build(s, dataset, out_dir, moon_dir)
        sr.metrics({k: float(v) for k, v in summary.items()})
        sr.artifact("features", out_dir)
        sr.artifact("online_store", Path(s.placement.workspace) / "feast")
    return summary
