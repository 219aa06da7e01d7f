"""The runner around a pipeline (adflow/runner.py, adflow/ray_cluster.py): what a run leaves behind when it
cannot start, where its tasks' temp folders go, and the local Ray head's start timeout."""

import contextlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
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


def _fake_ray(tmp_path: Path, monkeypatch, script: str) -> None:  # type: ignore[no-untyped-def]
    """`ray start` stand-in: the head's start, not Ray's, is what is tested."""
    exe = tmp_path / "ray"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(ray_cluster, "_ray_bin", lambda: str(exe))


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE}


def test_a_ray_head_that_hangs_silently_times_out_and_is_stopped(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _fake_ray(tmp_path, monkeypatch, "exec sleep 30")
    before = _children()
    raised: list[BaseException] = []

    def start() -> None:
        try:
            with ray_cluster.local_head(timeout_s=1):
                pass
        except BaseException as e:
            raised.append(e)

    t0 = time.monotonic()
    waiter = threading.Thread(target=start, daemon=True)
    waiter.start()
    waiter.join(20)  # the old reader waited for a line that never came: until the command exited
    assert not waiter.is_alive(), "local_head ignored its timeout"
    assert time.monotonic() - t0 < 15
    (e,) = raised
    assert isinstance(e, RuntimeError) and "not ready in 1 s" in str(e)
    assert not _children() - before  # the hung command was stopped


def test_a_ray_head_that_prints_its_address_is_used_then_stopped(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _fake_ray(
        tmp_path, monkeypatch, "echo starting; echo \"  ray start --address='10.0.0.1:6379'\"; exec sleep 30"
    )
    before = _children()
    with ray_cluster.local_head(timeout_s=10) as address:
        assert address == "10.0.0.1:6379"
        assert _children() - before
    assert not _children() - before
    _fake_ray(tmp_path, monkeypatch, "echo 'no luck'; exit 3")
    with pytest.raises(RuntimeError, match="exited with code 3") as e, ray_cluster.local_head(timeout_s=10):
        pass
    assert "no luck" in str(e.value)  # its output, for the person reading the error
