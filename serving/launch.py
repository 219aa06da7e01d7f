"""Start the serving stack on loopback and stop every process it started.

    with serve(cfg, workdir) as url:          # the router (and, by composition, ranker and creative)
        httpx.post(f"{url}/rank", json={...})

`bentoml serve` runs in its own process group, so stopping it (SIGTERM, then SIGKILL after a grace period)
takes its dependency and worker processes with it. Its log goes to <workdir>/server.log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serving.core import CONFIG_ENV, ServeConfig

ROOT = Path(__file__).resolve().parents[1]


class ServeError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def last_lines(path: Path, n: int = 25) -> str:
    """The end of a server's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


@contextmanager
def serve(
    cfg: ServeConfig,
    workdir: str | Path,
    port: int | None = None,
    service: str = "serving.service:Router",
    ready_timeout_s: float = 240.0,
) -> Iterator[str]:
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = cfg.write(work / "serve.json")
    port = port or free_port()
    env = {
        **os.environ,
        CONFIG_ENV: str(cfg_path.resolve()),
        "BENTOML_HOME": str((work / "bentoml_home").resolve()),  # not the home folder
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log_path = work / "server.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", service, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, ready_timeout_s, log_path)
        yield url
    finally:
        stop(proc)


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, log_path: Path) -> None:
    import httpx

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ServeError(
                f"the server exited with code {proc.returncode}; its log ends:\n{last_lines(log_path)}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ServeError(
        f"the server was not ready after {timeout_s:.0f}s; its log ends:\n{last_lines(log_path)}"
    )


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group (graceful: in-flight requests finish), SIGKILL what remains.

    The grace period is well above a request's p99 (~1.5 s at concurrency 32 here). It matters because BentoML's
    router takes ~20 s to finish its own clean-up after the last request (its dependency services stop at
    once); by then every acknowledged exposure is committed, so nothing is lost by not waiting for it.
    """
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers the main process left behind, if any
    proc.wait()
    # a descendant outside the process group is not reached by killpg (a test once found one still asleep
    # after the stage ended): stop whatever is left of the tree seen before the stop
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=5)
