"""One Ray per pipeline run: started by the runner (or a test), reached by address from every stage.

`ray.init` costs 10-16 s (FIELD-NOTES), so a local run starts one head node and each Ray stage connects to
it by address; on a cluster, placement.ray_address names the KubeRay head and nothing is started here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adflow.progress import log


def _ray_bin() -> str:
    exe = Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "ray"
    if exe.exists():
        return str(exe)
    import sys

    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


@contextmanager
def local_head(num_cpus: int | None = None, timeout_s: float = 120) -> Iterator[str]:
    """Start a Ray head for the duration of the block; yields its address.

    `ray start --block` runs in its own process group, which is stopped at the end: `ray stop` would kill
    every Ray process on the machine, another run's or an in-process driver's included.
    """
    args = ["--head", "--port=0", "--include-dashboard=false"]
    with _ray_start(args, num_cpus, r"--address='([^']+)'", timeout_s) as address:
        log("ray", f"local Ray head at {address}")
        yield address


@contextmanager
def worker_node(address: str, num_cpus: int | None = None, timeout_s: float = 120) -> Iterator[None]:
    """Join a second node (its own raylet and object store, a separate process tree) to the head at `address`
    for the duration of the block: tasks and training workers then spread over two nodes, as on a cluster."""
    with _ray_start([f"--address={address}"], num_cpus, r"(Ray runtime started)", timeout_s):
        log("ray", f"worker node joined {address}")
        yield


@contextmanager
def _ray_start(args: list[str], num_cpus: int | None, ready: str, timeout_s: float) -> Iterator[str]:
    """`ray start --block ARGS`; yields the first group of `ready` found in its output; stops it at the end."""
    # no drain on SIGTERM: Ray 2.60 first drains the node for up to 30 s, waiting for every worker lease to be
    # returned (meant for Serve replicas on a pod being replaced). A finished run's node waited out ~10 s of it,
    # with the stop falling back to killing its processes; our node is stopped only when its work is done.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    cmd = [_ray_bin(), "start", "--block", "--disable-usage-stats", *args]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    found, seen = _wait_for(proc, ready, timeout_s)
    if found is None:
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else f"not ready in {timeout_s:g} s: stopped it"
        _stop(proc)
        raise RuntimeError(f"{' '.join(cmd[1:])} failed ({why}):\n" + "".join(seen[-40:]))
    try:
        yield found
    finally:
        _stop(proc)


def _wait_for(proc: subprocess.Popen[str], ready: str, timeout_s: float) -> tuple[str | None, list[str]]:
    """The first group of `ready` in the process's output within `timeout_s` (None: it exited first, or the
    time ran out), and the lines read. The output is read in a thread, which drains it for as long as the
    process lives (it must never block on a full pipe): reading it here would wait past any deadline on a
    process that hangs without printing."""
    import queue
    import threading
    import time

    assert proc.stdout is not None
    stream = proc.stdout
    lines: queue.Queue[str | None] = queue.Queue()
    done = threading.Event()

    def read() -> None:
        for line in stream:
            if not done.is_set():
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:  # its output closed: it has exited, or is about to
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=min(left, 5.0))
                break
            seen.append(line)
            match = re.search(ready, line)
            if match:
                return match.group(1), seen
        return None, seen
    finally:
        done.set()


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop the head's whole process tree (GCS, raylet, workers). SIGTERM goes to `ray start --block` alone:
    it stops its own tree in ~2 s here. SIGTERM to every process at once left the raylet waiting ~10 s for
    the GCS it had lost (and the run waiting for it). What is left after 10 s is terminated, then killed."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        root.terminate()
    alive = _wait_gone(proc, procs, 10.0)
    for sig in ("terminate", "kill"):
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                getattr(p, sig)()
        alive = _wait_gone(proc, alive, 3.0)


def _wait_gone(proc: subprocess.Popen[str], procs: list[Any], timeout_s: float) -> list[Any]:
    """The processes still running after up to `timeout_s` (a zombie counts as gone: its parent, or init,
    reaps it; ours, `ray start`, is reaped here)."""
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        proc.poll()  # reap `ray start` once it exits
        alive = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the run's Ray (by address), or start an in-process one when a stage runs on its own."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": a fresh in-process Ray, never whatever /tmp/ray/ray_current_cluster names (a stopped head's
        # address stays there, and plain ray.init() would try to join it)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
