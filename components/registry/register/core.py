"""Register a model that passed the gate: a new MLflow version, aliased `challenger`.

The first model ever also becomes `champion` (there is nothing to A/B it against); later champions move
by `adflow model promote` (by hand, or when an A/B test concludes). Every alias move is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

from adflow import registry
from adflow.config import settings_from_json
from adflow.progress import log
from adflow.tracking import client, stage_run
from components.training.ctr.core import model_paths

STAGE = "register"
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy==2.4.6", "pandas==2.3.3", "adflow==0.1.0"]


def run(
    settings_json: str, tracking_uri: str, parent_run_id: str, model_dir: str | Path, report_dir: str | Path
) -> int:
    s = settings_from_json(settings_json)
    name = s.registry.model_name
    decision = json.loads((Path(report_dir) / "decision.json").read_text())
    report = str(Path(report_dir) / "index.html")
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        path = str(model_paths(model_dir)[s.registry.candidate_variant])
        cand = decision["candidate"]
        tags = {
            "gate_reason": decision["reason"],
            "gate_report": report,
            **{k: f"{cand[k]:.5f}" for k in ("auc", "gauc", "logloss") if k in cand},
        }
        version = registry.register(tracking_uri, sr.run_id, path, name, tags, PIP_REQUIREMENTS)
        c = client(tracking_uri)
        registry.move_alias(c, name, registry.CHALLENGER, version, decision["reason"], "register", report)
        if registry.alias_version(c, name, registry.CHAMPION) is None:
            registry.move_alias(
                c,
                name,
                registry.CHAMPION,
                version,
                "first model: no champion to compare against",
                "register",
                report,
            )
        champion = registry.alias_version(c, name, registry.CHAMPION)
        sr.metrics({"version": float(version), "champion_version": float(champion or 0)})
        sr.artifact("model", f"models:/{name}/{version}")
        log(STAGE, f"{name} version {version} is challenger; champion is version {champion}")
    return version
