"""Synthesise the ad world (adflow.data.world) as a pipeline stage, recorded in MLflow.

Locally:   adflow data synth --preset tiny --out data/tiny
Cluster:   the `synth` step of `ads_full` (adflow run --preset full --placement cluster)
"""

from __future__ import annotations

from pathlib import Path

from adflow.config import settings_from_json
from adflow.data.world import WorldSummary, generate
from adflow.tracking import stage_run

STAGE = "synth"


def run(settings_json: str, tracking_uri: str, parent_run_id: str, out_dir: str | Path) -> WorldSummary:
    settings = settings_from_json(settings_json)
    with stage_run(STAGE, tracking_uri, parent_run_id, settings.placement.mlflow_experiment) as sr:
        sr.params({"world": settings.world.model_dump()})
        summary = generate(settings.world, out_dir)
        sr.metrics(
            {
                "oracle_auc": summary.oracle_auc,
                "click_rate": summary.click_rate,
                "cold_start_items": summary.cold_start_items,
                "cold_start_impressions": summary.cold_start_impressions,
                **{f"rows_{k}": v for k, v in summary.rows.items()},
            }
        )
        sr.artifact("dataset", out_dir)
        sr.log_file(Path(out_dir) / "dataset.json")
        sr.log_file(Path(out_dir) / "truth" / "meta.json")
    return summary
