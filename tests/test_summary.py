"""The run summary read back from MLflow (adflow/summary.py): what each stage's status says, and which run's
artifacts the commands that reuse them pick."""

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from adflow.cli import app
from adflow.summary import (
    DATASET,
    RunSummary,
    StageSummary,
    latest_artifact,
    latest_dataset,
    latest_selector,
    stage_summaries,
    write,
)
from adflow.tracking import STAGE_TAG, STATUS_TAG, client, ensure_experiment
from pipelines.ads_full import STAGES

UP_TO_GATE = ["synth", "validate", "creative", "moon", "features", "train_ctr", "gate"]


def test_a_stage_is_skipped_only_when_its_branch_was_decided_against(tmp_path: Path) -> None:
    """Real MLflow child runs as the stages leave them, at each moment of a run."""
    c = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = ensure_experiment(c, "summary", str(tmp_path / "artifacts"))

    def statuses(children: dict[str, str], passed: float | None = None) -> dict[str, str]:
        parent = c.create_run(exp).info.run_id
        for stage, status in children.items():
            run = c.create_run(exp, tags={"mlflow.parentRunId": parent, STAGE_TAG: stage, STATUS_TAG: status})
            if stage == "gate" and passed is not None:
                c.log_metric(run.info.run_id, "passed", passed)
        return {s.name: s.status for s in stage_summaries(c, exp, parent, STAGES)}

    ok = dict.fromkeys(UP_TO_GATE, "succeeded")
    # A: nothing has a child run yet (a run starting; its first task died; submitted to a cluster)
    assert set(statuses({}).values()) == {"not run"}
    # B: the gate passed and register failed: abtest, after it in the same branch, never ran
    st = statuses({**ok, "register": "failed"}, passed=1)
    assert (st["register"], st["abtest"]) == ("failed", "not run")
    # C: the gate passed, register has not started yet; or the gate has not logged its verdict yet
    st = statuses(ok, passed=1)
    assert (st["register"], st["abtest"]) == ("not run", "not run")
    st = statuses({**ok, "gate": "running"})
    assert (st["register"], st["abtest"]) == ("not run", "not run")
    # D: register is going
    st = statuses({**ok, "register": "running"}, passed=1)
    assert (st["register"], st["abtest"]) == ("running", "not run")
    # the decisions: the gate rejected the candidate (the deploy branch), synth ran instead of ingest
    st = statuses(ok, passed=0)
    assert (st["register"], st["abtest"]) == ("skipped", "skipped")
    assert (st["synth"], st["ingest"]) == ("succeeded", "skipped")
    st = statuses({"ingest": "failed"})
    assert (st["synth"], st["ingest"], st["validate"]) == ("skipped", "failed", "not run")


def _run(runs: Path, run_id: str, status: str, stages: list[StageSummary], started: str = "") -> None:
    write(RunSummary(run_id, "ads_full", "tiny", "local", status, started, 1.0, stages, {}), runs)


def test_commands_reuse_the_most_recent_succeeded_run_not_the_latest(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    made = StageSummary("synth", "succeeded", artifacts={"dataset": str(tmp_path / "old-world")})
    _run(runs, "r1", "succeeded", [made, StageSummary("creative", "succeeded", artifacts={"creative": "/sel/1"})],
         "2026-01-01T00:00:00+00:00")  # fmt: skip
    good = StageSummary("synth", "succeeded", artifacts={"dataset": str(tmp_path / "world")})
    features = StageSummary("features", "succeeded", artifacts={"features": str(tmp_path / "features")})
    _run(runs, "r2", "succeeded", [good, features], "2026-01-02T00:00:00+00:00")
    # newer runs with nothing to reuse: validation rejected its data set; cancelled; failed after features
    bad = StageSummary("synth", "succeeded", artifacts={"dataset": str(tmp_path / "broken")})
    _run(runs, "r3", "failed", [bad, StageSummary("validate", "failed")], "2026-01-03T00:00:00+00:00")
    _run(runs, "r4", "cancelled", [bad], "2026-01-04T00:00:00+00:00")
    broken_features = StageSummary("features", "succeeded", artifacts={"features": str(tmp_path / "f-bad")})
    _run(runs, "r5", "failed", [bad, broken_features, StageSummary("train_ctr", "failed")],
         "2026-01-05T00:00:00+00:00")  # fmt: skip
    (runs / "study-ctr").mkdir()  # a study's report folder: not a run
    (runs / "r6").mkdir()  # a run still going: no summary yet
    assert (runs / "latest").resolve().name == "r5"  # `latest` still means the newest run

    assert latest_artifact(runs, DATASET) == (str(tmp_path / "world"), runs / "r2")
    assert latest_dataset(runs) == str(tmp_path / "world")
    assert latest_selector(runs) == "/sel/1"  # r2 trained none: the most recent run that did
    assert latest_dataset(tmp_path / "none") is None

    # the commands say which run they picked (the picked folders do not exist: they stop right after)
    sets = ["--set", f"placement.runs_dir={runs}", "--set", f"placement.workspace={tmp_path / 'ws'}"]
    r = CliRunner().invoke(app, ["serve", *sets])
    assert r.exit_code == 2 and f"dataset: {tmp_path / 'world'} (from run {runs / 'r2'}" in r.output, r.output
    r = CliRunner().invoke(app, ["study", "ctr", "--out", str(tmp_path / "study"), *sets])
    assert f"run: {runs / 'r2'} (the most recent succeeded run with a feature set)" in r.output, r.output
    assert r.exit_code == 2 and "left no feature set" in r.output


def test_recency_without_start_times_is_the_order_written(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i, name in enumerate(("b-first", "a-second")):
        _run(runs, name, "succeeded", [StageSummary("synth", "succeeded", artifacts={"dataset": name})])
        os.utime(runs / name / "summary.json", (1e9 + i, 1e9 + i))
    assert latest_dataset(runs) == "a-second"
    (runs / "a-second" / "summary.json").write_text("{")  # being written: passed over
    assert latest_dataset(runs) == "b-first"
    assert json.loads((runs / "b-first" / "summary.json").read_text())["status"] == "succeeded"


def test_serve_refuses_a_selector_its_stage_does_not_serve_and_nan_reads_n_a(tmp_path: Path) -> None:
    """`adflow serve --selector <stage>/selector` of a stage below the serving floor stops with the stage's
    reason (exit 2, no traceback); a NaN metric (nothing to measure) prints as n/a in the summary table."""
    from adflow.summary import _fmt

    stage = tmp_path / "creative"
    (stage / "selector").mkdir(parents=True)
    (stage / "selector" / "selector.json").write_text("{}")
    why = "no selector is served: held-out accuracy SFT 0.500 does not clear serve_min_accuracy 0.60"
    (stage / "creative.json").write_text(json.dumps({"served": None, "selector": "selector", "note": why}))
    sets = [
        "--set",
        f"placement.runs_dir={tmp_path / 'runs'}",
        "--set",
        f"placement.workspace={tmp_path / 'ws'}",
    ]
    r = CliRunner().invoke(
        app, ["serve", "--dataset", str(tmp_path), "--selector", str(stage / "selector"), *sets]
    )
    assert r.exit_code == 2 and "serve_min_accuracy 0.60" in r.output, r.output
    assert isinstance(r.exception, SystemExit)  # typer's exit, not a ValueError's traceback
    assert _fmt(float("nan")) == "n/a" and _fmt(0.8114) == "0.8114" and _fmt(12.0) == "12"
