"""A/B core: sticky assignment and ramps, the durable experiment store and exposure log, and the analysis."""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adflow.ab.analysis import analyse, msprt_pvalues, srm_pvalue, wilson
from adflow.ab.assign import BUCKETS, Arm, Layout, assign, bucket
from adflow.ab.store import ABError, ABStore, Exposure

USERS = range(1, 20_001)


def _arms(w_treat: float) -> list[Arm]:
    return [Arm("control", "alias:champion", 1 - w_treat), Arm("treatment", "alias:challenger", w_treat)]


def test_buckets_are_stable_and_uniform() -> None:
    b = np.array([bucket("salt-1", u) for u in USERS])
    assert (b == np.array([bucket("salt-1", u) for u in USERS])).all()  # same input, same bucket
    assert (b != np.array([bucket("salt-2", u) for u in USERS])).mean() > 0.99  # another salt reshuffles
    counts = np.bincount(b * 10 // BUCKETS, minlength=10)
    assert counts.min() > 0.9 * len(b) / 10  # uniform across deciles


def test_ramp_only_moves_users_out_of_control() -> None:
    steps = [0.01, 0.10, 0.50, 0.10, 0.0]
    arms = [{u: assign("exp", u, _arms(w)) for u in USERS} for w in steps]
    for before, after, (w0, w1) in zip(arms, arms[1:], itertools.pairwise(steps), strict=False):
        moved = [u for u in USERS if before[u] != after[u]]
        if w1 > w0:  # ramping up: treatment users stay, only control users move in
            assert all(before[u] == "control" and after[u] == "treatment" for u in moved)
        else:  # ramping down: only treatment users go back
            assert all(before[u] == "treatment" and after[u] == "control" for u in moved)
    share = np.mean([a == "treatment" for a in arms[2].values()])
    assert share == pytest.approx(0.5, abs=0.01)


def test_layout_refuses_bad_weights() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        Layout.of([Arm("c", "m", 0.5), Arm("t", "m", 0.6)])
    with pytest.raises(ValueError, match="exceeds its slot"):
        Layout.of([Arm("c", "m", 0.1), Arm("t1", "m", 0.6), Arm("t2", "m", 0.3)])
    with pytest.raises(ValueError, match="unique"):
        Layout.of([Arm("c", "m", 0.5), Arm("c", "m", 0.5)])
    with pytest.raises(ValueError, match="treatment"):
        Layout.of([Arm("c", "m", 1.0)])


def test_store_lifecycle_is_durable_and_sticky(tmp_path: Path) -> None:
    db = tmp_path / "ab.sqlite"
    store = ABStore(db)
    exp = store.create("rank-v2", _arms(0.10), min_sample=500)
    before = {u: exp.layout().arm_of(bucket(exp.salt, u)) for u in range(1, 2001)}
    store.log_exposures(
        Exposure(f"e{u}", float(u), "rank-v2", str(u), before[u], "m", 7, None, 1) for u in range(1, 101)
    )
    store.log_clicks(["e3", "e5"], 200.0)
    with pytest.raises(ABError, match="unknown exposures"):
        store.log_clicks(["nope"], 201.0)
    store.close()

    store = ABStore(db)  # a restart: the same salt, weights and log come back
    exp2 = store.get("rank-v2")
    assert exp2.salt == exp.salt
    assert {u: exp2.layout().arm_of(bucket(exp2.salt, u)) for u in range(1, 2001)} == before
    log = store.exposures("rank-v2")
    assert len(log) == 100 and set(log.loc[log["click"] == 1, "exposure_id"]) == {"e3", "e5"}

    ramped = store.ramp("rank-v2", {"treatment": 0.5})
    assert [a.weight for a in ramped.arms] == [0.5, 0.5]
    after = {u: ramped.layout().arm_of(bucket(ramped.salt, u)) for u in range(1, 2001)}
    assert all(after[u] == "treatment" for u in before if before[u] == "treatment")
    with pytest.raises(ABError, match="no arm"):
        store.ramp("rank-v2", {"other": 0.2})

    store.pause("rank-v2")  # paused: everyone sees control, weights kept
    paused = store.get("rank-v2")
    assert {paused.layout().arm_of(b) for b in range(BUCKETS)} == {"control"}
    assert [a.weight for a in paused.arms] == [0.5, 0.5]
    store.ramp("rank-v2", {"treatment": 0.5})  # resume
    store.stop("rank-v2", reason="alert")  # the kill switch
    stopped = store.get("rank-v2")
    assert stopped.status == "stopped"
    assert {stopped.layout().arm_of(b) for b in range(BUCKETS)} == {"control"}
    with pytest.raises(ABError, match="stopped"):
        store.ramp("rank-v2", {"treatment": 0.2})
    actions = [e["action"] for e in store.events("rank-v2")]
    assert actions == ["create", "ramp", "pause", "ramp", "stop"]
    assert all(e["who"] and e["at"] for e in store.events("rank-v2"))
    with pytest.raises(ABError, match="already exists"):
        store.create("rank-v2", _arms(0.1))
    # concluded: the winner serves everyone
    store.create("rank-v3", _arms(0.2))
    won = store.conclude("rank-v3", "treatment", reason="won")
    assert won.winner == "treatment" and {won.arm_for(u).name for u in range(1, 500)} == {"treatment"}
    live = store.create("rank-v4", _arms(0.2))
    assert {live.arm_for(u).name for u in range(1, 2001)} == {"control", "treatment"}


def _stream(rng: np.random.Generator, ctr: dict[str, float], n: dict[str, int]) -> pd.DataFrame:
    rows = [
        pd.DataFrame(
            {"arm": arm, "click": (rng.random(n[arm]) < ctr[arm]).astype(int), "ts": rng.random(n[arm])}
        )
        for arm in ctr
    ]
    return pd.concat(rows, ignore_index=True)


def test_analysis_finds_a_real_lift() -> None:
    rng = np.random.default_rng(0)
    ex = _stream(rng, {"control": 0.08, "treatment": 0.10}, {"control": 20_000, "treatment": 20_000})
    a = analyse(ex, {"control": 0.5, "treatment": 0.5}, "control")
    t = next(r for r in a.arms if r.arm == "treatment")
    assert a.srm_ok and t.p_value < 0.05 and 0 < t.lift_lo < t.lift < t.lift_hi
    assert t.lift == pytest.approx(0.25, abs=0.08)
    assert "treatment is better" in a.verdict and "the plan asks" not in a.verdict
    # the experiment planned more exposures per arm: the reading stands, the verdict says it is early
    early = analyse(ex, {"control": 0.5, "treatment": 0.5}, "control", min_sample=50_000)
    assert early.verdict.startswith("treatment is better")
    assert "the plan asks 50,000 exposures per arm before a decision (20,000 so far)" in early.verdict
    lo, hi = wilson(t.clicks, t.exposures)
    assert lo < t.ctr < hi and (t.ctr_lo, t.ctr_hi) == (lo, hi)


def test_aa_test_and_peeking() -> None:
    """A/A: SRM passes and the always-valid test rarely rejects even when read 50 times; a z-test read as often
    rejects far more often (the false positives mSPRT exists to prevent)."""
    rng = np.random.default_rng(1)
    msprt_rejects, peek_rejects = 0, 0
    for _ in range(200):
        c, t = (rng.random(4000) < 0.08).astype(float), (rng.random(4000) < 0.08).astype(float)
        msprt_rejects += msprt_pvalues(c, t, tau=0.016, checkpoints=50)[-1] < 0.05
        cut = np.linspace(80, 4000, 50).astype(int)
        z = [
            abs(t[:k].mean() - c[:k].mean())
            / np.sqrt(max((c[:k].sum() + t[:k].sum()) / (2 * k) * (1 - (c[:k].sum() + t[:k].sum()) / (2 * k)), 1e-9) * 2 / k)
            for k in cut
        ]  # fmt: skip
        peek_rejects += max(z) > 1.96
    assert msprt_rejects / 200 <= 0.05
    assert peek_rejects > 2 * max(msprt_rejects, 5)
    ex = _stream(rng, {"control": 0.08, "treatment": 0.08}, {"control": 10_000, "treatment": 10_000})
    a = analyse(ex, {"control": 0.5, "treatment": 0.5}, "control")
    assert a.srm_ok and "no significant difference" in a.verdict


def test_broken_split_fails_srm() -> None:
    rng = np.random.default_rng(2)
    ex = _stream(rng, {"control": 0.08, "treatment": 0.08}, {"control": 6000, "treatment": 4000})
    a = analyse(ex, {"control": 0.5, "treatment": 0.5}, "control")  # configured 50/50, sent 60/40
    assert not a.srm_ok and a.srm_p < 1e-6 and "sample ratio mismatch" in a.verdict
    assert srm_pvalue([5000, 5000], [0.5, 0.5]) == pytest.approx(1.0)
    # with user ids SRM counts users (the randomised unit): 1000 users sent 60/40, ten exposures each
    users = np.repeat(np.arange(1000), 10)
    arm = np.where(rng.random(1000) < 0.6, "control", "treatment")[users]
    by_user = pd.DataFrame({"arm": arm, "user_id": users, "click": 0, "ts": rng.random(len(users))})
    a = analyse(by_user, {"control": 0.5, "treatment": 0.5}, "control")
    assert not a.srm_ok and a.srm_p < 1e-4
    healthy = by_user.assign(arm=np.where(rng.random(1000) < 0.5, "control", "treatment")[users])
    assert analyse(healthy, {"control": 0.5, "treatment": 0.5}, "control").srm_ok
    with pytest.raises(ValueError, match="does not have"):
        analyse(ex.assign(arm="ghost"), {"control": 0.5, "treatment": 0.5}, "control")


def test_ab_cli(tmp_path: Path) -> None:
    """create -> ramp -> report -> pause -> stop through the CLI, on the workspace's store; bad input is refused."""
    import json

    from typer.testing import CliRunner

    from adflow.cli import app

    sets = [
        "--set",
        f"placement.workspace={tmp_path / 'ws'}",
        "--set",
        f"placement.runs_dir={tmp_path / 'runs'}",
    ]
    cli = CliRunner()

    def run(*args: str) -> str:
        r = cli.invoke(app, ["ab", *args, *sets])
        assert r.exit_code == 0, r.output
        return r.output

    assert "treatment 0.10" in run("create", "rank-v2", "--treatment-weight", "0.1")
    refused = cli.invoke(app, ["ab", "ramp", "rank-v2", "treatment=lots", *sets])
    assert refused.exit_code == 2 and "ARM=WEIGHT" in refused.output
    refused = cli.invoke(app, ["ab", "ramp", "rank-v2", "treatment=1.5", *sets])
    assert refused.exit_code == 2 and "sum to" in refused.output
    assert "treatment 0.50" in run("ramp", "rank-v2", "treatment=0.5")

    # traffic: before the ramp's timestamp at 90/10 (must not count against the 50/50 weights), then 50/50
    store = ABStore(tmp_path / "ws" / "ab.sqlite")
    start, _ = store.weight_period("rank-v2")
    rng = np.random.default_rng(3)
    rows, k = [], 0
    for ts0, share, n in ((start - 3600, 0.1, 3000), (start + 1, 0.5, 8000)):
        for j in range(n):
            arm = "treatment" if rng.random() < share else "control"
            rows.append(Exposure(f"x{k}", ts0 + j * 0.01, "rank-v2", str(k), arm, "m", 1, None, 1))
            k += 1
    store.log_exposures(rows)
    clicked = [r.exposure_id for r in rows if rng.random() < (0.12 if r.arm == "treatment" else 0.08)]
    store.log_clicks(clicked, start + 500)
    store.close()

    out = run("report", "rank-v2")
    assert "treatment is better" in out and "MISMATCH" not in out
    summary = json.loads((tmp_path / "runs" / "ab" / "rank-v2" / "summary.json").read_text())
    assert summary["srm_ok"] and (tmp_path / "runs" / "ab" / "rank-v2" / "ab.png").stat().st_size > 10_000
    everything = pd.DataFrame([{"arm": r.arm, "ts": r.ts, "click": 0} for r in rows])
    assert not analyse(everything, {"control": 0.5, "treatment": 0.5}, "control").srm_ok  # pre-ramp traffic
    assert "rank-v2" in run("status")
    run("pause", "rank-v2")
    assert "all traffic to control" in run("stop", "rank-v2", "--reason", "alert")
    again = cli.invoke(app, ["ab", "ramp", "rank-v2", "treatment=0.2", *sets])
    assert again.exit_code == 2 and "stopped" in again.output

    # conclude + promote: the winner's model becomes champion, recorded in the registry's history
    import torch

    from adflow import registry
    from adflow.tracking import client, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    c = client(uri)
    exp_id = ensure_experiment(c, "t", (tmp_path / "art").as_uri())
    torch.save(torch.nn.Linear(2, 1), tmp_path / "m.pt")
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        v = registry.register(
            uri, c.create_run(exp_id).info.run_id, str(tmp_path / "m.pt"), "ctr-ciubm", {}, []
        )
        registry.move_alias(c, "ctr-ciubm", alias, v, "setup", "register")
    run("create", "rank-v5", "--treatment-weight", "0.5")
    bad = cli.invoke(
        app, ["ab", "conclude", "rank-v5", "--winner", "nobody", "--reason", "x", "--promote", *sets]
    )
    assert bad.exit_code == 2 and "no arm" in bad.output
    assert registry.alias_version(c, "ctr-ciubm", registry.CHAMPION) == 1  # a refusal moves nothing
    out = run("conclude", "rank-v5", "--winner", "treatment", "--reason", "lift +12%", "--promote")
    assert "concluded" in out and "1 -> 2" in out
    assert registry.alias_version(c, "ctr-ciubm", registry.CHAMPION) == 2
    last = registry.history(c, "ctr-ciubm")[-1]
    assert last.action == "promote" and "won A/B test rank-v5" in last.reason


def test_per_user_variance_keeps_an_aa_test_honest() -> None:
    """Users, not exposures, are randomised. When users differ (their own CTRs) and each sees many exposures,
    a Bernoulli interval is far too narrow; the per-user (cluster) interval keeps ~5% false positives."""
    rng = np.random.default_rng(3)
    clustered, bernoulli = 0, 0
    for _ in range(100):
        frames = []
        for k, arm in enumerate(("control", "treatment")):
            n_u = rng.integers(10, 60, 150)
            users = np.repeat(np.arange(150) + 10_000 * k, n_u)
            clicks = rng.random(len(users)) < np.repeat(rng.beta(0.5, 5.0, 150), n_u)
            frames.append(
                pd.DataFrame(
                    {"arm": arm, "user_id": users, "click": clicks.astype(int), "ts": rng.random(len(users))}
                )
            )
        ex = pd.concat(frames, ignore_index=True)
        weights = {"control": 0.5, "treatment": 0.5}
        t = analyse(ex, weights, "control", checkpoints=2).arms[1]
        clustered += not (t.lift_lo < 0 < t.lift_hi)
        t = analyse(ex.drop(columns="user_id"), weights, "control", checkpoints=2).arms[1]
        bernoulli += not (t.lift_lo < 0 < t.lift_hi)
    assert clustered <= 10
    assert bernoulli > 25


def _registry(tmp_path: Path) -> tuple[str, object]:
    """A real MLflow registry (SQLite) with versions 1 and 2 of ctr-ciubm, version 1 the champion."""
    import torch

    from adflow import registry
    from adflow.tracking import client, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = client(uri)
    exp_id = ensure_experiment(c, "t", (tmp_path / "art").as_uri())
    torch.save(torch.nn.Linear(2, 1), tmp_path / "m.pt")
    for _ in range(2):
        registry.register(uri, c.create_run(exp_id).info.run_id, str(tmp_path / "m.pt"), "ctr-ciubm", {}, [])
    registry.move_alias(c, "ctr-ciubm", registry.CHAMPION, 1, "setup", "register")
    return uri, c


def test_refused_conclude_changes_nothing(tmp_path: Path) -> None:
    """A conclusion whose promotion the registry would refuse (no such version, a blank reason) is refused
    whole: the experiment keeps running with its split, the champion stays, no event is recorded."""
    from adflow import registry
    from adflow.ab.conclude import conclude

    uri, c = _registry(tmp_path)
    store = ABStore(tmp_path / "ab.sqlite")
    store.create("ghost", [Arm("control", "alias:champion", 0.9), Arm("treatment", "version:7", 0.1)])
    store.create("blank", [Arm("control", "alias:champion", 0.5), Arm("treatment", "version:2", 0.5)])
    for name, reason, says in (("ghost", "better CTR", "version 7"), ("blank", "   ", "reason is required")):
        with pytest.raises(ValueError, match=says):  # ABError, a ValueError like the registry's refusals
            conclude(store, name, "treatment", reason, uri, "ctr-ciubm", promote=True)
        exp = store.get(name)
        assert exp.status == "running" and exp.winner is None and [a.weight for a in exp.arms][1] > 0
        assert [e["action"] for e in store.events(name)] == ["create"]
    assert registry.alias_version(c, "ctr-ciubm", registry.CHAMPION) == 1
    assert [m.action for m in registry.history(c, "ctr-ciubm")] == ["register"]
    done = conclude(store, "blank", "treatment", "lift +4%", uri, "ctr-ciubm", promote=True)
    assert done.experiment.status == "concluded" and done.move is not None and done.move.to_version == 2
    assert registry.alias_version(c, "ctr-ciubm", registry.CHAMPION) == 2


def test_analysis_covers_only_the_current_weight_period() -> None:
    """A/A with CTR drifting from 6% to 3% and a 1% -> 50% ramp at the midpoint: pooled over both weight
    periods, treatment (nearly all of it after the ramp, at the low CTR) reads as a large, significant loss.
    Within the period after the ramp every number is honest, and the analysis says what it covered."""
    rng = np.random.default_rng(0)
    n_req, slate = 6000, 10
    rows = []
    for r in range(n_req):
        u = int(rng.integers(6000))
        w = 0.01 if r < n_req // 2 else 0.5
        arm = Layout.of(_arms(w)).arm_of(bucket("salt", u))
        p = 0.06 if r < n_req // 2 else 0.03
        rows += [(arm, u, int(rng.random() < p), float(r)) for _ in range(slate)]
    ex = pd.DataFrame(rows, columns=["arm", "user_id", "click", "ts"])
    weights = {"control": 0.5, "treatment": 0.5}
    a = analyse(ex, weights, "control", srm_window=(n_req // 2, None))
    t = a.arms[1]
    assert a.srm_ok and "no significant difference" in a.verdict and t.p_value > 0.05
    assert t.lift_lo < 0 < t.lift_hi
    after = ex[ex["ts"] >= n_req // 2]
    assert [r.exposures for r in a.arms] == [int((after["arm"] == arm).sum()) for arm in weights]
    assert a.left_out == len(ex) - len(after) and a.period == (n_req // 2, None)
    assert (
        f"{len(after):,} exposures" in a.scope() and f"{a.left_out:,} from other weight periods" in a.scope()
    )
    assert a.to_dict()["scope"] == a.scope()
    assert "all" in analyse(ex, weights, "control").scope()


def test_an_arm_without_clicks() -> None:
    """The direction comes from the CTRs, the lift says why it is undefined or has no interval, and the report
    shows the significant p-value."""
    import re
    import tempfile

    from adflow.ab.report import write_report

    rng = np.random.default_rng(0)
    users = rng.integers(0, 2000, 40_000)
    arm = np.where(users % 2 == 0, "control", "treatment")
    weights = {"control": 0.5, "treatment": 0.5}
    for silent, direction, says in (("treatment", "worse", "-100.0% (treatment has no clicks; no interval)"),
                                    ("control", "better", "undefined (control has no clicks"),):  # fmt: skip
        click = np.where(arm != silent, rng.random(len(users)) < 0.05, 0).astype(int)
        ex = pd.DataFrame(
            {"arm": arm, "user_id": users, "click": click, "ts": np.arange(len(users), dtype=float)}
        )
        a = analyse(ex, weights, "control")
        t = a.arms[1]
        assert t.p_value < 1e-10
        assert f"treatment is {direction} than control: lift {says}" in a.verdict and "nan" not in a.verdict
        with tempfile.TemporaryDirectory() as d:
            page = write_report(a, ex, d).read_text()
        (row,) = re.findall(r"<tr><td>treatment</td>.*?</tr>", page)
        assert says in row and f"<td>{t.p_value:.3g}</td>" in row and "nan" not in row


def test_report_band_is_the_tables_interval(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CTR plot's band is the clustered Wilson interval of the table, not a Bernoulli (Wald) band: users
    with their own CTRs and many exposures each make the honest band several times wider."""
    import matplotlib.axes

    from adflow.ab.report import write_report

    rng = np.random.default_rng(4)
    n_u = rng.integers(20, 80, 300)
    users = np.repeat(np.arange(300), n_u)
    click = (rng.random(len(users)) < np.repeat(rng.beta(0.5, 5.0, 300), n_u)).astype(int)
    arm = np.where(users % 2 == 0, "control", "treatment")
    ex = pd.DataFrame({"arm": arm, "user_id": users, "click": click, "ts": rng.random(len(users))})
    a = analyse(ex, {"control": 0.5, "treatment": 0.5}, "control")
    bands: list[tuple[np.ndarray, np.ndarray]] = []
    draw = matplotlib.axes.Axes.fill_between

    def record(
        self: matplotlib.axes.Axes, x: object, y1: object, y2: object, *args: object, **kw: object
    ) -> object:
        bands.append((np.asarray(y1), np.asarray(y2)))
        return draw(self, x, y1, y2, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", record)
    write_report(a, ex, tmp_path)
    assert len(bands) == 2
    for r, (lo, hi) in zip(a.arms, bands, strict=True):
        assert (lo[-1], hi[-1]) == pytest.approx((r.ctr_lo, r.ctr_hi))  # where the plot ends, the table's
        wald = 1.96 * np.sqrt(r.ctr * (1 - r.ctr) / r.exposures)
        assert hi[-1] - lo[-1] > 2 * 2 * wald


def test_srm_is_exact_for_small_counts() -> None:
    """300 users at a 1% ramp expect 3 in treatment: the chi-square's p-value is too small there (an alarm
    3.6x as often as alpha says); the exact test keeps the false alarm rate at most alpha and still catches a
    broken split."""
    from scipy import stats

    n, w = 300, 0.01
    k = np.arange(n + 1)
    p = np.array([srm_pvalue([n - x, x], [1 - w, w]) for x in k])
    assert stats.binom.pmf(k, n, w)[p < 0.001].sum() <= 0.001
    assert srm_pvalue([270, 30], [1 - w, w]) < 1e-10
    assert srm_pvalue([150, 150], [0.5, 0.5]) == pytest.approx(1.0)
    assert 0 < srm_pvalue([5000, 4000, 1000], [0.5, 0.4, 0.1]) <= 1  # more arms: chi-square
