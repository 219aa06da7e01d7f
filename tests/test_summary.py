"""The run summary read back from MLflow (adflow/summary.py): what each stage's status says, and which run's
artifacts the commands that reuse them pick."""

from pathlib import Path

from adflow.summary import stage_summaries
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
