"""Deploy branch: serve the champion and the new challenger, run a bounded simulated A/B test, report it.

After the gate passed and the registry made the candidate `challenger`: an experiment is created (control =
the champion's version, treatment = the challenger's, pinned versions so an alias move mid-test cannot change
an arm), the BentoML stack (router -> ranker, creative) is started on loopback, the traffic simulator sends
bounded traffic through the router with clicks from the world's ground truth, every process is stopped, and the
exposure log is analysed (CTR per arm, lift, SRM, always-valid p). The experiment is then stopped (not
concluded): promoting the winner is a person's call, `adflow ab conclude NAME --winner ARM --promote`.

On the first run ever the champion *is* the challenger: the test is an A/A test, and says so.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

from adflow import registry
from adflow.config import settings_from_json
from adflow.creative.choose import selector_folder
from adflow.progress import log
from adflow.tracking import NOTE_TAG, client, stage_run

STAGE = "abtest"


def run(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset_dir: str | Path,
    challenger_version: int,
    report_dir: str | Path,
    selector_dir: str | Path | None = None,
) -> dict[str, float]:
    """`selector_dir`: the creative stage's output; when it holds a trained selector, `explain` uses it."""
    from adflow.ab.analysis import analyse
    from adflow.ab.assign import Arm
    from adflow.ab.report import write_report
    from adflow.ab.store import ABStore, default_store_path
    from serving.core import ServeConfig
    from serving.launch import serve
    from serving.simulate import simulate

    s = settings_from_json(settings_json)
    ab, name = s.ab, s.registry.model_name
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        if not ab.enabled:
            sr.tag(NOTE_TAG, "A/B test disabled (ab.enabled=false): nothing served")
            return {}
        if not (Path(dataset_dir) / "truth" / "meta.json").exists():
            return _smoke_only(s, sr, dataset_dir, challenger_version, out)
        champion = registry.alias_version(client(tracking_uri), name, registry.CHAMPION)
        if champion is None:
            raise registry.RegistryError(f"{name} has no champion to test the challenger against")
        kind = "A/A" if champion == challenger_version else "A/B"
        store_path = default_store_path(s.placement.workspace)
        store = ABStore(store_path)
        exp_name = f"{name}-v{champion}-vs-v{challenger_version}-{uuid.uuid4().hex[:6]}"
        arms = [
            Arm("champion", f"version:{champion}", 1.0 - ab.treatment_weight),
            Arm("challenger", f"version:{challenger_version}", ab.treatment_weight),
        ]
        # the plan: half of what the smaller arm gets when every simulated request is served, so a simulation
        # cut short by its time limit says so in the verdict, and one that ran its course does not
        smaller = min(ab.treatment_weight, 1.0 - ab.treatment_weight)
        store.create(exp_name, arms, metric="ctr", min_sample=int(ab.requests * ab.slate_size * smaller / 2))
        log(STAGE, f"{kind} test {exp_name}: champion v{champion} vs challenger v{challenger_version}")
        cfg = ServeConfig(
            s.placement.model_dump_json(),
            str(dataset_dir),
            name,
            ab_store=str(store_path),
            experiment=exp_name,
            preload=sorted({a.model for a in arms}),
            selector=str(selector_folder(selector_dir)) if selector_folder(selector_dir) else None,
        )
        with serve(cfg, out / "server") as url:
            log(STAGE, f"serving on {url}; simulating up to {ab.requests} requests at {ab.rate_per_s}/s")
            sim = simulate(
                url, dataset_dir, ab.requests, ab.rate_per_s, ab.duration_s, ab.concurrency, ab.candidates,
                ab.slate_size, ab.seed,
            )  # fmt: skip
            explained = _explain_one(url, store, exp_name, out)
        store.stop(exp_name, "bounded simulation finished (deploy branch of ads_full)")
        exposures = store.exposures(exp_name)
        a = analyse(
            exposures,
            {r.name: r.weight for r in arms},
            "champion",
            exp_name,
            alpha=ab.alpha,
            srm_window=store.weight_period(exp_name),
            min_sample=store.get(exp_name).min_sample,
        )
        (out / "simulation.json").write_text(json.dumps(sim.to_dict(), indent=2))
        context = {
            "test": f"{kind}: champion v{champion} vs challenger v{challenger_version}",
            "requests": f"{sim.requests} in {sim.seconds:.0f}s; HTTP {sim.status}",
            "latency": f"p50 {sim.latency_ms_p50:.0f} ms, p99 {sim.latency_ms_p99:.0f} ms (router, through the stack)",
            "true CTR per arm (ground truth of what each arm showed)": ", ".join(
                f"{k} {v:.4f}" for k, v in sorted(sim.expected_ctr.items())
            ),
        }
        report = write_report(a, exposures, out, context)
        store.close()
        by = {r.arm: r for r in a.arms}
        metrics = {
            "requests": float(sim.requests),
            "http_5xx": float(sim.server_errors()),  # 5xx answers and transport errors, /rank and /click
            "exposures": float(len(exposures)),
            "champion_ctr": by["champion"].ctr,
            "challenger_ctr": by["challenger"].ctr,
            "lift": by["challenger"].lift,
            "lift_lo": by["challenger"].lift_lo,
            "lift_hi": by["challenger"].lift_hi,
            "p_value": by["challenger"].p_value,
            "srm_p": a.srm_p,
            "true_champion_ctr": sim.expected_ctr.get("champion", math.nan),
            "true_challenger_ctr": sim.expected_ctr.get("challenger", math.nan),
            "latency_ms_p50": sim.latency_ms_p50,
            "latency_ms_p99": sim.latency_ms_p99,
            "aa_test": float(kind == "A/A"),
            "explain_creative4u": float(explained.get("selector") == "creative4u"),
        }
        sr.metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        sr.artifact("report", report)
        sr.artifact("ab_store", store_path)
        sr.tag(NOTE_TAG, f"{kind} {exp_name}: {a.verdict}")
        log(STAGE, f"{a.verdict}; report {report}")
        if metrics["http_5xx"]:
            raise RuntimeError(
                f"{int(metrics['http_5xx'])} server errors during the simulated test: {sim.errors}"
            )
    return metrics


def _explain_one(url: str, store: Any, experiment: str, out: Path) -> dict[str, Any]:
    """Ask the router why the first exposure's creative was shown (the Creative4U selector when it is there);
    the answer is kept beside the report."""
    import httpx

    exposures = store.exposures(experiment)
    if exposures.empty:
        return {}
    with httpx.Client(base_url=url, timeout=120) as h:
        r = h.post("/explain", json={"exposure_id": str(exposures["exposure_id"].iloc[0])})
    if r.status_code != 200:
        raise RuntimeError(f"/explain answered {r.status_code}: {r.text[:300]}")
    (out / "explain_example.json").write_text(json.dumps(r.json(), indent=2))
    return dict(r.json())


def _smoke_only(
    s: Any, sr: Any, dataset_dir: str | Path, challenger_version: int, out: Path
) -> dict[str, float]:
    """Imported data has no ground truth to draw clicks from: serve the stack with champion and challenger loaded,
    check that it answers a real request, stop, and say so (an A/B test on real traffic is `adflow ab create`)."""
    import httpx

    from adflow.contract import read_table
    from serving.core import ServeConfig
    from serving.launch import serve

    user = int(read_table(Path(dataset_dir), "users")["user_id"].iloc[0])
    items = [int(i) for i in read_table(Path(dataset_dir), "items")["item_id"].iloc[:20]]
    cfg = ServeConfig(
        s.placement.model_dump_json(), str(dataset_dir), s.registry.model_name,
        preload=[f"version:{challenger_version}", "champion"],
    )  # fmt: skip
    with serve(cfg, out / "server") as url, httpx.Client(base_url=url, timeout=60) as h:
        r = h.post("/rank", json={"user_id": user, "item_ids": items, "k": 5})
    if r.status_code != 200 or not r.json()["items"]:
        raise RuntimeError(
            f"the served champion did not answer a ranking request: {r.status_code} {r.text[:300]}"
        )
    sr.metrics({"smoke_ok": 1.0})
    sr.tag(
        NOTE_TAG,
        "no ground truth in this dataset (imported): stack served and answered; no simulated A/B test",
    )
    log(
        STAGE,
        "imported dataset: served and smoke-tested, no simulated A/B test (no ground truth to click with)",
    )
    return {"smoke_ok": 1.0}
