"""Cluster mode rehearsed on one machine: the platform's real servers on loopback instead of the embedded ones.

    make run-services                 # = adflow services run: start them, run ads_full against them, stop them
    adflow services up                # start them and print their addresses until Ctrl-C

What runs, each as its own process tree (stopped at the end, whatever happened):
- PostgreSQL (Debian's package; a private cluster made by `initdb` in a temp folder, on a free loopback port)
  as the backend store of an `mlflow server` (registry included) serving artifacts from a local folder;
- Redis (`redis-server`) as Feast's online store (the `cluster` feature-store config, as on Kubernetes);
- Ray: `ray start --head` plus a second node (`ray start --address=...`) with its own raylet and object store,
  so training connects by address and its workers spread over two nodes;
- BentoML's services, started by the A/B stage as separate processes (as in every run).

The pipeline is the same `ads_full`, run with the `services` placement and these addresses: nothing in the
stages knows it is on one machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from glob import glob
from pathlib import Path

from adflow.progress import log
from serving.launch import free_port as _free_port
from serving.launch import last_lines

PG_USER = "adflow"
PG_DB = "mlflow"


class ServiceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Services:
    mlflow_uri: str
    postgres_url: str
    redis_url: str  # host:port, as placement.redis_url takes it
    ray_address: str

    def overrides(self) -> list[str]:
        """The placement settings that point a run at these servers."""
        return [
            f"placement.mlflow_tracking_uri={self.mlflow_uri}",
            f"placement.redis_url={self.redis_url}",
            f"placement.ray_address={self.ray_address}",
        ]


def missing_programs() -> list[str]:
    """What this machine lacks to start the servers (`make system-deps` installs them)."""
    out = []
    if _pg_bin("postgres") is None:
        out.append("postgresql (initdb, postgres)")
    if shutil.which("redis-server") is None:
        out.append("redis-server")
    return out


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or next(
        iter(sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    return found


@contextmanager
def _process(name: str, cmd: list[str], logs: Path, ready: Callable[[], bool], timeout_s: float,
             env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Start `cmd` in its own session, wait until `ready()`, and stop its whole process tree at the end."""
    from adflow.ray_cluster import _stop

    log_path = logs / f"{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if proc.poll() is not None:
                raise ServiceError(f"{name} exited with {proc.returncode}:\n{last_lines(log_path)}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{name} not ready after {timeout_s:.0f} s:\n{last_lines(log_path)}")
            time.sleep(0.3)
        yield proc
    finally:
        _stop(proc)  # type: ignore[arg-type]


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as Debian's `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextmanager
def postgres(logs: Path) -> Iterator[str]:
    """A private PostgreSQL cluster on a free loopback port with database `mlflow`; yields its URL."""
    initdb, server, createdb, isready = (_pg_bin(n) for n in ("initdb", "postgres", "createdb", "pg_isready"))
    if not (initdb and server and createdb and isready):
        raise ServiceError("PostgreSQL is not installed (Debian's postgresql package: make system-deps)")
    # a folder the postgres user can reach (a pytest or workspace folder may be private to root)
    data_root = Path(tempfile.mkdtemp(prefix="adflow-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(data_root, "postgres", "postgres")
        user = _as_postgres_user()
        data = data_root / "data"
        r = subprocess.run([*user, initdb, "-D", str(data), "-U", PG_USER, "-A", "trust", "-E", "UTF8"],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode:
            raise ServiceError(f"initdb failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        port = _free_port()
        cmd = [*user, server, "-D", str(data), "-p", str(port), "-k", str(data_root),
               "-c", "listen_addresses=127.0.0.1"]  # fmt: skip

        def ready() -> bool:
            ping = [isready, "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER]
            return subprocess.run(ping, capture_output=True).returncode == 0

        with _process("postgres", cmd, logs, ready, 60):
            r = subprocess.run([createdb, "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB],
                               capture_output=True, text=True)  # fmt: skip
            if r.returncode:
                raise ServiceError(f"createdb failed: {r.stderr.strip()}")
            log("services", f"PostgreSQL on 127.0.0.1:{port}")
            yield f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/{PG_DB}"
    finally:
        shutil.rmtree(data_root, ignore_errors=True)


@contextmanager
def mlflow_server(backend: str, artifacts: Path, logs: Path) -> Iterator[str]:
    import urllib.request

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).parent / "mlflow")
    cmd = [exe, "server", "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    # job execution off: 12 s to healthy with one worker instead of 34 s and 12 processes (FIELD-NOTES)
    with _process("mlflow", cmd, logs, ready, 180, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}):
        log("services", f"MLflow server on {url} (PostgreSQL backend)")
        yield url


@contextmanager
def redis(workdir: Path, logs: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServiceError("redis-server is not installed (Debian's redis-server package: make system-deps)")
    import redis as redis_client

    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(workdir)]  # fmt: skip

    def ready() -> bool:
        try:
            return bool(redis_client.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
        except redis_client.RedisError:
            return False

    with _process("redis", cmd, logs, ready, 30):
        log("services", f"Redis on 127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"


@contextmanager
def start(root: str | Path, num_cpus: int = 2) -> Iterator[Services]:
    """Start every server under `root` (logs in root/logs); stop them all when the block ends.

    Ray's `num_cpus` (placement.num_workers) is split over the two nodes, so a training run's workers (one CPU
    each) land on both: the head gets the larger half."""
    from adflow.ray_cluster import local_head, worker_node

    root = Path(root).resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    missing = missing_programs()
    if missing:
        raise ServiceError(f"missing: {', '.join(missing)} (make system-deps installs them)")
    with ExitStack() as stack:
        pg = stack.enter_context(postgres(logs))
        uri = stack.enter_context(mlflow_server(pg, root / "mlflow-artifacts", logs))
        red = stack.enter_context(redis(root / "redis", logs))
        head_cpus = max(1, (num_cpus + 1) // 2)
        address = stack.enter_context(local_head(head_cpus))
        stack.enter_context(worker_node(address, max(1, num_cpus - head_cpus)))
        yield Services(mlflow_uri=uri, postgres_url=pg, redis_url=red, ray_address=address)
        log("services", "stopping every server started")


def ray_nodes(address: str) -> int:
    """How many alive nodes the Ray cluster at `address` has (a check that the worker node joined)."""
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()
    ray.init(address=address, log_to_driver=False)
    try:
        return sum(1 for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()
