"""Bring data into the pipeline: an existing contract folder as is, or a real data set through its importer.

Locally:   adflow run --set data.source=movielens --set data.path=ml-100k
Cluster:   the `ingest` step of `ads_full` (paths on the shared volume or object store mount)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from adflow.config import settings_from_json
from adflow.contract import read_manifest
from adflow.data.importers import import_catalog, import_movielens, import_taobao
from adflow.tracking import stage_run

STAGE = "ingest"


def ingest(
    source: str, path: str, out_dir: str | Path, catalog: str | None = None, images: str | None = None
) -> dict[str, Any]:
    out = Path(out_dir)
    if source == "dataset":
        read_manifest(Path(path))  # a clear error if the folder is not a dataset at all
        if out.exists():
            shutil.rmtree(out)
        # Copied as is, faults included: judging it is the validation stage's job.
        shutil.copytree(path, out)
        return read_manifest(out)
    if source == "taobao":
        return import_taobao(path, out, catalog=catalog, images=images)
    if source == "movielens":
        return import_movielens(path, out)
    if source == "catalog":
        return import_catalog(path, out, images=images)
    raise ValueError(f"unknown data source '{source}'")


def run(settings_json: str, tracking_uri: str, parent_run_id: str, out_dir: str | Path) -> dict[str, Any]:
    s = settings_from_json(settings_json)
    d = s.data
    assert d.path is not None  # DataConfig guarantees a path for every non-synthetic source
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        sr.params({"data": d.model_dump()})
        manifest = ingest(d.source, d.path, out_dir, d.catalog, d.images)
        sr.metrics({f"rows_{k}": float(v) for k, v in manifest.get("rows", {}).items()})
        sr.artifact("dataset", out_dir)
    return manifest
