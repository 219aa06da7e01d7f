"""Run a pipeline: locally with the KFP local runner, or submitted to a Kubeflow Pipelines host.

    adflow run                                   # = make run: ads_full, tiny preset, local placement
    adflow run --preset full --placement cluster # compile with the cluster image, submit to placement.kfp_host

One MLflow parent run per pipeline run; stages log under it; the summary is read back from MLflow.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from adflow import tracking
from adflow.compile import compile_pipeline, load_pipeline, pipeline_arguments
from adflow.config import Settings
from adflow.summary import RunSummary, render, stage_summaries, write


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _stages(pipeline: str) -> Any:
    import importlib

    from pipelines import PIPELINES

    module = importlib.import_module(PIPELINES[pipeline].split(":")[0])
    return module.STAGES


class Cancelled(BaseException):
    """Raised in the runner by SIGTERM (the console's cancel): the run stops, but its summary is still written."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        # when the signal came: stopping the local Ray head on the way out takes seconds (more on a loaded
        # machine), and the stage stopped with the run must be told from one that failed before the cancel
        self.at_ms = int(time.time() * 1000)


def cancel_on_sigterm() -> None:
    """Turn SIGTERM into `Cancelled`, so `finally` blocks run (the local Ray head is stopped) and the summary
    says "cancelled"; Python's default for SIGTERM is to die on the spot."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise Cancelled(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def run_pipeline(
    settings: Settings, pipeline: str = "ads_full", show: bool = True, run_id: str | None = None
) -> RunSummary:
    """Run `pipeline` and write its summary. `run_id`: the caller's id for it (the console names runs before
    they start, to find them in MLflow while they run); default a new one."""
    settings = settings.resolved()
    p = settings.placement
    run_id = run_id or new_run_id()
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    ws = p.workspace_path()
    ws.mkdir(parents=True, exist_ok=True)
    uri = p.tracking_uri()
    c = tracking.client(uri)
    exp_id = tracking.ensure_experiment(
        c, p.mlflow_experiment, p.artifact_root() if not p.mlflow_tracking_uri else None
    )
    parent = c.create_run(
        exp_id,
        run_name=f"{pipeline}-{run_id}",
        tags={
            tracking.PIPELINE_RUN_TAG: run_id,
            "adflow.pipeline": pipeline,
            "adflow.preset": settings.preset,
        },
    )
    parent_id = parent.info.run_id
    stage_run = tracking.StageRun(c, parent_id, pipeline)
    stage_run.params(settings.model_dump(exclude={"placement"}))
    args = pipeline_arguments(settings, parent_id)
    error: str | None = None
    crashed: Exception | None = None
    try:
        if p.kfp_host:
            status, error = _submit(settings, pipeline, args, run_id)
        else:
            status, error = _run_local(settings, pipeline, args, ws, run_id)
    except (Cancelled, KeyboardInterrupt) as e:
        status, error = "cancelled", "cancelled by a person (SIGTERM or Ctrl-C) before it finished"
        cancelled_ms = getattr(e, "at_ms", int(time.time() * 1000))
    except Exception as e:
        # the local Ray head did not start, compiling or submitting failed...: the run still ends with a
        # summary and its parent run FAILED (not RUNNING for ever), then the error goes on to the caller
        status, error, crashed = "failed", f"{type(e).__name__}: {e}", e
    stages = stage_summaries(c, exp_id, parent_id, _stages(pipeline))
    if status == "cancelled":
        for st in stages:
            # the stage that was going when the run was stopped: it never finishes, or it fails because its
            # task process was stopped with the run (a broken pipe); either way it was cancelled, not broken
            if st.status in ("running", "failed") and st.mlflow_run_id:
                end = c.get_run(st.mlflow_run_id).info.end_time
                if end is None or end >= cancelled_ms - 2000:
                    c.set_tag(st.mlflow_run_id, tracking.STATUS_TAG, "cancelled")
                    if end is None:
                        c.set_terminated(st.mlflow_run_id, "KILLED")
                    st.status, st.error = "cancelled", None
    if status == "failed" and error is None:
        error = next((s.error for s in stages if s.status == "failed"), "pipeline failed")
    summary = RunSummary(
        run_id=run_id,
        pipeline=pipeline,
        preset=settings.preset,
        placement=p.name,
        status=status,
        started_at=started.isoformat(),
        duration_s=time.perf_counter() - t0,
        stages=stages,
        mlflow={"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id},
        error=error,
    )
    path = write(summary, p.runs_dir)
    c.log_artifact(parent_id, str(path))
    c.log_metric(parent_id, "duration_s", summary.duration_s)
    end = {"succeeded": "FINISHED", "submitted": "FINISHED", "cancelled": "KILLED"}.get(status, "FAILED")
    c.set_terminated(parent_id, end)
    if show:
        render(summary)
    if crashed is not None:
        raise crashed
    return summary


def _run_local(
    settings: Settings, pipeline: str, args: dict[str, Any], ws: Path, run_id: str
) -> tuple[str, str | None]:
    import importlib
    from contextlib import ExitStack

    from adflow import kfp_local
    from adflow.ray_cluster import local_head
    from pipelines import PIPELINES

    root = ws / "kfp" / run_id
    kfp_local.init(root)
    logging.getLogger().setLevel(logging.INFO)
    module = importlib.import_module(PIPELINES[pipeline].split(":")[0])
    with ExitStack() as stack:
        if getattr(module, "USES_RAY", False) and not settings.placement.ray_address:
            # one Ray for every stage of the run: ray.init costs 10-16 s in each process otherwise
            address = stack.enter_context(local_head(settings.placement.num_workers))
            settings = settings.model_copy(deep=True)
            settings.placement.ray_address = address
            args = {**args, "settings_json": settings.to_json()}
        # after the head: its processes keep the machine's temp folder
        stack.enter_context(kfp_local.task_tempdir(run_id))
        try:
            load_pipeline(pipeline)(**args)
            return "succeeded", None
        except RuntimeError as e:  # kfp.local raises RuntimeError naming the failed task
            return "failed", str(e).strip().splitlines()[0] if str(e).strip() else "pipeline failed"


def _submit(settings: Settings, pipeline: str, args: dict[str, Any], run_id: str) -> tuple[str, str | None]:
    """Compile with the placement's image and submit to Kubeflow Pipelines; the run continues on the cluster."""
    import kfp

    p = settings.placement
    out = Path(p.workspace) / "compiled" / run_id
    package = compile_pipeline(pipeline, settings, out)
    client = kfp.Client(host=p.kfp_host)
    run = client.create_run_from_pipeline_package(
        str(package), arguments=args, run_name=f"{pipeline}-{run_id}", experiment_name=p.mlflow_experiment
    )
    print(f"submitted {pipeline} to {p.kfp_host}: run {run.run_id}")
    return "submitted", None
