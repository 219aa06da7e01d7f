"""Serving benchmarks, as ratios against calling the model in-process in the same session.

    make bench            # after ctr_bench; writes bench/results/serving.json and serving.md

Ranking requests of 100 candidates (every creative of each scored, features from the Feast online store):
1. in-process: serving.core.Ranker.rank, one request per call (concurrency 1) and 16 requests per call (the
   batch adaptive batching would form at concurrency 16): the baseline;
2. the BentoML ranker service over HTTP on loopback (adaptive batching on), concurrency 1 and 16;
3. the router in front of it, concurrency 1 and 16: with no experiment running (every user gets the champion,
   so no sticky assignment is looked up), the exposure log and the ranker call; it returns the top 10 where the
   ranker path returns all 100 ranked.
Reported: p50/p99 latency and requests/s, each as a ratio to the in-process baseline, and the router hop's
added latency (router p50 - ranker p50 at concurrency 1: the hop, the exposure log and the smaller answer).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(__file__).parent / "results"
N_CAND = 100


def _requests(user_ids: np.ndarray, items: np.ndarray, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "user_id": int(rng.choice(user_ids)),
            "item_ids": [int(x) for x in rng.choice(items, N_CAND, replace=False)],
        }
        for _ in range(n)
    ]


def _stats(lat_ms: list[float], seconds: float) -> dict[str, float]:
    p50, p99 = np.percentile(lat_ms, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "rps": len(lat_ms) / seconds, "n": len(lat_ms)}


async def _load(url: str, path: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    import httpx

    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as h:

        async def one(body: dict[str, Any]) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                r = await h.post(path, json=body)
                if r.status_code == 200:  # a failure's time is not a response time
                    lat.append((time.perf_counter() - t) * 1000)
                else:
                    errors += 1

        await asyncio.gather(*[one(b) for b in bodies[:concurrency]])  # warm-up: connections, batcher
        lat.clear()
        errors = 0  # what the warm-up met is not the measured run's
        t0 = time.perf_counter()
        await asyncio.gather(*[one(b) for b in bodies])
        seconds = time.perf_counter() - t0
    return {**_stats(lat, seconds), "errors": errors}


def main() -> None:
    import torch

    from adflow import registry
    from adflow.config import load_settings
    from adflow.contract import read_table
    from adflow.data.world import generate
    from adflow.tracking import client, ensure_experiment
    from components.features.build.core import build
    from components.training.ctr.core import fit_in_process
    from serving.core import Ranker, RankRequest, ServeConfig
    from serving.launch import serve
    from serving.simulate import world_time

    torch.set_num_threads(1)  # what each server process uses
    root = Path(tempfile.mkdtemp(prefix="adflow-serving-bench-"))
    s = load_settings("tiny", "local", [f"placement.workspace={root / 'ws'}"]).resolved()
    data = root / "world"
    generate(s.world, data)
    build(s, data, root / "features")
    uri = s.placement.tracking_uri()
    c = client(uri)
    exp = ensure_experiment(c, "bench", s.placement.artifact_root())
    torch.save(fit_in_process(s, root / "features", epochs=1), root / "m.pt")
    run = c.create_run(exp, run_name="bench")
    v = registry.register(uri, run.info.run_id, str(root / "m.pt"), "bench", {}, ["torch==2.13.0"])
    registry.move_alias(c, "bench", registry.CHAMPION, v, "bench", "register")
    at = world_time(data)
    users = read_table(data, "users")["user_id"].to_numpy()
    items = read_table(data, "items")["item_id"].to_numpy()
    bodies = [{**b, "at": at} for b in _requests(users, items, 300)]

    results: dict[str, Any] = {"candidates": N_CAND, "requests": len(bodies)}
    core = Ranker(s.placement, data, "bench")
    reqs = [RankRequest(b["user_id"], b["item_ids"], "champion", at) for b in bodies]
    core.rank(reqs[:2])
    lat, t0 = [], time.perf_counter()
    for r in reqs:
        t = time.perf_counter()
        core.rank([r])
        lat.append((time.perf_counter() - t) * 1000)
    results["inprocess_c1"] = _stats(lat, time.perf_counter() - t0)
    lat, t0 = [], time.perf_counter()
    for i in range(0, len(reqs), 16):
        t = time.perf_counter()
        core.rank(reqs[i : i + 16])
        lat += [(time.perf_counter() - t) * 1000] * len(reqs[i : i + 16])  # each waits for its batch
    results["inprocess_c16"] = _stats(lat, time.perf_counter() - t0)
    print(json.dumps(results, indent=2))

    cfg = ServeConfig(s.placement.model_dump_json(), str(data), "bench", experiment=None)
    with serve(cfg, root / "ranker", service="serving.service:Ranker") as url:
        for conc in (1, 16):
            results[f"ranker_http_c{conc}"] = asyncio.run(
                _load(url, "/rank", [{"requests": [{**b, "model": "champion"}]} for b in bodies], conc)
            )
            print(conc, results[f"ranker_http_c{conc}"])
    with serve(cfg, root / "router") as url:
        for conc in (1, 16):
            results[f"router_c{conc}"] = asyncio.run(
                _load(url, "/rank", [{**b, "k": 10} for b in bodies], conc)
            )
            print(conc, results[f"router_c{conc}"])

    ratios = {}
    for conc in (1, 16):
        base = results[f"inprocess_c{conc}"]
        for path in ("ranker_http", "router"):
            r = results[f"{path}_c{conc}"]
            ratios[f"{path}_c{conc}"] = {
                "p50_ratio": r["p50_ms"] / base["p50_ms"],
                "p99_ratio": r["p99_ms"] / base["p99_ms"],
                "rps_ratio": r["rps"] / base["rps"],
            }
    results["ratios_vs_inprocess"] = ratios
    results["router_hop_added_ms_p50_c1"] = (
        results["router_c1"]["p50_ms"] - results["ranker_http_c1"]["p50_ms"]
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "serving.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Serving benchmark (tiny world, 100 candidates per request, 2 CPU cores)",
        "",
        "| path | concurrency | p50 ms | p99 ms | req/s | p50 / in-process | p99 / in-process | req/s / in-process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for conc in (1, 16):
        b = results[f"inprocess_c{conc}"]
        lines.append(
            f"| in-process | {conc} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['rps']:.1f} | 1 | 1 | 1 |"
        )
        for path in ("ranker_http", "router"):
            r, q = results[f"{path}_c{conc}"], ratios[f"{path}_c{conc}"]
            lines.append(
                f"| {path} | {conc} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | "
                f"{q['p50_ratio']:.2f} | {q['p99_ratio']:.2f} | {q['rps_ratio']:.2f} |"
            )
    lines += ["", f"Router hop adds {results['router_hop_added_ms_p50_c1']:.1f} ms at p50, concurrency 1."]
    (OUT / "serving.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
