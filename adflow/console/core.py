"""What the console does, as plain functions over the platform's own modules: no web code here.

Every action is the CLI's: runs are `adflow run` (see jobs.py), promotions and rollbacks are `adflow.registry`'s,
experiments are `adflow.ab.store`'s, results are `adflow.ab.analysis` + `adflow.ab.report`'s. The web layer
(app.py) adds sign-in, the audit log, timeouts and pages.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adflow.config import WHAT_PRESETS, ConfigError, Settings, load_settings, parse_override
from adflow.console.jobs import ACTIVE, ConsoleDB, Job, Launcher, summary_of

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LOG_TAIL_LINES = 200
NO_SUMMARY_LOG_LINES = 20  # the error shown for a run that ended without a summary quotes its log's end


class NotFound(LookupError):
    pass


class Refused(ValueError):
    """A request the platform refuses (bad settings, a move the registry or the A/B store will not make)."""


class Conflict(ValueError):
    """The request is fine but not now (cancel a finished run)."""


@dataclass
class Link:
    label: str
    href: str | None  # None: shown as text (a folder, or a file outside what the console serves)
    text: str


def _log_key(store: Any, e: Any, n: int, clicks: int) -> str:
    """What an experiment's analysis depends on: its log's size, its arms and status, and the stretch served
    under the current weights (a pause and a ramp back to the same weights move it)."""
    return json.dumps([n, clicks, [vars(a) for a in e.arms], e.status, store.weight_period(e.name)])


def _ts(ms: int | None) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds") if ms else ""


class ConsoleCore:
    def __init__(
        self,
        settings: Settings,
        placement: str,
        base_overrides: list[str],
        mlflow_ui: str | None = None,
        router_url: str | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.settings = settings.resolved()
        p = self.settings.placement
        self.placement = placement
        self.base_overrides = list(base_overrides)
        self.workspace = p.workspace_path()
        self.runs_dir = Path(p.runs_dir)
        self.tracking_uri = p.tracking_uri()
        uri = self.tracking_uri
        self.mlflow_ui = (
            mlflow_ui or (uri if uri.startswith(("http://", "https://")) else None) or ""
        ).rstrip("/") or None
        self.router_url = router_url.rstrip("/") if router_url else None
        self.db = ConsoleDB(self.workspace / "console" / "console.sqlite")
        self.launcher = Launcher(self.db, self.workspace / "console" / "logs", self.runs_dir, placement,
                                 self.base_overrides, cwd)  # fmt: skip
        self._client: Any = None
        self._analysed: dict[str, tuple[str, dict[str, Any]]] = {}  # experiment -> (log key, results)

    # ------------------------------------------------------------------ shared
    @property
    def client(self) -> Any:
        if self._client is None:
            from adflow.tracking import client

            self._client = client(self.tracking_uri)
        return self._client

    def roots(self) -> list[Path]:
        """Folders whose files the console serves (Data Docs, reports, plots): the workspace and the runs."""
        return [self.workspace.resolve(), self.runs_dir.resolve()]

    def servable(self, path: str | Path) -> Path | None:
        p = Path(path).resolve()
        if p.is_file() and any(p.is_relative_to(r) for r in self.roots()):
            return p
        return None

    def link(self, label: str, value: str) -> Link:
        if value.startswith("models:/"):
            name = value[len("models:/") :].partition("/")[0]
            return Link(label, f"/models/{name}", value)
        if value.startswith(("http://", "https://")):
            return Link(label, value, value)
        p = Path(value)
        if p.is_dir() and (p / "index.html").is_file():
            p = p / "index.html"
        ok = self.servable(p)
        return Link(label, f"/files{ok}" if ok else None, value)

    def mlflow_run_url(self, experiment_id: str, run_id: str) -> str | None:
        return f"{self.mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}" if self.mlflow_ui else None

    # ------------------------------------------------------------------ pipelines and runs
    def pipelines(self) -> list[dict[str, Any]]:
        from pipelines import PIPELINES

        out = []
        for name, ref in PIPELINES.items():
            module = importlib.import_module(ref.split(":")[0])
            doc = (module.__doc__ or "").strip().splitlines()[0].removeprefix(f"{name}:").strip()
            stages = [{"name": s.name, "doc": s.doc, "branch_of": s.branch_of} for s in module.STAGES]
            out.append({"name": name, "doc": doc, "stages": stages})
        return out

    def presets(self) -> list[str]:
        return list(WHAT_PRESETS)

    def check_trigger(self, pipeline: str, preset: str, overrides: list[str]) -> Settings:
        """Refuse a run that `adflow run` would refuse, before anything starts."""
        from pipelines import PIPELINES

        if pipeline not in PIPELINES:
            raise Refused(f"unknown pipeline {pipeline!r}: {' | '.join(PIPELINES)}")
        if preset not in WHAT_PRESETS:
            raise Refused(f"unknown preset {preset!r}: {' | '.join(WHAT_PRESETS)}")
        for o in overrides:
            try:
                parts, _ = parse_override(o)
            except ConfigError as e:
                raise Refused(str(e)) from None
            if parts[0] == "placement":
                raise Refused(
                    f"{o!r}: where runs go is the console's placement ({self.placement}); "
                    "start the console with another --placement to change it"
                )
        try:
            return load_settings(preset, self.placement, [*self.base_overrides, *overrides])
        except ConfigError as e:
            raise Refused(str(e)) from None

    def trigger(self, pipeline: str, preset: str, overrides: list[str], who: str) -> Job:
        self.check_trigger(pipeline, preset, overrides)
        return self.launcher.start(pipeline, preset, overrides, who)

    def cancel(self, run_id: str) -> dict[str, Any]:
        try:
            job, message = self.launcher.cancel(run_id)
            return {**job.to_dict(), "message": message}
        except KeyError:
            raise NotFound(f"no run {run_id!r} started from this console") from None
        except ValueError as e:
            raise Conflict(str(e)) from None

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        """Runs started here and runs found in the runs folder (`make run`, the CLI), newest first."""
        jobs = {j.run_id: j for j in self.db.jobs()}
        found = []
        if self.runs_dir.is_dir():
            found = sorted(
                (
                    d.name
                    for d in self.runs_dir.iterdir()
                    if (d / "summary.json").is_file() and not d.is_symlink()
                ),
                reverse=True,
            )[:limit]
        out = []
        for rid in sorted(set(found) | set(jobs), reverse=True)[:limit]:
            s = summary_of(self.runs_dir, rid)
            j = jobs.get(rid)
            status = j.status if j and (j.status in ACTIVE or s is None) else (s or {}).get("status", "?")
            out.append(
                {
                    "run_id": rid,
                    "pipeline": (s or {}).get("pipeline") or (j.pipeline if j else "?"),
                    "preset": (s or {}).get("preset") or (j.preset if j else "?"),
                    "status": status,
                    "started_at": (s or {}).get("started_at") or (j.started_at if j else ""),
                    "duration_s": (s or {}).get("duration_s"),
                    "who": j.who if j else "cli",
                }
            )
        return out

    def run(self, run_id: str) -> dict[str, Any]:
        if not NAME.fullmatch(run_id):
            raise NotFound(f"no run {run_id!r}")
        job = self.db.job(run_id)
        summary = summary_of(self.runs_dir, run_id)
        if job is None and summary is None:
            raise NotFound(f"no run {run_id!r}")
        live = job is not None and job.status in ACTIVE
        if summary is not None and not live:
            stages, exp_id = summary["stages"], summary["mlflow"].get("experiment_id", "")
            parent, status = summary["mlflow"].get("parent_run_id", ""), summary["status"]
            pipeline, preset = summary["pipeline"], summary["preset"]
            duration, error = summary.get("duration_s"), summary.get("error")
        elif live:
            assert job is not None
            stages, exp_id, parent = self._live_stages(job)
            status, pipeline, preset, error = job.status, job.pipeline, job.preset, None
            started = dt.datetime.fromisoformat(job.started_at)
            duration = (dt.datetime.now(dt.UTC) - started).total_seconds()
        else:
            # ended without a summary (killed, crashed before the runner could write one): what the console
            # kept is its exit code and its log
            assert job is not None
            stages, exp_id, parent = self._blank_stages(job, "not run"), "", ""
            status, pipeline, preset, error = job.status, job.pipeline, job.preset, self._no_summary(job)
            started = dt.datetime.fromisoformat(job.started_at)
            ended = dt.datetime.fromisoformat(job.finished_at or job.started_at)
            duration = (ended - started).total_seconds()
        rows = []
        for st in stages:
            links = [self.link(k, v) for k, v in (st.get("artifacts") or {}).items()]
            rows.append({**st, "links": [asdict(x) for x in links],
                         "mlflow_url": self.mlflow_run_url(exp_id, st["mlflow_run_id"]) if st.get("mlflow_run_id") else None})  # fmt: skip
        return {
            "run_id": run_id,
            "pipeline": pipeline,
            "preset": preset,
            "status": status,
            "active": live,
            "duration_s": duration,
            "error": error,
            "who": job.who if job else "cli",
            "overrides": job.overrides if job else [],
            "stages": rows,
            "mlflow": {
                "experiment_id": exp_id,
                "parent_run_id": parent,
                "url": self.mlflow_run_url(exp_id, parent) if parent else None,
            },
            "log": self.log_tail(run_id) if job else None,
            "summary_path": str(self.runs_dir / run_id / "summary.json") if summary else None,
        }

    @staticmethod
    def _blank_stages(job: Job, status: str) -> list[dict[str, Any]]:
        from pipelines import PIPELINES

        module = importlib.import_module(PIPELINES[job.pipeline].split(":")[0])
        return [{"name": s.name, "status": status, "duration_s": None, "metrics": {}, "artifacts": {},
                 "error": None, "failures": [], "note": None, "mlflow_run_id": None} for s in module.STAGES]  # fmt: skip

    def _no_summary(self, job: Job) -> str:
        code = (
            f"exit code {job.exit_code}"
            if job.exit_code is not None
            else "exit code unknown: the console that started it had been restarted"
        )
        tail = self.log_tail(job.run_id, NO_SUMMARY_LOG_LINES).strip()
        return f"The run ended without writing a summary ({code}). " + (
            f"Last lines of its log:\n{tail}" if tail else "Its log is empty."
        )

    def _live_stages(self, job: Job) -> tuple[list[dict[str, Any]], str, str]:
        """Per-stage status while a run goes: its MLflow child runs (each stage logs when it starts and ends)."""
        from adflow.summary import stage_summaries
        from adflow.tracking import PIPELINE_RUN_TAG, STAGE_TAG
        from pipelines import PIPELINES

        module = importlib.import_module(PIPELINES[job.pipeline].split(":")[0])
        blank = self._blank_stages(job, "waiting")
        exp = self.client.get_experiment_by_name(self.settings.placement.mlflow_experiment)
        if exp is None:
            return blank, "", ""
        runs = self.client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{job.run_id}'", max_results=100
        )
        parent = next((r for r in runs if STAGE_TAG not in r.data.tags), None)
        if parent is None:
            return blank, exp.experiment_id, ""
        stages = [
            asdict(s)
            for s in stage_summaries(self.client, exp.experiment_id, parent.info.run_id, module.STAGES)
        ]
        for s in stages:
            if s["status"] == "not run":
                s["status"] = "waiting"
        return stages, exp.experiment_id, parent.info.run_id

    def log_tail(self, run_id: str, lines: int = LOG_TAIL_LINES) -> str:
        job = self.db.job(run_id)
        if job is None:
            raise NotFound(f"no run {run_id!r} started from this console")
        try:
            text = Path(job.log).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ models
    def models(self) -> list[dict[str, Any]]:
        out = []
        for m in self.client.search_registered_models(max_results=200):
            versions = self.client.search_model_versions(f"name = '{m.name}'")
            out.append({"name": m.name, "aliases": {a: int(v) for a, v in (m.aliases or {}).items()}, "versions": len(versions),
                        "latest": max((int(v.version) for v in versions), default=None)})  # fmt: skip
        return sorted(out, key=lambda x: x["name"])

    def model(self, name: str) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        from adflow.registry import history

        try:
            m = self.client.get_registered_model(name)
        except MlflowException:
            raise NotFound(f"no registered model {name!r}") from None
        aliases = {a: int(v) for a, v in (m.aliases or {}).items()}
        by_version: dict[int, list[str]] = {}
        for a, v in aliases.items():
            by_version.setdefault(v, []).append(a)
        versions = []
        for v in sorted(self.client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)):
            tags = dict(v.tags or {})
            report = tags.get("gate_report")
            versions.append(
                {
                    "version": int(v.version),
                    "created_at": _ts(v.creation_timestamp),
                    "run_id": v.run_id,
                    "aliases": sorted(by_version.get(int(v.version), [])),
                    "gate_reason": tags.get("gate_reason", ""),
                    "gate_report": asdict(self.link("gate report", report)) if report else None,
                    "tags": {k: val for k, val in tags.items() if k not in ("gate_report", "gate_reason")},
                }
            )
        moves = [asdict(x) for x in reversed(history(self.client, name))]
        return {"name": name, "aliases": aliases, "versions": versions, "history": moves,
                "mlflow_url": f"{self.mlflow_ui}/#/models/{name}" if self.mlflow_ui else None}  # fmt: skip

    def promote(self, name: str, version: int | None, alias: str, reason: str, who: str) -> dict[str, Any]:
        from adflow import registry

        self.model(name)  # 404 before a refusal about versions
        if not NAME.fullmatch(alias):
            raise Refused(f"alias {alias!r}: letters, digits, '.', '-' and '_' only")
        return asdict(
            self._registry(lambda: registry.promote(self.tracking_uri, name, reason, version, alias, by=who))
        )

    def rollback(self, name: str, alias: str, reason: str, who: str) -> dict[str, Any]:
        from adflow import registry

        self.model(name)
        return asdict(
            self._registry(lambda: registry.rollback(self.tracking_uri, name, reason, alias, by=who))
        )

    @staticmethod
    def _registry(fn: Any) -> Any:
        from mlflow.exceptions import MlflowException

        from adflow.registry import RegistryError

        try:
            return fn()
        except (RegistryError, MlflowException) as e:
            raise Refused(getattr(e, "message", None) or str(e)) from None

    # ------------------------------------------------------------------ experiments
    def store(self, who: str | None = None) -> Any:
        from adflow.ab.store import ABStore, default_store_path

        return ABStore(default_store_path(self.workspace), actor=who)

    def _ab(self, fn: Any, who: str | None = None) -> Any:
        from adflow.ab.store import ABError

        store = self.store(who)
        try:
            return fn(store)
        except ABError as e:
            if str(e).startswith("no experiment"):
                raise NotFound(str(e)) from None
            raise Refused(str(e)) from None
        except ValueError as e:
            raise Refused(str(e)) from None
        finally:
            store.close()

    def experiments(self) -> list[dict[str, Any]]:
        def rows(store: Any) -> list[dict[str, Any]]:
            out = []
            for e in reversed(store.experiments()):
                n, clicks = store.counts(e.name)
                out.append({"name": e.name, "status": e.status, "winner": e.winner, "created_at": e.created_at,
                            "arms": [vars(a) for a in e.arms], "exposures": n, "clicks": clicks})  # fmt: skip
            return out

        out: list[dict[str, Any]] = self._ab(rows)
        return out

    def experiment(self, name: str) -> dict[str, Any]:
        def detail(store: Any) -> dict[str, Any]:
            e = store.get(name)
            n, clicks = store.counts(name)
            return {
                "name": e.name,
                "status": e.status,
                "winner": e.winner,
                "metric": e.metric,
                "min_sample": e.min_sample,
                "created_at": e.created_at,
                "control": e.control,
                "arms": [vars(a) for a in e.arms],
                # exactly what the router serves for this experiment now (it reads the same store per request)
                "router": {"status": e.status, "arms": [vars(a) for a in e.serving_arms()]},
                "exposures": n,
                "clicks": clicks,
                "events": list(reversed(store.events(name))),
                "results": self._results(store, e, n, clicks) if n else None,
            }

        out: dict[str, Any] = self._ab(detail)
        out["router_live"] = self.router_status()
        return out

    def _results(self, store: Any, e: Any, n: int, clicks: int) -> dict[str, Any]:
        """The analysis of the log as it stands. The live page asks every few seconds: it is recomputed only
        when the log or the experiment has changed (reading a long log and the mSPRT path is not free)."""
        from adflow.ab.analysis import analyse

        key = _log_key(store, e, n, clicks)
        cached = self._analysed.get(e.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        a = analyse(store.exposures(e.name), {x.name: x.weight for x in e.arms}, e.control, e.name,
                    srm_window=store.weight_period(e.name), min_sample=e.min_sample)  # fmt: skip
        out: dict[str, Any] = json.loads(json.dumps(a.to_dict(), default=float))
        out.pop("p_path", None)
        self._analysed[e.name] = (key, out)
        return out

    def chart(self, name: str) -> Path:
        """The A/B report's plots (CTR over time, lift with interval, share vs weight, p-value path) for the
        experiment's log as it stands; redrawn only when the log has grown."""

        def draw(store: Any) -> Path:
            from adflow.ab.analysis import analyse
            from adflow.ab.report import write_report

            e = store.get(name)
            n, clicks = store.counts(name)
            if n == 0:
                raise Conflict(f"experiment {name!r} has no exposures yet")
            out = self.workspace / "console" / "ab" / name
            stamp = out / "stamp.json"
            key = _log_key(store, e, n, clicks)
            if (out / "ab.png").is_file() and stamp.is_file() and stamp.read_text() == key:
                return out / "ab.png"
            ex = store.exposures(name)
            a = analyse(ex, {x.name: x.weight for x in e.arms}, e.control, name,
                        srm_window=store.weight_period(name), min_sample=e.min_sample)  # fmt: skip
            write_report(a, ex, out)
            stamp.write_text(key)
            return out / "ab.png"

        out: Path = self._ab(draw)
        return out

    def create_experiment(
        self, name: str, control: str, treatment: str, treatment_weight: float, metric: str, min_sample: int,
        who: str,
    ) -> dict[str, Any]:  # fmt: skip
        from adflow.ab.assign import Arm

        if not NAME.fullmatch(name):
            raise Refused(f"experiment name {name!r}: letters, digits, '.', '-' and '_' only (max 64)")
        arms = [Arm("control", control, 1 - treatment_weight), Arm("treatment", treatment, treatment_weight)]
        self._ab(lambda s: s.create(name, arms, metric, min_sample), who)
        return self.experiment(name)

    def ramp(self, name: str, weights: dict[str, float], who: str) -> dict[str, Any]:
        self._ab(lambda s: s.ramp(name, weights), who)
        return self.experiment(name)

    def pause(self, name: str, who: str) -> dict[str, Any]:
        self._ab(lambda s: s.pause(name), who)
        return self.experiment(name)

    def stop(self, name: str, reason: str, who: str) -> dict[str, Any]:
        self._ab(lambda s: s.stop(name, reason), who)
        return self.experiment(name)

    def conclude(self, name: str, winner: str, reason: str, promote: bool, who: str) -> dict[str, Any]:
        """End the experiment with a winner; with `promote`, the winner's model becomes the champion."""
        from mlflow.exceptions import MlflowException

        from adflow.ab.conclude import conclude

        def act(store: Any) -> Any:
            try:
                return conclude(store, name, winner, reason, self.tracking_uri, self.settings.registry.model_name,
                                promote, by=who)  # fmt: skip
            except MlflowException as e:
                raise Refused(e.message) from None

        done = self._ab(act, who)
        out = self.experiment(name)
        out["promotion"] = asdict(done.move) if done.move else None
        return out

    def router_status(self) -> dict[str, Any] | None:
        """A running router's own answer (`adflow serve`), when the console was given its address."""
        if not self.router_url:
            return None
        import httpx

        try:
            r = httpx.post(f"{self.router_url}/status", json={}, timeout=2.0)
            r.raise_for_status()
            out: dict[str, Any] = {"url": self.router_url, "ok": True, "status": r.json()}
        except (httpx.HTTPError, ValueError) as e:
            out = {"url": self.router_url, "ok": False, "error": f"{type(e).__name__}: {e}"}
        return out

    # ------------------------------------------------------------------ audit
    def audit(self, limit: int = 500) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.db.audit_log(limit)]
