"""Run one training stage on its own, as a Ray job on the KubeRay cluster (a standalone retrain, outside KFP).

On the cluster (infra/k8s/jobs/*.yaml; this file is mounted on the Ray head at /etc/adflow/jobs/):
    kubectl -n adflow apply -f infra/k8s/jobs/moon-train.yaml
which runs, as the job's driver on the head:
    python /etc/adflow/jobs/run_stage.py moon --input /mnt/adflow/data/world --output /mnt/adflow/runs/moon
Locally (a Ray head already started with `ray start --head`):
    python infra/k8s/base/training/run_stage.py train_ctr --preset tiny --placement local \
        --input <feature set folder> --output /tmp/ctr

The stage's own core runs unchanged (components/<stage>/core.py `run`: settings JSON, tracking URI, paths);
its MLflow run is a top-level run in the placement's experiment. Settings: --preset and --placement default to
$ADFLOW_PRESET and $ADFLOW_PLACEMENT (the overlay sets both on the Ray pods). The driver runs inside the Ray
cluster, so placement.ray_address becomes "auto". When the preset trains a section with DeepSpeed, the file
<deepspeed-dir>/<section>.json (the adflow-deepspeed ConfigMap) replaces that config: ZeRO settings can be
tuned on the cluster without a new image.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# stage -> (core module, settings section whose DeepSpeed config applies); each has a RayJob in
# infra/k8s/jobs/.
STAGES: dict[str, tuple[str, str]] = {
    "moon": ("components.training.moon.core", "moon_train"),
    "creative": ("components.training.creative.core", "creative_train"),
    "train_ctr": ("components.training.ctr.core", "ctr_train"),
}
DEEPSPEED_DIR = "/etc/adflow/deepspeed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--input", required=True, help="dataset folder (moon) or feature set folder (train_ctr)")
    p.add_argument("--output", required=True, help="new folder for the stage's outputs")
    p.add_argument("--preset", default=os.environ.get("ADFLOW_PRESET", "tiny"))
    p.add_argument("--placement", default=os.environ.get("ADFLOW_PLACEMENT", "local"))
    p.add_argument(
        "--set", dest="sets", action="append", default=[], help="override, e.g. ctr_train.epochs=1"
    )
    p.add_argument("--deepspeed-dir", default=DEEPSPEED_DIR)
    return p.parse_args(argv)


def build_settings(args: argparse.Namespace) -> Any:
    from adflow.config import load_settings

    s = load_settings(args.preset, args.placement, ["placement.ray_address=auto", *args.sets])
    section = getattr(s, STAGES[args.stage][1])
    override = Path(args.deepspeed_dir) / f"{STAGES[args.stage][1]}.json"
    if section.deepspeed is not None and override.is_file():
        section.deepspeed = json.loads(override.read_text())
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = build_settings(args)
    if not Path(args.input).exists():
        print(f"error: --input {args.input} does not exist", file=sys.stderr)
        return 2
    run = importlib.import_module(STAGES[args.stage][0]).run
    result = run(settings.to_json(), settings.placement.tracking_uri(), "", args.input, args.output)
    print(f"{args.stage}: done, outputs in {args.output}: {getattr(result, 'metrics', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
