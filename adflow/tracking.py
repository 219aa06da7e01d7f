"""MLflow bookkeeping: one parent run per pipeline run, one child run per stage.

Stages run in separate processes (KFP tasks, locally or in pods), so they reach MLflow by tracking URI
and parent run id, both pipeline parameters. The run summary is read back from these child runs, which
makes MLflow the single record of a run on one machine and on a cluster alike.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

STAGE_TAG = "adflow.stage"
STATUS_TAG = "adflow.status"
ERROR_TAG = "adflow.error"
ARTIFACTS_TAG = "adflow.artifacts"
PIPELINE_RUN_TAG = "adflow.pipeline_run"
NOTE_TAG = "adflow.note"


def client(tracking_uri: str) -> MlflowClient:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(c: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(c.create_experiment(name, artifact_location=artifact_location))


class StageRun:
    """What a stage records: params, metrics, artifact paths (local files or URIs) and files copied to MLflow."""

    def __init__(self, c: MlflowClient, run_id: str, stage: str) -> None:
        self.client, self.run_id, self.stage = c, run_id, stage
        self.artifacts: dict[str, str] = {}

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(values)
        # log_batch takes at most 100 params per call
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 1000])

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value[:5000])

    def artifact(self, name: str, path: str | Path) -> None:
        """Record where an output lives (shown in the summary); the file itself stays where it is."""
        self.artifacts[name] = str(path)
        self.client.set_tag(self.run_id, ARTIFACTS_TAG, json.dumps(self.artifacts))

    def log_file(self, local: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or folder into the run's MLflow artifact store."""
        p = Path(local)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextmanager
def stage_run(
    stage: str, tracking_uri: str, parent_run_id: str, experiment: str = "ads_full"
) -> Iterator[StageRun]:
    """A child run for one stage. On an exception the run ends FAILED with the error kept, then it re-raises."""
    c = client(tracking_uri)
    if parent_run_id:
        parent = c.get_run(parent_run_id)
        exp_id = parent.info.experiment_id
        tags = {
            "mlflow.parentRunId": parent_run_id,
            PIPELINE_RUN_TAG: parent.data.tags.get(PIPELINE_RUN_TAG, ""),
        }
    else:  # a component run on its own, outside a pipeline
        exp_id = ensure_experiment(c, experiment, None)
        tags = {}
    run = c.create_run(exp_id, run_name=stage, tags={**tags, STAGE_TAG: stage, STATUS_TAG: "running"})
    rec = StageRun(c, run.info.run_id, stage)
    t0 = time.perf_counter()
    try:
        yield rec
    except BaseException as e:
        rec.metrics({"duration_s": time.perf_counter() - t0})
        rec.tag(STATUS_TAG, "failed")
        rec.tag(ERROR_TAG, f"{type(e).__name__}: {e}")
        rec.tag("adflow.traceback", traceback.format_exc()[-4000:])
        c.set_terminated(run.info.run_id, "FAILED")
        raise
    rec.metrics({"duration_s": time.perf_counter() - t0})
    rec.tag(STATUS_TAG, "succeeded")
    c.set_terminated(run.info.run_id, "FINISHED")
