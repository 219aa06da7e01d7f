"""The runner around a pipeline (adflow/runner.py, adflow/ray_cluster.py): what a run leaves behind when it
cannot start, where its tasks' temp folders go, and the local Ray head's start timeout."""

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adflow import ray_cluster, runner, tracking

from .conftest import small_settings


def test_a_run_whose_ray_head_fails_still_ends_with_a_failed_summary(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    @contextlib.contextmanager
    def broken_head(num_cpus: int | None = None) -> Iterator[str]:
        raise RuntimeError("ray start --head failed: port in use")
        yield ""

    monkeypatch.setattr(ray_cluster, "local_head", broken_head)
    s = small_settings(tmp_path).resolved()
    with pytest.raises(RuntimeError, match="port in use"):  # the caller still hears of it
        runner.run_pipeline(s, "ads_full", show=False, run_id="r1")
    summary = json.loads((tmp_path / "runs" / "r1" / "summary.json").read_text())
    assert summary["status"] == "failed" and "port in use" in summary["error"]
    assert {st["status"] for st in summary["stages"]} == {"not run"}
    assert (tmp_path / "runs" / "latest").resolve().name == "r1"
    c = tracking.client(s.placement.tracking_uri())
    assert c.get_run(summary["mlflow"]["parent_run_id"]).info.status == "FAILED"


def test_a_run_deletes_its_own_task_folders_only(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A real KFP local task: its program goes to the run's own temp folder, deleted with the run; another
    run's live task folder in the machine's temp folder stays (this test's stand-in for /tmp)."""
    import pipelines

    machine_tmp = tmp_path / "machine-tmp"
    machine_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(machine_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(machine_tmp))
    other = machine_tmp / "tmp.otherRunTask"
    other.mkdir()
    (other / "ephemeral_component.py").write_text("# another run's task, still going")
    monkeypatch.setitem(pipelines.PIPELINES, "temp_probe", "tests.kfp_probe:temp_probe")
    s = small_settings(tmp_path)
    ws = tmp_path / "ws"

    assert runner._run_local(s, "temp_probe", {}, ws, "r1") == ("succeeded", None)
    (out,) = (ws / "kfp" / "r1").rglob("out")
    program, task_tmp = out.read_text().splitlines()
    assert Path(program).parent == Path(task_tmp)  # the program and the task's tempfile: the run's folder
    assert Path(task_tmp).parent == machine_tmp and Path(task_tmp).name.startswith("adflow-r1-")
    assert not Path(task_tmp).exists()  # deleted with the run
    assert (other / "ephemeral_component.py").exists()
    assert os.environ["TMPDIR"] == str(machine_tmp)  # restored for whatever runs next in this process
