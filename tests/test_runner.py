"""The runner around a pipeline (adflow/runner.py, adflow/ray_cluster.py): what a run leaves behind when it
cannot start, where its tasks' temp folders go, and the local Ray head's start timeout."""

import contextlib
import json
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
