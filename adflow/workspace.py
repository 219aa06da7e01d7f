"""Where a pipeline step puts what other pods read: its Ray workers, the Feast feature server, the next run.

A KFP step writes its outputs to artifact folders inside its own pod; KFP uploads them when the step ends and
hands them to the next steps. Ray's workers, though, run in other pods (KubeRay) while the step runs, and
Feast's registry points the feature server and the materialization job at the offline tables' paths. On a
cluster (`placement.workspace_pvc` set) those things go to the workspace volume that every step pod, every Ray
pod and the Feast pods mount at `placement.workspace`, under the step folder's own path mirrored there:

    step folder   /gcs/mlpipeline/v2/artifacts/ads-full/<run>/train-ctr/<id>/model
    shared        /mnt/adflow/steps/gcs/mlpipeline/v2/artifacts/ads-full/<run>/train-ctr/<id>/model

With the KFP local runner (and the `services` rehearsal) every process is on one machine and `workspace_pvc`
is unset: the step folder is itself shared, and nothing is copied. (Set there, nothing would be copied either:
the local runner keeps its step folders under the workspace. The tests rehearse the cluster's layout by
calling the stages with step folders and data sets outside it.)
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from adflow.config import Placement

# The markers hold the folder they stand for (prune lists it). MARKER: in an input's copy, written before the
# copy is renamed into place (a folder there without it is not trusted). STEP_MARKER: in a step folder's mirror.
# PARTIAL: in the private folder a copy is made in, from its start, so one left by a step that died mid-copy
# is found by prune too.
MARKER = ".adflow-shared"
STEP_MARKER = ".adflow-step"
PARTIAL = ".adflow-partial"


def _mirror(placement: Placement, folder: str | Path) -> Path:
    path = Path(folder).resolve()
    return Path(placement.workspace) / "steps" / path.relative_to(path.anchor)


def on_workspace(placement: Placement, folder: str | Path) -> bool:
    return Path(folder).resolve().is_relative_to(Path(placement.workspace).resolve())


def shared(placement: Placement, step_dir: str | Path) -> Path:
    """The folder for what other pods read or write during the step (created): `step_dir` itself when there
    is no workspace volume or it is already on it, else its mirror on the volume."""
    if not placement.workspace_pvc or on_workspace(placement, step_dir):
        out = Path(step_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out
    out = _mirror(placement, step_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / STEP_MARKER).write_text(str(Path(step_dir).resolve()))
    return out


def shared_input(placement: Placement, folder: str | Path) -> Path:
    """An input folder (a data set) where other pods can read it: itself, or its copy on the volume. The copy
    is made once per artifact (MOON and Creative4U read the same data set, possibly at the same time): into a
    private folder first, then renamed into place, so a reader never sees half of it."""
    if not placement.workspace_pvc or on_workspace(placement, folder):
        return Path(folder)
    dest = _mirror(placement, folder)
    if (dest / MARKER).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / PARTIAL).write_text(str(Path(folder).resolve()))
    shutil.copytree(folder, tmp, dirs_exist_ok=True)
    (tmp / MARKER).write_text(str(Path(folder).resolve()))
    (tmp / PARTIAL).unlink()
    for _ in range(3):
        try:
            os.rename(tmp, dest)
            return dest
        except OSError:  # a folder is there: another step's complete copy, or one without the marker
            if (dest / MARKER).exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return dest
            shutil.rmtree(dest, ignore_errors=True)  # not trusted; another step may be replacing it too
    raise RuntimeError(f"could not put the copy of {folder} at {dest}")


def publish(src: str | Path, step_dir: str | Path, names: list[str]) -> None:
    """Copy results made on the volume (`names` under `src`) into the step's own folder, which KFP uploads for
    the next steps. Nothing to do when they are the same folder."""
    src, dst = Path(src), Path(step_dir)
    if src.resolve() == dst.resolve():
        return
    for name in names:
        s = src / name
        if s.is_dir():
            shutil.copytree(s, dst / name, dirs_exist_ok=True)
        elif s.exists():
            shutil.copy2(s, dst / name)


@dataclass(frozen=True)
class StepFolder:
    path: Path  # on the volume
    mirrors: str  # the step or input folder it stands for
    size_bytes: int
    age_days: float  # since anything in it last changed


def step_folders(workspace: str | Path, now: float | None = None) -> list[StepFolder]:
    """Every step folder, input copy and unfinished input copy under <workspace>/steps, oldest first."""
    root = Path(workspace) / "steps"
    now = time.time() if now is None else now
    found = []
    for marker in [*root.rglob(STEP_MARKER), *root.rglob(MARKER), *root.rglob(PARTIAL)]:
        folder = marker.parent
        files = [p for p in folder.rglob("*") if p.is_file()]
        newest = max((p.stat().st_mtime for p in files), default=marker.stat().st_mtime)
        what = marker.read_text().strip()
        found.append(
            StepFolder(
                folder,
                f"unfinished copy of {what}" if marker.name == PARTIAL else what,
                sum(p.stat().st_size for p in files),
                (now - newest) / 86400,
            )
        )
    return sorted(found, key=lambda f: -f.age_days)


def prune(
    workspace: str | Path, older_than_days: float, dry_run: bool = False, now: float | None = None
) -> list[StepFolder]:
    """Delete step folders and input copies nothing has touched for `older_than_days` (their checkpoints
    go with them: a later run can no longer `resume_from` them), and the folders left empty above them.
    Returns what was (or, with dry_run, would be) deleted."""
    root = Path(workspace) / "steps"
    old: list[StepFolder] = []
    # a folder inside another one (an input copy under a step folder) or marked twice (a copy that died
    # between its two markers) goes with the outer one: counted once, deleted once. A folder inside an old
    # one is old too: its files are among the outer one's.
    for f in sorted(step_folders(workspace, now), key=lambda f: len(f.path.parts)):
        if f.age_days >= older_than_days and not any(f.path.is_relative_to(o.path) for o in old):
            old.append(f)
    old.sort(key=lambda f: -f.age_days)
    if dry_run:
        return old
    for f in old:
        if not f.path.exists():  # deleted since it was listed (another prune got there first)
            continue
        shutil.rmtree(f.path)
        parent = f.path.parent
        while parent != root and parent.is_relative_to(root) and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return old
