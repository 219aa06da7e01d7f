"""Serving and the online A/B split, through the real BentoML stack on loopback.

One stack for the module: the small world's Feast features (SQLite online store), two registered CTR models
(one trained on flipped labels as champion, a trained CiUBM as challenger: truly better in the world's ground
truth, which the test checks), the
router in front of ranker and creative services, the traffic simulator clicking from the ground truth.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from adflow import registry
from adflow.ab.analysis import analyse
from adflow.ab.assign import Arm
from adflow.ab.store import ABStore
from adflow.tracking import client, ensure_experiment
from tests.conftest import ADMIN, ADMIN_TOKEN, small_settings

NAME = "ctr-serving-test"


@pytest.fixture(scope="module")
def stack(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from components.features.build.core import build
    from components.training.ctr.core import fit_in_process

    root = tmp_path_factory.mktemp("serving")
    s = small_settings(root).resolved()
    feats = root / "features"
    build(s, small_world, feats)
    uri = s.placement.tracking_uri()
    c = client(uri)
    exp = ensure_experiment(c, "serving-test", s.placement.artifact_root())
    versions = []
    for invert in (True, False):  # champion: trained to be wrong; challenger: trained
        path = root / f"model-{invert}.pt"
        torch.save(fit_in_process(s, feats, epochs=5, flip_labels=invert), path)
        run = c.create_run(exp, run_name=f"inverted-{invert}")
        versions.append(registry.register(uri, run.info.run_id, str(path), NAME, {}, ["torch==2.13.0"]))
    registry.move_alias(c, NAME, registry.CHAMPION, versions[0], "test", "register")
    registry.move_alias(c, NAME, registry.CHALLENGER, versions[1], "test", "register")
    return {"settings": s, "dataset": small_world, "root": root, "versions": versions}


async def _serve(app: Any) -> tuple[Any, int]:
    """An aiohttp app on a free loopback port: (its runner, to clean up; the port)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def _config(stack: dict[str, Any], experiment: str | None) -> Any:
    from serving.core import ServeConfig

    s = stack["settings"]
    return ServeConfig(
        s.placement.model_dump_json(),
        str(stack["dataset"]),
        NAME,
        ab_store=str(stack["root"] / "ab.sqlite"),
        experiment=experiment,
        preload=[f"version:{v}" for v in stack["versions"]],
    )


def _console(stack: dict[str, Any], router_url: str) -> Any:
    """The web console over the same A/B store as the router (its workspace holds ab.sqlite), showing the router."""
    from fastapi.testclient import TestClient

    from adflow.console.app import create_app
    from adflow.console.auth import Tokens
    from adflow.console.core import ConsoleCore

    s = small_settings(stack["root"], f"placement.workspace={stack['root']}")
    core = ConsoleCore(s, "local", [], router_url=router_url)
    return TestClient(create_app(core, Tokens.parse([f"alice:{ADMIN_TOKEN}"], "test")))


def test_ranker_core_in_process(stack: dict[str, Any]) -> None:
    """Unknown users and cold-start items are served; ids outside the catalogue come back unranked."""
    from serving.core import BadRequest, ModelRef, Ranker, RankRequest

    s = stack["settings"]
    r = Ranker(s.placement, stack["dataset"], NAME)
    items = list(range(1, 31))
    out = r.rank([RankRequest(1, items, "challenger"), RankRequest(10**9, [*items, 10**7], "version:1")])
    assert [o.model_version for o in out] == stack["versions"][::-1]  # challenger, then version 1
    assert {x.item_id for x in out[0].ranked} == set(items) and out[0].unranked == []
    assert out[1].unranked == [10**7] and len(out[1].ranked) == 30
    scores = [x.score for x in out[0].ranked]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0 and max(scores) < 1
    vocab = r.pool.get(ModelRef.parse("challenger"))[1].encoder.items
    assert {x.item_id for x in out[0].ranked if x.cold} == {i for i in items if i not in vocab}
    cr = r.catalogue.creatives
    for x in out[0].ranked:  # each item's best creative is one of its own
        assert cr.loc[cr["creative_id"] == x.creative_id, "item_id"].item() == x.item_id
    with pytest.raises(BadRequest, match="duplicates"):
        r.rank([RankRequest(1, [1, 1], "champion")])
    with pytest.raises(BadRequest, match="no alias"):
        r.rank([RankRequest(1, [1], "nosuchalias")])


def test_rank_with_no_candidate_in_the_catalogue(stack: dict[str, Any]) -> None:
    """A batch none of whose candidates is in the catalogue has nothing to score: every id comes back unranked
    (Feast's online read of zero items would raise, a 500 through the router); beside a request with known
    items, each request still gets its own answer."""
    from serving.core import Ranker, RankRequest

    r = Ranker(stack["settings"].placement, stack["dataset"], NAME)
    unknown = [10**7, 10**7 + 1]
    (out,) = r.rank([RankRequest(1, unknown, "champion")])
    assert out.ranked == [] and out.unranked == unknown and out.model_version == stack["versions"][0]
    mixed = r.rank([RankRequest(1, unknown, "champion"), RankRequest(2, [1, 2, 10**7], "champion")])
    assert mixed[0].ranked == [] and mixed[0].unranked == unknown
    assert {x.item_id for x in mixed[1].ranked} == {1, 2} and mixed[1].unranked == [10**7]


class _AlwaysClicks:
    """A world whose users click everything they are shown (the simulator's ClickModel interface)."""

    user_ids = np.arange(10)

    def p_click(
        self, users: np.ndarray, items: np.ndarray, creatives: np.ndarray, pos: np.ndarray
    ) -> np.ndarray:
        return np.ones(len(users))


def test_simulate_counts_click_transport_errors() -> None:
    """A /click that never answers (the connection drops) is counted as click:error, like /rank's transport
    errors, instead of escaping the simulation; server_errors() counts it."""
    from aiohttp import web

    from serving.simulate import _run

    async def go() -> Any:
        async def rank(request: web.Request) -> web.Response:
            body = await request.json()
            items = [
                {"item_id": i, "creative_id": 1, "position": k + 1, "exposure_id": f"{i}-{k}"}
                for k, i in enumerate(body["item_ids"][: body["k"]])
            ]
            return web.json_response({"arm": "control", "items": items})

        async def click(request: web.Request) -> web.Response:
            assert request.transport is not None
            request.transport.close()  # a crashed or unreachable router: no answer at all
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/rank", rank)
        app.router.add_post("/click", click)
        runner, port = await _serve(app)
        try:
            return await _run(f"http://127.0.0.1:{port}", _AlwaysClicks(), np.arange(50), 0.0, 6, 1000.0, 30.0,
                              2, 5, 2, 0)  # type: ignore[arg-type]  # fmt: skip
        finally:
            await runner.cleanup()

    res = asyncio.run(go())
    assert res.status == {"200": 6, "click:error": 6} and res.clicks == 0 and res.exposures == 12
    assert res.server_errors() == 6 and any(e.startswith("/click") for e in res.errors)


def test_explain_says_which_creative_the_rationale_calls_a_and_b(monkeypatch: pytest.MonkeyPatch) -> None:
    """The creative service's /explain with a Creative4U selector: the selector's rationale speaks of slots
    "A" and "B", so the answer says which creative was which in the explained game. The service's method runs
    on a stand-in for its CTR core and its loaded selector (neither needed for the answer's shape)."""
    from types import SimpleNamespace

    import pandas as pd

    from adflow.creative import choose
    from adflow.creative import selector as S
    from serving.service import Creative

    quality = {10: 3, 20: 2, 30: 1}

    def generate(m: Any, p: Any, prompts: Any, images: Any, *a: Any, **k: Any) -> list[str]:
        wins = ["A" if quality[x] > quality[y] else "B" for x, y in images]
        return [
            f"<think>A: {x}. B: {y}. favours {w}.</think><answer>{w}</answer>"
            for (x, y), w in zip(images, wins, strict=True)
        ]

    monkeypatch.setattr(S, "generate", generate)
    ids = [30, 10, 20]
    table = pd.DataFrame(
        {"creative_id": ids, "score": [0.3, 0.2, 0.1], "prominence": [0.5, 0.7, 0.6], "clutter": [0.2] * 3,
         "legibility": [0.5] * 3, "theme": ["warm"] * 3}
    )  # fmt: skip
    chooser = SimpleNamespace(
        choose=lambda u, i: choose.tournament(None, None, "t", "u", [(c, c) for c in ids], 8)
    )
    service = SimpleNamespace(_creatives=lambda *a: (4, table), chooser=chooser)
    got = Creative.inner.explain.func(service, user_id=1, item_id=2)
    assert got["selector"] == "creative4u" and got["creative_id"] == 10 and got["fast_scorer_choice"] == 30
    assert got["rationale"] == "A: 10. B: 20. favours A." and got["rationale_slots"] == {"A": 10, "B": 20}


def test_session_fix_stops_in_flight_failures() -> None:
    """BentoML's dependency client closes its session under in-flight requests (every 100 requests); the fix
    retires it after the timeout instead. Against a real aiohttp server: failures without, none with."""
    from aiohttp import web

    from serving.session_fix import graceful_manager, upstream_manager

    async def failures(cls: type) -> int:
        async def handler(_: web.Request) -> web.Response:
            await asyncio.sleep(0.02)
            return web.json_response({"ok": 1})

        app = web.Application()
        app.router.add_get("/x", handler)
        runner, port = await _serve(app)
        m = cls(url=f"http://127.0.0.1:{port}", timeout=5, headers={}, max_requests=100)
        bad = 0

        async def one() -> None:
            nonlocal bad
            session = await m.get_session()
            try:
                async with session.get("/x") as resp:
                    await resp.json()
            except (Exception, asyncio.CancelledError):
                bad += 1

        await asyncio.gather(*[one() for _ in range(400)])
        await m.close()
        await runner.cleanup()
        return bad

    # upstream's class, not whatever proxy2 holds: importing serving.service (another test does) installs the fix
    assert asyncio.run(failures(graceful_manager(upstream_manager()))) == 0
    assert asyncio.run(failures(upstream_manager())) > 0  # the upstream bug, still there


def _arms(url: str, users: list[int]) -> dict[int, tuple[str, list[str]]]:
    """Each user's arm and the exposure ids of their slate (8 requests in flight)."""

    async def go() -> dict[int, tuple[str, list[str]]]:
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=url, timeout=60) as h:

            async def one(u: int) -> tuple[int, tuple[str, list[str]]]:
                async with sem:
                    r = await h.post("/rank", json={"user_id": u, "item_ids": list(range(1, 41)), "k": 3})
                assert r.status_code == 200, r.text
                body = r.json()
                return u, (body["arm"], [x["exposure_id"] for x in body["items"]])

            return dict(await asyncio.gather(*[one(u) for u in users]))

    return asyncio.run(go())


def test_router_ab_end_to_end(stack: dict[str, Any]) -> None:
    """Sticky through a 10% -> 50% ramp and a restart; a truly better challenger wins; malformed requests get
    4xx naming the problem; zero 5xx at concurrency 16; every exposure logged matches a response."""
    from serving.launch import serve
    from serving.simulate import simulate

    store = ABStore(stack["root"] / "ab.sqlite")
    v_champ, v_chall = stack["versions"]
    arms = [Arm("champion", f"version:{v_champ}", 0.9), Arm("challenger", f"version:{v_chall}", 0.1)]
    store.create("e2e", arms, min_sample=100)
    users = list(range(1, 121))
    seen: list[str] = []
    with serve(_config(stack, "e2e"), stack["root"] / "server") as url:
        before = _arms(url, users)
        # the ramp is made from the web console; the router reads the experiment per request (no restart),
        # and the console shows the running router's own answer to /status
        console = _console(stack, url)
        r = console.post("/api/experiments/e2e/ramp", json={"weights": {"challenger": 0.5}}, headers=ADMIN)
        assert r.status_code == 200, r.text
        live = console.get("/api/experiments/e2e").json()["router_live"]
        assert live["ok"] and live["status"]["experiment"] == "e2e"
        assert [(a["name"], a["weight"]) for a in live["status"]["arms"]] == [
            ("champion", 0.5),
            ("challenger", 0.5),
        ]
        after = _arms(url, users)
        with httpx.Client(base_url=url, timeout=60) as h:
            for bad, says in (
                ({"user_id": 1, "item_ids": []}, "item_ids"),
                ({"user_id": "x", "item_ids": [1]}, "user_id"),
                ({"user_id": 1, "item_ids": [1, 1]}, "duplicates"),
                ({"item_ids": [1]}, "user_id"),
                ({"user_id": 1, "item_ids": [1], "k": 0}, "k"),
            ):
                r = h.post("/rank", json=bad)
                assert 400 <= r.status_code < 500 and says in r.text, (bad, r.status_code, r.text)
            r = h.post("/click", json={"exposure_ids": ["nope"]})
            assert r.status_code == 400 and "unknown exposures" in r.text
            shown = h.post("/rank", json={"user_id": 3, "item_ids": list(range(1, 41)), "k": 2}).json()
            why = h.post("/explain", json={"exposure_id": shown["items"][0]["exposure_id"]}).json()
            assert why["creative_id"] == shown["items"][0]["creative_id"] and "rationale" in why
        sim = simulate(url, stack["dataset"], requests=900, rate_per_s=200, duration_s=120, concurrency=16,
                       candidates=60, k=10, seed=1)  # fmt: skip
        seen += [i for d in (before, after) for _, ids in d.values() for i in ids]
    assert sim.server_errors() == 0, (sim.status, sim.errors)
    assert sim.status.get("200") == 900
    for u in users:  # a ramp only moves users from control into the treatment, never back
        if before[u][0] == "challenger":
            assert after[u][0] == "challenger"
    share = np.mean([after[u][0] == "challenger" for u in users])
    assert 0.3 < share < 0.7 and np.mean([before[u][0] == "challenger" for u in users]) < 0.25

    # restart: same users, same arms; nothing acknowledged before the restart is lost
    with serve(_config(stack, "e2e"), stack["root"] / "server") as url:
        again = _arms(url, users[:40])
    assert {u: a for u, (a, _) in again.items()} == {u: after[u][0] for u in users[:40]}
    seen += [i for _, ids in again.values() for i in ids]
    db = sqlite3.connect(stack["root"] / "ab.sqlite")
    logged = {r[0] for r in db.execute("SELECT exposure_id FROM exposures WHERE experiment = 'e2e'")}
    assert set(seen) <= logged
    assert (
        len(logged) == len(seen) + sim.exposures + 2
    )  # + the /explain slate; no exposure without a response

    # the truly better challenger (truth says so) is found better, read after the ramp only
    assert sim.expected_ctr["challenger"] > sim.expected_ctr["champion"]
    ex = store.exposures("e2e")
    ex = ex[ex["ts"] >= store.weight_period("e2e")[0]]
    a = analyse(
        ex, {"champion": 0.5, "challenger": 0.5}, "champion", "e2e", srm_window=store.weight_period("e2e")
    )
    t = next(r for r in a.arms if r.arm == "challenger")
    assert a.srm_ok and t.lift > 0 and t.p_value < 0.05, a.verdict


def test_bentoml_build_offline(tmp_path: Path) -> None:
    """`bentoml build` from bentofile.yaml works offline: pinned packages (torch pinned), the ranker's GPU
    recorded for the cluster, the code it needs packed, no workspace or BentoML home inside."""
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "."],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "Successfully built" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "home" / "bentos" / "adflow-router").iterdir() if p.is_dir()]
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    services = {s["name"]: s for s in meta["services"]}
    assert services["adflow-ranker"]["config"]["resources"]["gpu"] == 1
    assert {d["service"] for d in services["adflow-router"]["dependencies"]} == {
        "adflow-ranker",
        "adflow-creative",
    }
    reqs = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in reqs and "bentoml==1.4.39" in reqs
    src = {str(p.relative_to(bento / "src")) for p in (bento / "src").rglob("*") if p.is_file()}
    assert {"serving/service.py", "adflow/models/ctr.py", "feature_store/definitions.py"} <= src
    assert not any(p.startswith((".adflow", ".venv", "tests")) for p in src)
