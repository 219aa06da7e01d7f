"""What a step hands other pods goes on the workspace volume when there is one (adflow/workspace.py)."""

import threading
from pathlib import Path

from adflow.config import Placement
from adflow.workspace import MARKER, publish, shared, shared_input


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
