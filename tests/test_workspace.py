"""What a step hands other pods goes on the workspace volume when there is one (adflow/workspace.py)."""

import threading
from pathlib import Path

from adflow.config import Placement
from adflow.workspace import MARKER, PARTIAL, publish, shared, shared_input


def _placements(tmp_path: Path) -> tuple[Placement, Placement]:
    ws = tmp_path / "ws"
    return Placement(workspace=str(ws)), Placement(workspace=str(ws), workspace_pvc="adflow-workspace")


def _dataset(tmp_path: Path) -> Path:
    data = tmp_path / "pod" / "inputs" / "dataset"
    (data / "images").mkdir(parents=True)
    (data / "items.parquet").write_bytes(b"items")
    for i in range(20):
        (data / "images" / f"{i}.png").write_bytes(bytes([i]) * 100)
    return data


def test_local_steps_share_their_own_folders(tmp_path: Path) -> None:
    local, _ = _placements(tmp_path)
    step = tmp_path / "pod" / "outputs" / "model"
    assert shared(local, step) == step and step.is_dir()
    data = _dataset(tmp_path)
    assert shared_input(local, data) == data
    assert not (tmp_path / "ws").exists()  # nothing copied


def test_cluster_steps_mirror_their_folders_on_the_volume(tmp_path: Path) -> None:
    _, cluster = _placements(tmp_path)
    step = tmp_path / "pod" / "outputs" / "model"
    work = shared(cluster, step)
    assert work == tmp_path / "ws" / "steps" / step.relative_to("/") and work.is_dir()
    on_volume = tmp_path / "ws" / "kfp" / "run" / "model"  # already on the volume: used as it is
    assert shared(cluster, on_volume) == on_volume

    data = _dataset(tmp_path)
    copy = shared_input(cluster, data)
    assert copy.is_relative_to(tmp_path / "ws" / "steps") and (copy / MARKER).exists()
    assert sorted(p.name for p in (copy / "images").iterdir()) == sorted(
        p.name for p in (data / "images").iterdir()
    )
    (data / "items.parquet").write_bytes(
        b"changed"
    )  # the same artifact again: the copy is reused, not redone
    assert shared_input(cluster, data) == copy and (copy / "items.parquet").read_bytes() == b"items"

    (work / "encoders").mkdir()
    (work / "encoders" / "w.pt").write_bytes(b"w")
    (work / "history.jsonl").write_text("{}\n")
    (work / "ray").mkdir()
    publish(work, step, ["encoders", "history.jsonl", "missing"])
    assert (step / "encoders" / "w.pt").read_bytes() == b"w" and (step / "history.jsonl").exists()
    assert not (step / "ray").exists()  # checkpoints stay on the volume (resumable), out of the artifact


def test_two_steps_copying_one_input_at_once_get_one_complete_copy(tmp_path: Path) -> None:
    _, cluster = _placements(tmp_path)
    data = _dataset(tmp_path)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(shared_input(cluster, data))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(list((got[0] / "images").iterdir())) == 20
    assert [p.name for p in got[0].parent.iterdir()] == [got[0].name]  # no private copies left behind


def test_an_incomplete_copy_is_replaced(tmp_path: Path) -> None:
    _, cluster = _placements(tmp_path)
    data = _dataset(tmp_path)
    dest = shared_input(cluster, data)
    (dest / MARKER).unlink()  # a copy without its marker (damaged, or put there by hand) is not trusted
    (dest / "images" / "3.png").unlink()
    assert shared_input(cluster, data) == dest
    assert (dest / MARKER).exists() and (dest / "images" / "3.png").exists()


def test_prune_deletes_old_step_folders_only(tmp_path: Path) -> None:
    import os
    import time

    from typer.testing import CliRunner

    from adflow.cli import app
    from adflow.workspace import prune, step_folders

    _, cluster = _placements(tmp_path)
    ws = tmp_path / "ws"
    old_run, new_run = tmp_path / "pod" / "run1" / "model", tmp_path / "pod" / "run2" / "model"
    for step in (old_run, new_run):
        work = shared(cluster, step)
        (work / "ray").mkdir()
        (work / "ray" / "state.pt").write_bytes(b"x" * 1000)
    src = _dataset(tmp_path)
    data = shared_input(cluster, src)
    assert not list(data.rglob(PARTIAL)) and not list(data.parent.glob(".dataset.*"))
    # what a step that died in the middle of copying the data set leaves: the private folder, unfinished
    dead = data.parent / ".dataset.0badf00d"
    (dead / "tables").mkdir(parents=True)
    (dead / PARTIAL).write_text(str(src))
    (dead / "tables" / "items.parquet").write_bytes(b"p" * 10)
    (ws / "feast").mkdir()  # not a step folder: never touched
    (ws / "feast" / "registry.db").write_bytes(b"r")
    month_ago = time.time() - 30 * 86400
    old_work = shared(cluster, old_run)
    for p in [*old_work.rglob("*"), *data.rglob("*"), *dead.rglob("*")]:
        os.utime(p, (month_ago, month_ago))

    listed = {f.mirrors: f for f in step_folders(ws)}
    unfinished = f"unfinished copy of {src}"
    assert set(listed) == {
        str(old_run), str(new_run), str(tmp_path / "pod" / "inputs" / "dataset"), unfinished
    }  # fmt: skip
    assert listed[str(old_run)].age_days > 29 and listed[str(new_run)].age_days < 1
    assert listed[str(old_run)].size_bytes >= 1000

    r = CliRunner().invoke(app, ["workspace", "prune", "--older-than", "14", "--dry-run",
                                 "--set", f"placement.workspace={ws}"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "3 folder(s)" in r.output and "would free" in r.output and str(old_work) in r.output
    assert str(dead) in r.output
    assert len(step_folders(ws)) == 4  # a dry run deletes nothing

    gone = prune(ws, 14)
    assert {f.mirrors for f in gone} == {
        str(old_run),
        str(tmp_path / "pod" / "inputs" / "dataset"),
        unfinished,
    }
    assert [f.mirrors for f in step_folders(ws)] == [str(new_run)]
    assert (ws / "feast" / "registry.db").exists()
    assert not (ws / "steps" / old_run.relative_to("/")).parent.exists()  # empty folders above it went too


def test_a_copy_that_dies_midway_is_listed_for_prune(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The private folder a copy is made in is marked from its start: if the step dies mid-copy, prune sees it."""
    import shutil

    import pytest

    from adflow import workspace
    from adflow.workspace import step_folders

    _, cluster = _placements(tmp_path)
    src = _dataset(tmp_path)
    real_copytree = shutil.copytree

    def dies_midway(a, b, **kw):  # type: ignore[no-untyped-def]
        real_copytree(a / "images", b / "images", **kw)  # half of it, then the pod is gone
        raise OSError("pod evicted")

    monkeypatch.setattr(workspace.shutil, "copytree", dies_midway)
    with pytest.raises(OSError, match="evicted"):
        shared_input(cluster, src)
    (left,) = step_folders(tmp_path / "ws")
    assert left.mirrors == f"unfinished copy of {src.resolve()}" and left.path.name.startswith(".dataset.")
    assert (left.path / "images").is_dir() and not (left.path / MARKER).exists()
    monkeypatch.undo()
    data = shared_input(cluster, src)  # the next step copies afresh; the dead one stays for prune
    assert (data / MARKER).exists() and len(step_folders(tmp_path / "ws")) == 2


def test_prune_takes_nested_and_twice_marked_folders_once(tmp_path: Path) -> None:
    """An input copy inside a step folder, and a copy that died between writing MARKER and removing PARTIAL:
    each folder is deleted (and counted) once, and prune does not trip over what the outer one took along."""
    from adflow.workspace import STEP_MARKER, prune, step_folders

    ws = tmp_path / "ws"
    step = ws / "steps" / "gcs" / "run1" / "synth" / "1"
    inner = step / "dataset"
    inner.mkdir(parents=True)
    (step / STEP_MARKER).write_text("/gcs/run1/synth/1")
    (inner / MARKER).write_text("/gcs/run1/synth/1/dataset")
    (inner / "items.parquet").write_bytes(b"x" * 100)
    both = ws / "steps" / "pod" / ".dataset.0badf00d"
    both.mkdir(parents=True)
    (both / MARKER).write_text("/pod/dataset")
    (both / PARTIAL).write_text("/pod/dataset")
    (both / "items.parquet").write_bytes(b"y" * 10)
    later = 4e9  # every folder is old by then
    assert len(step_folders(ws, now=later)) == 4

    would = prune(ws, 1, dry_run=True, now=later)
    assert sorted(f.path for f in would) == sorted([step, both])
    assert sum(f.size_bytes for f in would) == sum(p.stat().st_size for p in ws.rglob("*") if p.is_file())
    gone = prune(ws, 1, now=later)
    assert sorted(f.path for f in gone) == sorted([step, both])
    assert not step.exists() and not both.exists() and not step_folders(ws)
