"""Traffic simulator: the synthetic world's users send ranking requests through the router and click.

Each request: a user of the world, `candidates` items drawn from the catalogue (what retrieval would hand the
ranker), the router's slate back (items, creatives, positions, exposure ids). Clicks are drawn from the world's
ground-truth click model (adflow/data/truth.py) for exactly what was shown and posted to `/click`. Bounded in
requests, rate and wall time: it stops by itself at the first limit reached.

Because the simulator knows the truth, it also records each arm's *expected* CTR (the mean true click
probability of what the arm showed): the true lift the A/B analysis should find.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adflow.data.truth import ClickModel
from adflow.progress import Progress


@dataclass
class SimResult:
    requests: int = 0
    status: dict[str, int] = field(default_factory=dict)  # HTTP status -> count ("click:<status>" for /click
    # failures; "error" and "click:error" for transport errors of /rank and /click)
    exposures: int = 0
    clicks: int = 0
    seconds: float = 0.0
    expected_ctr: dict[str, float] = field(default_factory=dict)  # arm -> mean true p of what it showed
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few failures (bodies, transport errors)

    def server_errors(self) -> int:
        """5xx answers and transport errors (timeouts, dropped connections) of /rank and /click: what a
        healthy stack never gives."""
        return sum(
            n for k, n in self.status.items() if k.split(":")[-1].startswith("5") or k.endswith("error")
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def world_time(dataset: str | Path) -> float:
    """Just after the world's last impression: the 'now' of a simulation on that world."""
    from adflow.contract import read_table

    return float(read_table(Path(dataset), "impressions")["ts"].max().timestamp()) + 3600.0


async def _run(
    url: str,
    truth: ClickModel,
    catalogue: np.ndarray,
    at: float,
    requests: int,
    rate_per_s: float,
    duration_s: float,
    concurrency: int,
    candidates: int,
    k: int,
    seed: int,
) -> SimResult:
    import httpx

    rng = np.random.default_rng(seed)
    users = truth.user_ids
    res = SimResult()
    status: Counter[str] = Counter()
    p_sum: dict[str, float] = defaultdict(float)
    p_n: dict[str, int] = defaultdict(int)
    lat: list[float] = []
    n_cand = min(candidates, len(catalogue))
    start = time.monotonic()
    issued = 0
    prog = Progress("simulate", "requests", requests)

    async def one(client: httpx.AsyncClient, user: int, items: list[int], draw: np.ndarray) -> None:
        t = time.perf_counter()
        try:
            r = await client.post("/rank", json={"user_id": user, "item_ids": items, "k": k, "at": at})
        except httpx.HTTPError as e:
            status["error"] += 1
            if len(res.errors) < 5:
                res.errors.append(f"{type(e).__name__}: {e}")
            return
        lat.append((time.perf_counter() - t) * 1000)
        status[str(r.status_code)] += 1
        if r.status_code != 200:
            if len(res.errors) < 5:
                res.errors.append(f"{r.status_code}: {r.text[:300]}")
            return
        body = r.json()
        shown = body["items"]
        if not shown:
            return
        p = truth.p_click(
            np.full(len(shown), user),
            np.array([s["item_id"] for s in shown]),
            np.array([s["creative_id"] for s in shown]),
            np.array([s["position"] for s in shown]),
        )
        arm = body["arm"] or "default"
        p_sum[arm] += float(p.sum())
        p_n[arm] += len(shown)
        res.exposures += len(shown)
        clicked = [s["exposure_id"] for s, u, q in zip(shown, draw, p, strict=False) if u < q]
        if clicked:
            try:
                c = await client.post("/click", json={"exposure_ids": clicked, "at": at})
            except httpx.HTTPError as e:  # counted like /rank's: a lost click must show in the status counts
                status["click:error"] += 1
                if len(res.errors) < 5:
                    res.errors.append(f"/click {type(e).__name__}: {e}")
                return
            if c.status_code == 200:
                res.clicks += len(clicked)
            else:
                status[f"click:{c.status_code}"] += 1
                if len(res.errors) < 5:
                    res.errors.append(f"/click {c.status_code}: {c.text[:300]}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        sem = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def guarded(*args: Any) -> None:
            try:
                await one(client, *args)
            finally:
                sem.release()
                prog.advance()

        while issued < requests and time.monotonic() - start < duration_s:
            # pace: request n is not sent before n / rate seconds
            wait = issued / rate_per_s - (time.monotonic() - start)
            if wait > 0:
                await asyncio.sleep(wait)
            await sem.acquire()
            user = int(rng.choice(users))
            items = [int(x) for x in rng.choice(catalogue, n_cand, replace=False)]
            draw = rng.random(k)  # the user's click dice, drawn before the slate is known
            task = asyncio.create_task(guarded(user, items, draw))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            issued += 1
        if tasks:
            await asyncio.gather(*tasks)
    res.requests = issued
    res.status = dict(status)
    res.seconds = time.monotonic() - start
    res.expected_ctr = {a: p_sum[a] / p_n[a] for a in p_n}
    if lat:
        res.latency_ms_p50, res.latency_ms_p99 = (float(x) for x in np.percentile(lat, [50, 99]))
    return res


def simulate(
    url: str,
    dataset: str | Path,
    requests: int = 500,
    rate_per_s: float = 20.0,
    duration_s: float = 120.0,
    concurrency: int = 4,
    candidates: int = 100,
    k: int = 10,
    seed: int = 0,
    at: float | None = None,
) -> SimResult:
    """Send at most `requests` requests, at most `rate_per_s` per second, for at most `duration_s`."""
    from adflow.contract import read_table

    if requests < 1 or rate_per_s <= 0 or duration_s <= 0 or concurrency < 1:
        raise ValueError("requests, rate_per_s, duration_s and concurrency must be positive")
    truth = ClickModel.load(dataset)
    when = world_time(dataset) if at is None else at
    items = read_table(Path(dataset), "items")
    live = items.loc[items["launch_ts"].map(lambda t: t.timestamp()) <= when, "item_id"].to_numpy()
    return asyncio.run(
        _run(url, truth, live, when, requests, rate_per_s, duration_s, concurrency, candidates, k, seed)
    )
