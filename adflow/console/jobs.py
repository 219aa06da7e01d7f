"""Pipeline runs started from the console: each is `adflow run` in its own process, named before it starts.

A run is the same command a person types (`adflow run --pipeline ... --preset ... --set ...`), so the console
has no pipeline logic of its own: locally it runs on the KFP local runner; with `placement.kfp_host` set the
command submits the compiled pipeline to Kubeflow and ends. The console records who started what in its own
SQLite file beside the A/B store, keeps each run's output in a log file, and reads per-stage progress from
MLflow while the run goes (the stages log there as they finish) and from the run's summary once it ends.

Cancel sends SIGTERM to the run's process: the runner turns it into a clean stop (the local Ray head is shut
down, the summary says "cancelled"); whatever is left after a grace period is killed with its process group.
Runs outlive the console (their own session): a restarted console adopts the ones still going and settles them
when their process ends. A pid is stored with its process's start time, so a pid the system has since given to
another process is never taken for the run (nor signalled).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, preset TEXT NOT NULL, placement TEXT NOT NULL,
    overrides TEXT NOT NULL, who TEXT NOT NULL, status TEXT NOT NULL, pid INTEGER, exit_code INTEGER,
    started_at TEXT NOT NULL, finished_at TEXT, log TEXT NOT NULL, pid_start INTEGER);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, detail TEXT NOT NULL, outcome TEXT NOT NULL);
"""
ACTIVE = ("running", "cancelling")
CANCEL_GRACE_S = 60.0  # the runner needs a few seconds to stop Ray and write its summary
ADOPT_POLL_S = 2.0  # how often an adopted run (not our child: no wait()) is checked for having ended


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Job:
    run_id: str
    pipeline: str
    preset: str
    placement: str
    overrides: list[str]
    who: str
    status: str  # running | cancelling | succeeded | failed | cancelled | submitted | lost
    pid: int | None
    exit_code: int | None
    started_at: str
    finished_at: str | None
    log: str
    # the process's start time (clock ticks after boot): tells the run's process from a later one given its pid
    pid_start: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# by name, not `*`: rows map onto Job whatever the table's column order (a migration appends its column)
JOB_COLUMNS = ", ".join(f.name for f in fields(Job))


@dataclass
class AuditEntry:
    at: str
    who: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)
    outcome: str = "ok"


class ConsoleDB:
    """The console's own state: runs it started and the audit log of every mutating action."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        # a console.sqlite from before pid_start: the column is added (NULL for old rows: pid not checkable)
        if "pid_start" not in {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}:
            self.db.execute("ALTER TABLE jobs ADD COLUMN pid_start INTEGER")

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return list(self.db.execute(sql, args))

    # ---- audit
    def audit(self, who: str, action: str, target: str, detail: dict[str, Any], outcome: str = "ok") -> int:
        """Record an action; returns its entry's id (an action recorded as "pending" is settled later)."""
        with self.lock:
            cur = self.db.execute(
                "INSERT INTO audit (at, who, action, target, detail, outcome) VALUES (?,?,?,?,?,?)",
                (now(), who, action, target, json.dumps(detail, sort_keys=True, default=str), outcome),
            )
            return int(cur.lastrowid or 0)

    def settle_audit(self, entry_id: int, outcome: str) -> None:
        self.execute("UPDATE audit SET outcome = ? WHERE id = ?", (outcome, entry_id))

    def audit_log(self, limit: int = 500) -> list[AuditEntry]:
        rows = self.execute(
            "SELECT at, who, action, target, detail, outcome FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [AuditEntry(a, w, act, t, json.loads(d), o) for a, w, act, t, d, o in rows]

    # ---- jobs
    def insert(self, job: Job) -> None:
        self.execute(
            f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job.run_id, job.pipeline, job.preset, job.placement, json.dumps(job.overrides), job.who,
             job.status, job.pid, job.exit_code, job.started_at, job.finished_at, job.log, job.pid_start),
        )  # fmt: skip

    def update(self, run_id: str, only_if: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Set `values`; with `only_if`, only while the job's status is one of those (a compare-and-set: of two
        threads settling the same run, the first wins). Returns whether the row changed."""
        cols = ", ".join(f"{k} = ?" for k in values)
        sql, args = f"UPDATE jobs SET {cols} WHERE run_id = ?", (*values.values(), run_id)
        if only_if is not None:
            sql += f" AND status IN ({','.join('?' * len(only_if))})"
            args = (*args, *only_if)
        with self.lock:
            return self.db.execute(sql, args).rowcount > 0

    def job(self, run_id: str) -> Job | None:
        rows = self.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = ?", (run_id,))
        return _job(rows[0]) if rows else None

    def jobs(self) -> list[Job]:
        return [_job(r) for r in self.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY started_at DESC")]


def _job(row: tuple[Any, ...]) -> Job:
    r = list(row)
    r[4] = json.loads(r[4])
    return Job(*r)


def summary_of(runs_dir: str | Path, run_id: str) -> dict[str, Any] | None:
    path = Path(runs_dir) / run_id / "summary.json"
    try:
        out: dict[str, Any] = json.loads(path.read_text())
        return out
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Launcher:
    """Starts, watches and cancels `adflow run` processes. `base_overrides` (the console's own --set values,
    e.g. the workspace) come before each run's own."""

    def __init__(
        self,
        db: ConsoleDB,
        logs_dir: str | Path,
        runs_dir: str | Path,
        placement: str,
        base_overrides: list[str],
        cwd: str | Path | None = None,
    ) -> None:
        self.db = db
        self.logs = Path(logs_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs_dir = Path(runs_dir)
        self.placement = placement
        self.base = list(base_overrides)
        self.cwd = str(cwd or Path.cwd())
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.reconcile()

    def command(self, pipeline: str, preset: str, overrides: list[str], run_id: str) -> list[str]:
        sets = [x for o in [*self.base, *overrides] for x in ("--set", o)]
        return [sys.executable, "-m", "adflow", "run", "--pipeline", pipeline, "--preset", preset,
                "--placement", self.placement, "--run-id", run_id, *sets]  # fmt: skip

    def start(self, pipeline: str, preset: str, overrides: list[str], who: str) -> Job:
        """Start a run (the caller has validated the settings); returns at once."""
        from adflow.runner import new_run_id

        run_id = new_run_id()
        log = self.logs / f"{run_id}.log"
        cmd = self.command(pipeline, preset, overrides, run_id)
        with log.open("wb") as out:
            out.write(f"$ adflow {' '.join(cmd[3:])}\n".encode())
            out.flush()
            env = {**os.environ, "ADFLOW_USER": who, "PYTHONUNBUFFERED": "1"}
            # its own session: cancel can stop the run and every task process it started, and a console
            # restart does not take the run with it
            proc = subprocess.Popen(cmd, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        job = Job(run_id, pipeline, preset, self.placement, overrides, who, "running", proc.pid, None, now(),
                  None, str(log), proc_start_time(proc.pid))  # fmt: skip
        self.db.insert(job)
        self.procs[run_id] = proc
        threading.Thread(target=self._wait, args=(run_id, proc), daemon=True, name=f"wait-{run_id}").start()
        return job

    def _wait(self, run_id: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        self._finish(run_id, code)

    def _finish(self, run_id: str, code: int | None) -> None:
        """Settle a run whose process has ended. Several paths can see the end (the waiter, a cancel that
        finds the process gone, the adopted-run poller): only the first settles it, the others change nothing
        (a later one would overwrite the real exit code with None)."""
        job = self.db.job(run_id)
        summary = summary_of(self.runs_dir, run_id)
        if summary is not None:
            status = summary["status"]
        elif job is not None and job.status == "cancelling" and (code is None or code < 0):
            status = "cancelled"  # killed by a signal before the runner could write its summary
        else:
            status = "failed" if code is not None else "lost"
        self.db.update(run_id, only_if=ACTIVE, status=status, exit_code=code, finished_at=now())
        self.procs.pop(run_id, None)

    def cancel(self, run_id: str) -> tuple[Job, str]:
        """SIGTERM the run; returns the job and what was done. A second cancel while the first is under way
        does nothing: another SIGTERM would interrupt the runner's own clean-up."""
        job = self.db.job(run_id)
        if job is None:
            raise KeyError(run_id)
        if job.status == "cancelling":
            return job, "already cancelling: the run is stopping"
        if job.status not in ACTIVE or job.pid is None:
            raise ValueError(f"run {run_id} is {job.status}: only a running run can be cancelled")
        pid, pid_start = job.pid, job.pid_start
        # compare-and-set: the run may have ended (and been settled) since it was read above
        if not self.db.update(run_id, only_if=("running",), status="cancelling"):
            job = self.db.job(run_id) or job
            if job.status == "cancelling":
                return job, "already cancelling: the run is stopping"
            raise ValueError(f"run {run_id} is {job.status}: only a running run can be cancelled")
        try:
            if not _same_process(pid, pid_start):
                raise ProcessLookupError(pid)  # its pid may be another process's by now: never signal that
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            # ended on its own: our waiter settles it with the real exit code; a run from before a console
            # restart is settled here
            if run_id not in self.procs:
                self._finish(run_id, None)
            return self.db.job(run_id) or job, "the run's process had already ended"
        threading.Thread(target=self._kill_later, args=(run_id, pid, pid_start), daemon=True).start()
        return self.db.job(run_id) or job, f"cancelling: the run has {CANCEL_GRACE_S:.0f} s to stop"

    def _kill_later(self, run_id: str, pid: int, pid_start: int | None) -> None:
        deadline = time.monotonic() + CANCEL_GRACE_S
        while time.monotonic() < deadline:
            if not _same_process(pid, pid_start):
                break
            time.sleep(0.5)
        # the run's session: any task process still left. Skipped when the pid now names another process:
        # a session leader that reused the pid would be the leader of its own group of the same number
        start = proc_start_time(pid)
        if start is None or pid_start is None or start == pid_start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if run_id not in self.procs:  # a run from before a console restart: no waiter thread
            self._finish(run_id, None)

    def reconcile(self) -> None:
        """After a console restart: runs whose process is gone are settled from their summary; runs still
        going are adopted (a poller settles them when their process ends: they are not our children)."""
        for job in self.db.jobs():
            if job.status not in ACTIVE or job.run_id in self.procs:
                continue
            if job.pid is not None and _same_process(job.pid, job.pid_start):
                # a cancel the last console started gets its grace period and kill from this one
                watch = self._kill_later if job.status == "cancelling" else self._watch
                threading.Thread(target=watch, args=(job.run_id, job.pid, job.pid_start), daemon=True,
                                 name=f"adopt-{job.run_id}").start()  # fmt: skip
            else:
                self._finish(job.run_id, None)

    def _watch(self, run_id: str, pid: int, pid_start: int | None) -> None:
        while _same_process(pid, pid_start):
            time.sleep(ADOPT_POLL_S)
        self._finish(run_id, None)  # its exit code went to the console that started it


def proc_start_time(pid: int) -> int | None:
    """When the process started, in clock ticks after boot (/proc/<pid>/stat field 22); None where unknown
    (no such process, no /proc)."""
    try:
        # the name (field 2) may hold spaces and ')': the fields after it start at the last ') '
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return int(after_name[19])  # after_name[0] is field 3 (state)
    except (OSError, IndexError, ValueError):
        return None


def _same_process(pid: int, start: int | None) -> bool:
    """The run's process is still going: the pid is alive and, where its start time was recorded and can be
    read, it is the same process (not another one the pid was given to since)."""
    if not _alive(pid):
        return False
    now_start = proc_start_time(pid)
    return start is None or now_start is None or now_start == start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by us) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True
