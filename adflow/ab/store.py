"""Durable A/B state in SQLite: experiments (with every change), the exposure log, and clicks.

Locally the file lives under the workspace; the router and the CLI open the same file. Writes are committed one
by one in WAL mode, so a crash or restart loses nothing that was acknowledged, and readers never block the
writer. The exposure and click tables are append-only (no UPDATE or DELETE is ever issued on them).

Experiment lifecycle: create (running) -> ramp (new weights, keeps users sticky, see assign.Layout) -> pause
(all traffic to control, weights kept) -> ramp/resume -> stop (kill switch: all traffic to control for good)
or conclude (a winner is recorded). Every change is an event row: who, when, what.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from adflow.ab.assign import Arm, Layout, bucket
from adflow.registry import who

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY, salt TEXT NOT NULL, arms TEXT NOT NULL, metric TEXT NOT NULL,
    min_sample INTEGER NOT NULL, status TEXT NOT NULL, winner TEXT, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, experiment TEXT NOT NULL, at TEXT NOT NULL, who TEXT NOT NULL,
    action TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exposures (
    exposure_id TEXT PRIMARY KEY, ts REAL NOT NULL, experiment TEXT NOT NULL, user_id TEXT NOT NULL,
    arm TEXT NOT NULL, model TEXT NOT NULL, item_id INTEGER NOT NULL, creative_id INTEGER, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clicks (exposure_id TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS exposures_by_experiment ON exposures (experiment, ts);
CREATE INDEX IF NOT EXISTS clicks_by_exposure ON clicks (exposure_id);
"""
STATUSES = ("running", "paused", "stopped", "concluded")
STORE_FILE = "ab.sqlite"


def default_store_path(workspace: str | Path) -> Path:
    """The workspace's A/B store: the router and the CLI must open the same file to see the same experiments."""
    return Path(workspace) / STORE_FILE


class ABError(ValueError):
    pass


@dataclass
class Experiment:
    name: str
    salt: str
    arms: list[Arm]
    metric: str
    min_sample: int
    status: str
    winner: str | None
    created_at: str

    @property
    def control(self) -> str:
        return self.arms[0].name

    def serving_arms(self) -> list[Arm]:
        """The arms traffic goes to now: the configured weights while running; the winner once concluded;
        else (paused, stopped) all to control."""
        if self.status == "running":
            return self.arms
        everyone = self.winner if self.status == "concluded" and self.winner else self.control
        return [Arm(a.name, a.model, 1.0 if a.name == everyone else 0.0) for a in self.arms]

    def layout(self) -> Layout:
        return Layout.of(self.serving_arms())

    def arm_for(self, user_id: int | str) -> Arm:
        """The arm this user is served now: by bucket while running; control when paused or stopped; the
        winner for everyone once concluded (until the next deployment makes it the default)."""
        if self.status == "concluded" and self.winner:
            return next(a for a in self.arms if a.name == self.winner)
        name = self.layout().arm_of(bucket(self.salt, user_id))
        return next(a for a in self.arms if a.name == name)


@dataclass
class Exposure:
    exposure_id: str
    ts: float
    experiment: str
    user_id: str
    arm: str
    model: str
    item_id: int
    creative_id: int | None
    position: int


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class ABStore:
    def __init__(self, path: str | Path, actor: str | None = None) -> None:
        """`actor`: who the changes made through this handle are recorded as (default: this process's user;
        the console passes the signed-in person)."""
        self.path = Path(path)
        self.actor = actor
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an acknowledged exposure survives a power cut
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ---- experiments
    def create(
        self, name: str, arms: list[Arm], metric: str = "ctr", min_sample: int = 1000, salt: str | None = None
    ) -> Experiment:
        Layout.of(arms)  # refuses bad weights before anything is written
        if self.find(name) is not None:
            raise ABError(f"experiment {name!r} already exists")
        exp = Experiment(
            name, salt or uuid.uuid4().hex[:12], arms, metric, min_sample, "running", None, _now()
        )
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO experiments VALUES (?,?,?,?,?,?,?,?)",
                (name, exp.salt, _arms_json(arms), metric, min_sample, "running", None, exp.created_at),
            )
            self._event(name, "create", {"arms": json.loads(_arms_json(arms)), "salt": exp.salt})
        return exp

    def find(self, name: str) -> Experiment | None:
        row = self.db.execute(
            "SELECT name, salt, arms, metric, min_sample, status, winner, created_at FROM experiments "
            "WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        arms = [Arm(a["name"], a["model"], float(a["weight"])) for a in json.loads(row[2])]
        return Experiment(row[0], row[1], arms, row[3], int(row[4]), row[5], row[6], row[7])

    def get(self, name: str) -> Experiment:
        exp = self.find(name)
        if exp is None:
            raise ABError(f"no experiment {name!r}")
        return exp

    def experiments(self) -> list[Experiment]:
        names = [r[0] for r in self.db.execute("SELECT name FROM experiments ORDER BY created_at, name")]
        return [self.get(n) for n in names]

    def ramp(self, name: str, weights: dict[str, float]) -> Experiment:
        """New weights for named arms (the control takes the rest); resumes a paused experiment."""
        exp = self._require(name, ("running", "paused"))
        unknown = set(weights) - {a.name for a in exp.arms}
        if unknown:
            raise ABError(f"experiment {name!r} has no arm(s) {sorted(unknown)}")
        if exp.control in weights:
            raise ABError("set the treatment weights; the control arm takes the rest")
        new = {a.name: weights.get(a.name, a.weight) for a in exp.arms[1:]}
        rest = 1.0 - sum(new.values())
        if rest < -1e-9:
            raise ABError(f"treatment weights sum to {1 - rest:.4f} > 1")
        arms = [Arm(exp.control, exp.arms[0].model, max(rest, 0.0))]
        arms += [Arm(a.name, a.model, new[a.name]) for a in exp.arms[1:]]
        try:
            Layout.of(arms)
        except ValueError as e:
            raise ABError(str(e)) from None
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "UPDATE experiments SET arms = ?, status = 'running' WHERE name = ?", (_arms_json(arms), name)
            )
            self._event(name, "ramp", {"weights": {a.name: a.weight for a in arms}, "was": exp.status})
        return self.get(name)

    def pause(self, name: str) -> Experiment:
        return self._set_status(name, "paused", ("running",), {})

    def stop(self, name: str, reason: str = "") -> Experiment:
        """The kill switch: every user back to control at once, for good."""
        return self._set_status(name, "stopped", ("running", "paused"), {"reason": reason})

    def concludable(self, name: str, winner: str) -> Experiment:
        """The experiment, when it can be concluded with `winner` now; else ABError. Writes nothing, so a
        caller with more to check (adflow.ab.conclude: the registry) can refuse before anything changes."""
        exp = self._require(name, ("running", "paused"))
        if winner not in {a.name for a in exp.arms}:
            raise ABError(f"experiment {name!r} has no arm {winner!r} (arms: {[a.name for a in exp.arms]})")
        return exp

    def conclude(self, name: str, winner: str, reason: str = "") -> Experiment:
        self.concludable(name, winner)
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "UPDATE experiments SET status = 'concluded', winner = ? WHERE name = ?", (winner, name)
            )
            self._event(name, "conclude", {"winner": winner, "reason": reason})
        return self.get(name)

    def events(self, name: str) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT at, who, action, detail FROM events WHERE experiment = ? ORDER BY id", (name,)
        )
        return [{"at": a, "who": w, "action": act, **json.loads(d)} for a, w, act, d in rows]

    def weight_period(self, name: str) -> tuple[float, float | None]:
        """[start, end) in unix seconds of the latest stretch the experiment ran with its current weights.

        SRM compares exposure counts with the weights, so it must only count exposures served under them:
        not those from before a ramp, nor from a pause or after a stop (all control then).
        """
        start, end = 0.0, None
        for e in self.events(name):
            t = dt.datetime.fromisoformat(str(e["at"])).timestamp()
            if e["action"] in ("create", "ramp"):
                start, end = t, None
            elif end is None:
                end = t
        return start, end

    # ---- exposure log
    def log_exposures(self, rows: Iterable[Exposure]) -> int:
        rows = list(rows)
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO exposures VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (r.exposure_id, r.ts, r.experiment, r.user_id, r.arm, r.model, r.item_id, r.creative_id,
                     r.position)
                    for r in rows
                ],
            )  # fmt: skip
        return len(rows)

    def log_clicks(self, exposure_ids: Iterable[str], ts: float) -> int:
        ids = list(exposure_ids)
        known = {
            r[0]
            for chunk in _chunks(ids, 500)
            for r in self.db.execute(
                f"SELECT exposure_id FROM exposures WHERE exposure_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
        }
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ABError(f"clicks on unknown exposures: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO clicks VALUES (?, ?)", [(i, ts) for i in ids])
        return len(ids)

    def exposure(self, exposure_id: str) -> dict[str, object] | None:
        cur = self.db.execute("SELECT * FROM exposures WHERE exposure_id = ?", (exposure_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def counts(self, name: str) -> tuple[int, int]:
        """(exposures, clicked exposures) so far, without loading the log."""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(EXISTS (SELECT 1 FROM clicks c WHERE c.exposure_id = e.exposure_id)), 0) "
            "FROM exposures e WHERE e.experiment = ?",
            (name,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def exposures(self, name: str) -> pd.DataFrame:
        """One row per exposure with click = 1 if it was clicked (at least once)."""
        return pd.read_sql_query(
            "SELECT e.*, CASE WHEN EXISTS (SELECT 1 FROM clicks c WHERE c.exposure_id = e.exposure_id) "
            "THEN 1 ELSE 0 END AS click FROM exposures e WHERE e.experiment = ? ORDER BY e.ts",
            self.db,
            params=(name,),
        )

    # ---- internals
    def _require(self, name: str, allowed: tuple[str, ...]) -> Experiment:
        exp = self.get(name)
        if exp.status not in allowed:
            raise ABError(f"experiment {name!r} is {exp.status}; this needs it {' or '.join(allowed)}")
        return exp

    def _set_status(
        self, name: str, status: str, allowed: tuple[str, ...], detail: dict[str, object]
    ) -> Experiment:
        self._require(name, allowed)
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE experiments SET status = ? WHERE name = ?", (status, name))
            self._event(name, {"paused": "pause", "stopped": "stop"}.get(status, status), detail)
        return self.get(name)

    def _event(self, name: str, action: str, detail: dict[str, object]) -> None:
        self.db.execute(
            "INSERT INTO events (experiment, at, who, action, detail) VALUES (?,?,?,?,?)",
            (name, _now(), self.actor or who(), action, json.dumps(detail, sort_keys=True)),
        )


def _arms_json(arms: list[Arm]) -> str:
    return json.dumps([{"name": a.name, "model": a.model, "weight": a.weight} for a in arms])


def _chunks(xs: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]
