"""One Ray per pipeline run: started by the runner (or a test), reached by address from every stage.

`ray.init` costs 10-16 s (FIELD-NOTES), so a local run starts one head node and each Ray stage connects to
it by address; on a cluster, placement.ray_address names the KubeRay head and nothing is started here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adflow.progress import log


def _ray_bin() -> str:
    exe = Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "ray"
    if exe.exists():
        return str(exe)
    import sys

    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


@contextmanager
def local_head(num_cpus: int | None = None) -> Iterator[str]:
    """Start a Ray head on 127.0.0.1 for the duration of the block; yields its address."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [
        _ray_bin(),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--port=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    text = out.stdout + out.stderr
    match = re.search(r"--address='([^']+)'", text) or re.search(r"address='?(\d+\.\d+\.\d+\.\d+:\d+)", text)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"ray start failed:\n{text[-2000:]}")
    address = match.group(1)
    log("ray", f"local Ray head at {address}")
    try:
        yield address
    finally:
        subprocess.run([_ray_bin(), "stop", "--force"], env=env, capture_output=True, timeout=120)


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the run's Ray (by address), or start an in-process one when a stage runs on its own."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
