"""The console's API, called directly: status codes, validation errors, auth, and that each action really
changed the registry, the A/B store or started a run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adflow.console.app import create_app
from adflow.console.auth import TokenConfigError, Tokens
from tests.conftest import ADMIN, ADMIN_TOKEN, OTHER_TOKEN, console_core

BOB = {"Authorization": f"Bearer {OTHER_TOKEN}"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    core: Any = console_core(tmp_path)
    tokens = Tokens.parse([f"alice:{ADMIN_TOKEN}", f"bob:{OTHER_TOKEN}"], "test")
    return {"core": core, "client": TestClient(create_app(core, tokens)), "tmp": tmp_path}


def test_tokens_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# admins\nalice:{ADMIN_TOKEN}\n\nbob:{OTHER_TOKEN}\n")
    t = Tokens.load(f)
    assert t.user(ADMIN_TOKEN) == "alice" and t.user(OTHER_TOKEN) == "bob"
    assert t.user("alice") is None and t.user("") is None and t.user(None) is None
    for bad, says in ((["alice"], "user:token"), (["alice:short"], "shorter"),
                      ([f"a:{ADMIN_TOKEN}", f"b:{ADMIN_TOKEN}"], "already used")):  # fmt: skip
        with pytest.raises(TokenConfigError, match=says):
            Tokens.parse(bad, "x")
    with pytest.raises(TokenConfigError, match="does not exist"):
        Tokens.load(tmp_path / "missing")
    monkeypatch.delenv("ADFLOW_CONSOLE_TOKENS_FILE", raising=False)
    monkeypatch.setenv("ADFLOW_CONSOLE_TOKENS", f"carol:{ADMIN_TOKEN}")
    assert Tokens.load().user(ADMIN_TOKEN) == "carol"
    monkeypatch.delenv("ADFLOW_CONSOLE_TOKENS")
    assert not Tokens.load().configured


def test_reads_need_no_token(env: dict[str, Any]) -> None:
    c = env["client"]
    p = c.get("/api/pipelines").json()
    assert {x["name"] for x in p["pipelines"]} == {"ads_full", "data_check"}
    assert [s["name"] for s in next(x for x in p["pipelines"] if x["name"] == "data_check")["stages"]] == [
        "synth", "ingest", "validate"]  # fmt: skip
    assert p["presets"] == ["tiny", "full"]
    models = c.get("/api/models").json()
    assert models == [{"name": "ctr-ciubm", "aliases": {"champion": 1, "challenger": 2}, "versions": 2,
                       "latest": 2}]  # fmt: skip
    m = c.get("/api/models/ctr-ciubm").json()
    assert m["aliases"] == {"champion": 1, "challenger": 2}
    assert [v["version"] for v in m["versions"]] == [2, 1] and m["versions"][0][
        "gate_reason"
    ] == "candidate 2 passed"
    assert c.get("/api/models/nope").status_code == 404
    assert c.get("/api/runs").json() == [] and c.get("/api/experiments").json() == []
    assert c.get("/api/runs/nope").status_code == 404 and c.get("/api/experiments/nope").status_code == 404
    for page in ("/pipelines", "/models", "/models/ctr-ciubm", "/experiments", "/audit", "/login"):
        r = c.get(page)
        assert r.status_code == 200 and "sign in to make changes" in r.text, page
    r = c.get("/models/nope")
    assert r.status_code == 404 and "no registered model" in r.text  # a page, not a stack trace


def test_mutations_need_a_valid_token_and_are_audited(env: dict[str, Any]) -> None:
    c, core = env["client"], env["core"]
    body = {"reason": "won the A/B test"}
    r = c.post("/api/models/ctr-ciubm/promote", json=body)
    assert r.status_code == 401 and "admin token is required" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = c.post(
        "/api/models/ctr-ciubm/promote", json=body, headers={"Authorization": "Bearer wrong-token-xxxxxxx"}
    )
    assert r.status_code == 403
    c.cookies.set("adflow_token", "not-the-token-either")
    assert c.post("/api/experiments", json={"name": "e1"}).status_code == 403
    c.cookies.clear()
    assert int(core.client.get_model_version_by_alias("ctr-ciubm", "champion").version) == 1  # nothing moved
    assert core.store().find("e1") is None
    log = c.get("/api/audit").json()
    assert [(e["who"], e["action"], e["outcome"][:13]) for e in log] == [
        ("invalid token", "create experiment", "refused (403)"),
        ("invalid token", "promote", "refused (403)"),
        ("anonymous", "promote", "refused (401)"),
    ]
    # a console without tokens is read-only, and says so
    ro = TestClient(create_app(core, Tokens({})))
    r = ro.post("/api/runs", json={"pipeline": "data_check"}, headers=ADMIN)
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    assert "read-only console" in ro.get("/pipelines").text


def test_promote_and_rollback(env: dict[str, Any]) -> None:
    c, core = env["client"], env["core"]
    # validation errors: FastAPI's 422 with the field named, or the registry's refusal in words
    r = c.post("/api/models/ctr-ciubm/promote", json={}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reason"]
    r = c.post("/api/models/ctr-ciubm/promote", json={"reason": "x", "version": 0}, headers=ADMIN)
    assert r.status_code == 422
    r = c.post("/api/models/ctr-ciubm/promote", json={"reason": "try v9", "version": 9}, headers=ADMIN)
    assert r.status_code == 422 and "has no version 9" in r.json()["detail"]
    assert c.post("/api/models/nope/promote", json={"reason": "why not"}, headers=ADMIN).status_code == 404

    r = c.post("/api/models/ctr-ciubm/promote", json={"reason": "won ab-1"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() | {"at": ""} == {"at": "", "who": "alice", "action": "promote", "alias": "champion",
                                     "from_version": 1, "to_version": 2, "reason": "won ab-1", "gate_report": None}  # fmt: skip
    assert int(core.client.get_model_version_by_alias("ctr-ciubm", "champion").version) == 2
    r = c.post("/api/models/ctr-ciubm/rollback", json={"reason": "CTR alert"}, headers=BOB)
    assert r.status_code == 200 and r.json()["to_version"] == 1
    assert int(core.client.get_model_version_by_alias("ctr-ciubm", "champion").version) == 1
    hist = c.get("/api/models/ctr-ciubm").json()["history"]
    assert [(h["who"], h["action"], h["to_version"]) for h in hist[:2]] == [
        ("bob", "rollback", 1),
        ("alice", "promote", 2),
    ]
    assert [(e["who"], e["action"], e["outcome"]) for e in c.get("/api/audit").json()[:2]] == [
        ("bob", "rollback", "ok"), ("alice", "promote", "ok")]  # fmt: skip


def test_experiments_lifecycle_and_results(env: dict[str, Any]) -> None:
    from adflow.ab.store import Exposure

    c, core = env["client"], env["core"]
    assert (
        c.post("/api/experiments", json={"name": "e1", "treatment_weight": 1.5}, headers=ADMIN).status_code
        == 422
    )
    assert c.post("/api/experiments", json={"name": "../e1"}, headers=ADMIN).status_code == 422
    r = c.post("/api/experiments", json={"name": "e1", "treatment_weight": 0.1}, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["router"]["arms"][1] == {"name": "treatment", "model": "alias:challenger", "weight": 0.1}
    r = c.post("/api/experiments", json={"name": "e1"}, headers=ADMIN)
    assert r.status_code == 422 and "already exists" in r.json()["detail"]

    r = c.post("/api/experiments/e1/ramp", json={"weights": {"treatment": 0.5}}, headers=ADMIN)
    assert r.status_code == 200
    # the router reads this store on every request: what it will serve now
    assert [(a.name, a.weight) for a in core.store().get("e1").serving_arms()] == [
        ("control", 0.5),
        ("treatment", 0.5),
    ]
    r = c.post("/api/experiments/e1/ramp", json={"weights": {"other": 0.5}}, headers=ADMIN)
    assert r.status_code == 422 and "no arm" in r.json()["detail"]
    assert c.post("/api/experiments/e1/ramp", json={"weights": {}}, headers=ADMIN).status_code == 422
    assert (
        c.post("/api/experiments/nope/ramp", json={"weights": {"treatment": 0.2}}, headers=ADMIN).status_code
        == 404
    )

    # traffic arrives (as the router logs it, under the weights just ramped to): results and charts appear
    store = core.store()
    now = time.time()
    rows = [Exposure(f"x{i}", now + i, "e1", str(i % 40), "treatment" if i % 2 else "control", "m@1", i, 1, 1)
            for i in range(400)]  # fmt: skip
    store.log_exposures(rows)
    store.log_clicks([f"x{i}" for i in range(0, 400, 7)], now + 500)
    d = c.get("/api/experiments/e1").json()
    assert d["exposures"] == 400 and d["clicks"] == len(range(0, 400, 7))
    assert {a["arm"] for a in d["results"]["arms"]} == {"control", "treatment"} and "srm_p" in d["results"]
    store.log_exposures(
        [Exposure(f"y{i}", now + 600 + i, "e1", str(i), "control", "m@1", i, 1, 1) for i in range(50)]
    )
    again = c.get("/api/experiments/e1").json()["results"]  # the page's refresh sees the new traffic
    assert sum(a["exposures"] for a in again["arms"]) == 450
    assert sum(a["exposures"] for a in d["results"]["arms"]) == 400
    png = c.get("/api/experiments/e1/chart.png")
    assert (
        png.status_code == 200
        and png.headers["content-type"] == "image/png"
        and png.content[:4] == b"\x89PNG"
    )
    page = c.get("/experiments/e1").text
    assert 'id="chart"' in page and "Sample-ratio check" in page

    assert c.post("/api/experiments/e1/pause", headers=BOB).status_code == 200
    assert [a.weight for a in core.store().get("e1").serving_arms()] == [1.0, 0.0]
    assert c.post("/api/experiments/e1/stop", json={}, headers=ADMIN).status_code == 422  # reason required
    r = c.post("/api/experiments/e1/stop", json={"reason": "guardrail"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    r = c.post("/api/experiments/e1/ramp", json={"weights": {"treatment": 0.2}}, headers=ADMIN)
    assert r.status_code == 422 and "is stopped" in r.json()["detail"]
    events = c.get("/api/experiments/e1").json()["events"]
    assert [(e["who"], e["action"]) for e in events] == [("alice", "stop"), ("bob", "pause"), ("alice", "ramp"),
                                                         ("alice", "create")]  # fmt: skip


def test_trigger_validation_and_cancel(env: dict[str, Any]) -> None:
    c, core = env["client"], env["core"]
    for body, says in (({"pipeline": "nope"}, "unknown pipeline"), ({"pipeline": "data_check", "preset": "huge"}, "unknown preset"),
                       ({"pipeline": "data_check", "overrides": ["world.n_users=lots"]}, "n_users"),
                       ({"pipeline": "data_check", "overrides": ["placement.workspace=/tmp/x"]}, "console's placement"),
                       ({"pipeline": "data_check", "overrides": ["world"]}, "section.key=value")):  # fmt: skip
        r = c.post("/api/runs", json=body, headers=ADMIN)
        assert r.status_code == 422 and says in r.json()["detail"], (body, r.text)
    assert c.post("/api/runs", json={"preset": "tiny"}, headers=ADMIN).status_code == 422
    assert c.get("/api/runs").json() == []  # nothing was started

    # a real run, cancelled while its first stage is going: the runner stops cleanly and says so
    r = c.post(
        "/api/runs", json={"pipeline": "data_check", "overrides": ["world.n_users=3000"]}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    rid = r.json()["run_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stages = {s["name"]: s["status"] for s in c.get(f"/api/runs/{rid}").json()["stages"]}
        if stages["synth"] == "running":
            break
        time.sleep(0.5)
    assert stages["synth"] == "running", stages
    assert c.post(f"/api/runs/{rid}/cancel").status_code == 401
    r = c.post(f"/api/runs/{rid}/cancel", headers=ADMIN)
    assert r.status_code == 202 and r.json()["status"] == "cancelling"
    deadline = time.monotonic() + 90
    while (d := c.get(f"/api/runs/{rid}").json())["active"] and time.monotonic() < deadline:
        time.sleep(1)
    assert d["status"] == "cancelled", d
    assert {s["name"]: s["status"] for s in d["stages"]} == {"synth": "cancelled", "ingest": "skipped",
                                                            "validate": "not run"}  # fmt: skip
    assert "cancelled" in c.get(f"/api/runs/{rid}/log").text
    assert c.post(f"/api/runs/{rid}/cancel", headers=ADMIN).status_code == 409
    assert c.post("/api/runs/nope/cancel", headers=ADMIN).status_code == 404
    assert (
        core.client.search_runs(
            [d["mlflow"]["experiment_id"]], f"attributes.run_id = '{d['mlflow']['parent_run_id']}'"
        )[0].info.status
        == "KILLED"
    )


def test_files_stay_inside_the_workspace(env: dict[str, Any]) -> None:
    c, core = env["client"], env["core"]
    inside = core.workspace / "console" / "note.html"
    inside.write_text("<p>hi</p>")
    assert c.get(f"/files{inside}").text == "<p>hi</p>"
    assert c.get("/files/etc/passwd").status_code == 404
    assert c.get(f"/files{core.workspace}/../predictor.pt").status_code == 404


def test_a_slow_backend_gives_an_error_not_a_hung_page(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    core = env["core"]

    def slow() -> list[dict[str, Any]]:
        time.sleep(3)
        return []

    monkeypatch.setattr(core, "models", slow)
    c = TestClient(create_app(core, Tokens({}), timeout_s=0.5))
    r = c.get("/api/models")
    assert r.status_code == 504 and "did not answer within" in r.json()["detail"]
    page = c.get("/models")
    assert page.status_code == 504 and 'id="error"' in page.text and "Registered models" in page.text


def _finish(c: TestClient, rid: str, limit_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while (d := c.get(f"/api/runs/{rid}").json())["active"] and time.monotonic() < deadline:
        time.sleep(1)
    return d


def test_a_failed_validation_names_its_expectations_and_links_the_report(
    env: dict[str, Any], world_copy: Path
) -> None:
    import pandas as pd

    c = env["client"]
    items = pd.read_parquet(world_copy / "items.parquet")
    items.loc[0, "price"] = -1.0
    items.to_parquet(world_copy / "items.parquet", index=False)
    body = {"pipeline": "data_check", "overrides": ["data.source=dataset", f"data.path={world_copy}"]}
    r = c.post("/api/runs", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    d = _finish(c, r.json()["run_id"])
    assert d["status"] == "failed"
    st = {s["name"]: s for s in d["stages"]}
    assert st["ingest"]["status"] == "succeeded" and st["validate"]["status"] == "failed"
    assert any("items.price: range" in f for f in st["validate"]["failures"])
    docs = next(x for x in st["validate"]["links"] if x["label"] == "data_docs")
    assert docs["href"] and c.get(docs["href"]).status_code == 200  # the Data Docs, served by the console
    page = c.get(f"/runs/{d['run_id']}").text
    assert 'class="failures"' in page and "items.price: range" in page and docs["href"] in page


def test_conclude_and_promote_the_winner(env: dict[str, Any]) -> None:
    c, core = env["client"], env["core"]
    assert (
        c.post("/api/experiments", json={"name": "e2", "treatment_weight": 0.5}, headers=ADMIN).status_code
        == 201
    )
    body = {"winner": "nobody", "reason": "lift +4%", "promote": True}
    r = c.post("/api/experiments/e2/conclude", json=body, headers=ADMIN)
    assert r.status_code == 422 and "no arm 'nobody'" in r.json()["detail"]
    assert core.store().get("e2").status == "running"  # a refusal writes nothing
    assert (
        c.post("/api/experiments/e2/conclude", json={"winner": "treatment"}, headers=ADMIN).status_code == 422
    )
    r = c.post("/api/experiments/e2/conclude", json={**body, "winner": "treatment"}, headers=BOB)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["status"] == "concluded" and d["winner"] == "treatment"
    assert d["router"]["arms"] == [{"name": "control", "model": "alias:champion", "weight": 0.0},
                                   {"name": "treatment", "model": "alias:challenger", "weight": 1.0}]  # fmt: skip
    assert d["promotion"]["to_version"] == 2 and d["promotion"]["who"] == "bob"
    assert int(core.client.get_model_version_by_alias("ctr-ciubm", "champion").version) == 2
    assert "won A/B test e2: lift +4%" in c.get("/api/models/ctr-ciubm").json()["history"][0]["reason"]
    r = c.post("/api/experiments/e2/conclude", json={**body, "winner": "treatment"}, headers=ADMIN)
    assert r.status_code == 422 and "concluded" in r.json()["detail"]


# ---------------------------------------------------------------------------- runs' lives, and changes' edges
def _bare_core(tmp: Path) -> Any:
    """A console over a temp workspace with nothing in it (no registry): for what does not need one."""
    from adflow.config import load_settings
    from adflow.console.core import ConsoleCore

    base = [f"placement.workspace={tmp / 'ws'}", f"placement.runs_dir={tmp / 'runs'}"]
    return ConsoleCore(load_settings("tiny", "local", base), "local", base, cwd=Path(__file__).parents[1])


def _launcher(tmp: Path) -> Any:
    from adflow.console.jobs import ConsoleDB, Launcher

    return Launcher(ConsoleDB(tmp / "console.sqlite"), tmp / "logs", tmp / "runs", "local", [])


def _job(rid: str, pid: int | None, status: str = "running", **kw: Any) -> Any:
    from adflow.console.jobs import Job, now

    return Job(rid, "data_check", "tiny", "local", [], "alice", status, pid, kw.pop("exit_code", None),
               kw.pop("started_at", now()), kw.pop("finished_at", None), kw.pop("log", "/nonexistent.log"), **kw)  # fmt: skip


def _until(cond: Any, limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_restarted_console_adopts_a_run_still_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import subprocess
    import sys

    from adflow.console import jobs

    monkeypatch.setattr(jobs, "ADOPT_POLL_S", 0.05, raising=False)
    first = _launcher(tmp_path)
    # a run the last console started (its own session: it outlived that console)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"], start_new_session=True)
    first.db.insert(_job("20990101-000000-adopt0", proc.pid))
    again = _launcher(tmp_path)  # the restart: the run is still going, so it stays running...
    assert again.db.job("20990101-000000-adopt0").status == "running"
    out = tmp_path / "runs" / "20990101-000000-adopt0"
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"status": "succeeded"}))
    proc.wait()
    # ...and is settled from its summary when its process ends (before the fix: "running" for ever)
    _until(lambda: again.db.job("20990101-000000-adopt0").status != "running")
    assert again.db.job("20990101-000000-adopt0").status == "succeeded"


def test_a_pid_given_to_another_process_is_not_the_run(tmp_path: Path) -> None:
    import sqlite3
    import subprocess

    from adflow.console.jobs import ConsoleDB, proc_start_time

    # a console.sqlite from before pid_start: migrated on open, its rows read with pid_start None
    old = tmp_path / "console.sqlite"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE jobs (run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, preset TEXT NOT NULL, "
               "placement TEXT NOT NULL, overrides TEXT NOT NULL, who TEXT NOT NULL, status TEXT NOT NULL, "
               "pid INTEGER, exit_code INTEGER, started_at TEXT NOT NULL, finished_at TEXT, log TEXT NOT NULL)")  # fmt: skip
    db.execute(
        "INSERT INTO jobs VALUES ('r-old','data_check','tiny','local','[]','alice','failed',1,1,'t','t','l')"
    )
    db.commit()
    db.close()
    assert ConsoleDB(old).job("r-old").pid_start is None  # type: ignore[union-attr]

    other = subprocess.Popen(["sleep", "30"], start_new_session=True)  # holds the pid the run once had
    try:
        start = proc_start_time(other.pid)
        assert start is not None
        launcher = _launcher(tmp_path)
        launcher.db.insert(_job("r-reused", other.pid, pid_start=start - 1))
        launcher.db.insert(_job("r-cancel", other.pid, pid_start=start - 1))
        launcher.reconcile()  # the restart: the pid is alive, but not the run's process
        assert launcher.db.job("r-reused").status == "lost"
        launcher.db.update("r-cancel", status="running")
        job, says = launcher.cancel("r-cancel")  # never signals the process that has the pid now
        assert "already ended" in says and job.status == "cancelled"
        time.sleep(0.3)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_run_that_ended_without_a_summary_says_how(tmp_path: Path) -> None:
    import datetime as dt

    core = _bare_core(tmp_path)
    log = tmp_path / "dead.log"
    log.write_text("$ adflow run\n" + "".join(f"line {i}\n" for i in range(40)) + "Killed\n")
    started = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    core.db.insert(_job("20990101-000000-dead00", 4242, "failed", exit_code=-9, log=str(log),
                        started_at=started.isoformat(timespec="seconds"),
                        finished_at=(started + dt.timedelta(seconds=90)).isoformat(timespec="seconds")))  # fmt: skip
    d = core.run("20990101-000000-dead00")
    assert d["status"] == "failed" and not d["active"]
    assert d["duration_s"] == 90  # its own length, not the time since it started
    assert {s["status"] for s in d["stages"]} == {"not run"}
    assert "exit code -9" in d["error"] and d["error"].endswith("line 39\nKilled")
    assert "line 19" not in d["error"]  # the last lines only
    page = TestClient(create_app(core, Tokens({}))).get("/runs/20990101-000000-dead00").text
    assert 'id="run-error"' in page and "exit code -9" in page and "data-final" in page


def test_settling_a_run_twice_keeps_the_first(tmp_path: Path) -> None:
    import subprocess

    launcher = _launcher(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    launcher.db.insert(_job("r-race", dead.pid))
    # the racy order: cancel reads "running", the run ends (its waiter settles it: exit 1), then cancel goes on
    read = launcher.db.job

    def stale(run_id: str) -> Any:
        job = read(run_id)
        launcher.db.job = read
        launcher._finish(run_id, 1)
        return job

    launcher.db.job = stale
    with pytest.raises(ValueError, match="is failed"):
        launcher.cancel("r-race")
    launcher._finish("r-race", None)  # a late second settle (the cancel's or a poller's) changes nothing
    j = launcher.db.job("r-race")
    assert (j.status, j.exit_code) == ("failed", 1)
    # a run that crashes on its own while a cancel is under way is a failure, not a cancellation
    launcher.db.insert(_job("r-crash", dead.pid, "cancelling"))
    launcher._finish("r-crash", 1)
    launcher._finish("r-crash", None)
    j = launcher.db.job("r-crash")
    assert (j.status, j.exit_code) == ("failed", 1)


def test_a_second_cancel_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from adflow.console.jobs import Launcher

    terms = tmp_path / "terms"
    # a run that notes each SIGTERM and goes on (as the runner does while it cleans up)
    script = f"trap 'echo term >> {terms}' TERM; while true; do sleep 0.05; done"
    monkeypatch.setattr(Launcher, "command", lambda self, *a: ["bash", "-c", script])
    core = _bare_core(tmp_path)
    c = TestClient(create_app(core, Tokens.parse([f"alice:{ADMIN_TOKEN}"], "test")))
    rid = c.post("/api/runs", json={"pipeline": "data_check"}, headers=ADMIN).json()["run_id"]
    pid = core.db.job(rid).pid
    try:
        time.sleep(0.3)  # bash has set its trap
        r = c.post(f"/api/runs/{rid}/cancel", headers=ADMIN)
        assert r.status_code == 202 and r.json()["status"] == "cancelling"
        _until(lambda: terms.is_file())
        r = c.post(f"/api/runs/{rid}/cancel", headers=ADMIN)
        time.sleep(0.5)
        assert terms.read_text() == "term\n"  # one SIGTERM: the second cancel sent none
        assert r.status_code == 202 and r.json()["message"].startswith("already cancelling")
    finally:
        os.killpg(pid, signal.SIGKILL)
    _until(lambda: core.db.job(rid).status != "cancelling")
    assert core.db.job(rid).status == "cancelled"


def test_a_slow_change_is_pending_then_audited_as_it_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adflow.console.core import Refused

    core = _bare_core(tmp_path)
    done: list[str] = []

    def slow_promote(name: str, version: Any, alias: str, reason: str, who: str) -> dict[str, Any]:
        time.sleep(1.0)
        done.append(name)
        return {"to_version": 2}

    def slow_refusal(name: str, alias: str, reason: str, who: str) -> dict[str, Any]:
        time.sleep(1.0)
        raise Refused("no earlier champion to roll back to")

    monkeypatch.setattr(core, "promote", slow_promote)
    monkeypatch.setattr(core, "rollback", slow_refusal)
    c = TestClient(create_app(core, Tokens.parse([f"alice:{ADMIN_TOKEN}"], "test"), timeout_s=0.2))
    r = c.post("/api/models/m/promote", json={"reason": "won ab-1"}, headers=ADMIN)
    # not "504, try again": the promotion goes on, and a second one would be a second move
    assert r.status_code == 202 and r.json()["pending"] and "still in progress" in r.json()["detail"]
    assert "try again" not in r.json()["detail"] and not done
    assert core.db.audit_log(1)[0].outcome == "pending"
    _until(lambda: core.db.audit_log(1)[0].outcome != "pending")
    assert done == ["m"] and core.db.audit_log(1)[0].outcome == "ok"
    r = c.post("/api/models/m/rollback", json={"reason": "CTR alert"}, headers=ADMIN)
    assert r.status_code == 202
    _until(lambda: core.db.audit_log(1)[0].outcome != "pending")
    assert core.db.audit_log(1)[0].outcome == "refused (422): no earlier champion to roll back to"


def test_a_change_made_with_the_cookie_must_come_from_the_console(tmp_path: Path) -> None:
    core = _bare_core(tmp_path)
    c = TestClient(create_app(core, Tokens.parse([f"alice:{ADMIN_TOKEN}"], "test")))
    c.cookies.set("adflow_token", ADMIN_TOKEN)
    page = {"X-Adflow-Console": "1", "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    # another page on the same host (another port: same site, so SameSite=Strict still sends the cookie)
    for headers, says in (({}, "X-Adflow-Console"), ({**page, "Origin": "http://127.0.0.1:9000"}, "another origin"),
                          ({**page, "Sec-Fetch-Site": "same-site"}, "same-site request")):  # fmt: skip
        r = c.post("/api/experiments/e1/pause", headers=headers)
        assert r.status_code == 403 and says in r.json()["detail"], (headers, r.text)
    r = c.post("/api/runs", json={"pipeline": "data_check"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and not core.db.jobs()
    assert (
        core.db.audit_log(1)[0].outcome.startswith("refused (403)") and core.db.audit_log(1)[0].who == "alice"
    )
    # the console's own page gets through (to the A/B store's answer: no such experiment), and so does a
    # Bearer-token client, which no other site's page can make a browser send
    assert c.post("/api/experiments/e1/pause", headers=page).status_code == 404
    c.cookies.clear()
    assert c.post("/api/experiments/e1/pause", headers=ADMIN).status_code == 404
    # signing in: only from the console's own form
    r = c.post("/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://127.0.0.1:9000"},
               follow_redirects=False)  # fmt: skip
    assert r.status_code == 403 and "adflow_token" not in r.cookies
    r = c.post("/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://testserver"},
               follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and "adflow_token" in r.cookies
