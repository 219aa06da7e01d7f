"""BentoML services: ranker, creative selection, and the A/B router in front of them.

    bentoml serve serving.service:Router --host 127.0.0.1 --port 3000   # starts all three (composition)

The router is the public entry point: it assigns the user to an arm of the running experiment (sticky hash,
adflow/ab/assign.py), asks the ranker to score the candidates with that arm's model, logs every exposure
durably *before* answering (SQLite WAL, adflow/ab/store.py), and returns the ranked slate with the experiment,
arm, model version and one exposure id per shown item. Clicks come back to `/click` against those ids.

Configuration comes from the JSON file named by ADFLOW_SERVE_CONFIG (serving.core.ServeConfig): the run
writes it (adflow serve, the deploy stage); a cluster deployment mounts it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field, field_validator

from serving import session_fix
from serving.core import MAX_CANDIDATES, BadRequest, ModelRef, RankRequest, ServeConfig

session_fix.install()  # the dependency client must not close sessions under in-flight requests (FIELD-NOTES)

ItemIds = Annotated[list[int], Field(min_length=1, max_length=MAX_CANDIDATES)]


class RankIn(BaseModel):
    user_id: int
    item_ids: ItemIds
    model: str = "champion"
    at: float | None = None
    top: int | None = Field(
        None, ge=1
    )  # return only the best `top` (the router needs its slate, not all 100)

    @field_validator("item_ids")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"item_ids has duplicates: {sorted({i for i in v if v.count(i) > 1})[:5]}")
        return v


class ScoredOut(BaseModel):
    item_id: int
    creative_id: int
    score: float
    cold: bool


class RankOut(BaseModel):
    model_version: int = 0
    ranked: list[ScoredOut] = []
    unranked: list[int] = []
    error: str | None = None  # a request the batch could not serve (the router answers it with a 400)


def _cfg() -> ServeConfig:
    return ServeConfig.from_env()


@bentoml.service(
    name="adflow-ranker",
    workers=1,
    traffic={"timeout": 30, "max_concurrency": 256},
    # recorded for the cluster (a GPU node), ignored on a CPU machine (FIELD-NOTES)
    resources={"gpu": 1, "gpu_type": "nvidia-l4", "cpu": "2"},
)
class Ranker:
    def __init__(self) -> None:
        import torch

        from serving.core import Ranker as Core

        cfg = _cfg()
        torch.set_num_threads(cfg.torch_threads)
        self.core = Core(cfg.placement(), cfg.dataset, cfg.model_name, cfg.feast_dir, cfg.device)
        for ref in cfg.preload:
            self.core.pool.get(ModelRef.parse(ref))  # load the arms' models before the first request

    # max_latency_ms is a load-shedding bound, not a batching window: BentoML's dispatcher answers 503 when it
    # predicts a request would wait longer. At concurrency 32 on 2 cores a request waits ~2 s, so 2000 ms shed
    # ~3% of them (make loadtest); the router's own timeout (30 s) is the real limit.
    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=20_000)
    def rank(self, requests: list[RankIn]) -> list[RankOut]:
        """Score each request's candidates with its model; best creative per item, best item first."""
        good, out = [], [RankOut() for _ in requests]
        for k, r in enumerate(requests):
            try:  # an unknown alias or version fails only this request, not its whole batch
                self.core.pool.get(ModelRef.parse(r.model))
                good.append(k)
            except BadRequest as e:
                out[k] = RankOut(error=str(e))
        if good:
            reqs = [RankRequest(requests[k].user_id, requests[k].item_ids, requests[k].model, requests[k].at)
                    for k in good]  # fmt: skip
            for k, res in zip(good, self.core.rank(reqs), strict=True):
                out[k] = RankOut(
                    model_version=res.model_version,
                    ranked=[ScoredOut(**vars(s)) for s in res.ranked[: requests[k].top]],
                    unranked=res.unranked,
                )
        return out


@bentoml.service(name="adflow-creative", workers=1, traffic={"timeout": 30})
class Creative:
    """Which creative to show for (user, item), and why. The fast scorer is the CTR model itself (it reads the
    creative's design factors); `explain` asks the Creative4U selector (a pairwise tournament over the item's
    creatives, with its reasoning) when the serving config names one."""

    def __init__(self) -> None:
        import torch

        from adflow.creative.choose import Chooser, selector_folder
        from serving.core import Ranker as Core

        cfg = _cfg()
        torch.set_num_threads(cfg.torch_threads)
        self.core = Core(cfg.placement(), cfg.dataset, cfg.model_name, cfg.feast_dir, cfg.device)
        folder = selector_folder(cfg.selector)
        self.chooser = Chooser(folder, cfg.dataset, self.core.pool.device) if folder else None

    def _creatives(self, model: str, user_id: int, item_id: int, at: float | None) -> tuple[int, Any]:
        try:
            return self.core.creatives(model, user_id, item_id, at)
        except BadRequest as e:  # the caller's mistake: a 400, not a 500
            raise bentoml.exceptions.InvalidArgument(str(e)) from e

    @bentoml.api
    def select(self, user_id: int, item_id: int, model: str = "champion", at: float | None = None) -> dict:
        """The creative the fast scorer picks for this user and item, with every creative's score."""
        version, table = self._creatives(model, user_id, item_id, at)
        return {
            "item_id": item_id,
            "creative_id": int(table["creative_id"].iloc[0]),
            "model_version": version,
            "creatives": table.to_dict("records"),
        }

    @bentoml.api
    def explain(self, user_id: int, item_id: int, model: str = "champion", at: float | None = None) -> dict:
        """Why the chosen creative beats the runner-up, factor by factor (fast scorer's view)."""
        from serving.core import explain_choice

        version, table = self._creatives(model, user_id, item_id, at)
        fast = explain_choice(table)
        if self.chooser is None:
            return {"item_id": item_id, "model_version": version, "selector": "ctr-fast-scorer", **fast}
        choice = self.chooser.choose(user_id, item_id)  # the ids were checked by the fast path above
        return {
            "item_id": item_id,
            "model_version": version,
            "selector": "creative4u",
            "creative_id": choice.creative_id,
            "points": {str(k): v for k, v in choice.points.items()},
            "rationale": choice.explanation,
            # the rationale speaks of slots: which creative was "A" and which "B" in the game it comes from
            "rationale_slots": {"A": choice.explained_a, "B": choice.explained_b}
            if choice.explained_a is not None
            else None,
            "fast_scorer_choice": fast["creative_id"],
            "agrees_with_fast_scorer": choice.creative_id == fast["creative_id"],
        }


@bentoml.service(name="adflow-router", workers=1, traffic={"timeout": 30, "max_concurrency": 256})
class Router:
    ranker = bentoml.depends(Ranker)
    creative = bentoml.depends(Creative)

    def __init__(self) -> None:
        from adflow.ab.store import ABStore

        self.cfg = _cfg()
        self.store = ABStore(self.cfg.ab_store)
        self.lock = threading.Lock()  # one SQLite connection, used from worker threads one at a time

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self.lock:
            return fn(*args)

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(self._locked, fn, *args)

    @bentoml.api
    async def rank(
        self,
        user_id: int,
        item_ids: ItemIds,
        k: Annotated[int, Field(ge=1, le=100)] = 10,
        at: float | None = None,
    ) -> dict:
        """The slate for a user: top-k items with their creatives, under the user's experiment arm."""
        from adflow.ab.store import Exposure

        if len(set(item_ids)) != len(item_ids):
            raise bentoml.exceptions.InvalidArgument("item_ids has duplicates")
        exp = await self._db(self.store.find, self.cfg.experiment) if self.cfg.experiment else None
        if exp is not None:
            chosen = exp.arm_for(user_id)
            arm, model = chosen.name, chosen.model
        else:
            arm, model = "", self.cfg.default_model
        out = (await self.ranker.to_async.rank([{"user_id": user_id, "item_ids": item_ids, "model": model,
                                                 "at": at, "top": k}]))[0]  # fmt: skip
        out = out if isinstance(out, dict) else out.model_dump()
        if out.get("error"):
            raise bentoml.exceptions.InvalidArgument(out["error"])
        now = time.time()
        shown = out["ranked"][:k]
        rows = [
            Exposure(uuid.uuid4().hex, now, exp.name if exp else "", str(user_id), arm,
                     f"{model}@{out['model_version']}", int(s["item_id"]), int(s["creative_id"]), pos)
            for pos, s in enumerate(shown, start=1)
        ]  # fmt: skip
        await self._db(self.store.log_exposures, rows)  # durable before the caller sees the slate
        return {
            "experiment": exp.name if exp else None,
            "arm": arm or None,
            "model": model,
            "model_version": out["model_version"],
            "items": [
                {**s, "position": r.position, "exposure_id": r.exposure_id}
                for s, r in zip(shown, rows, strict=True)
            ],
            "unranked": out["unranked"],
        }

    @bentoml.api
    async def click(self, exposure_ids: Annotated[list[str], Field(min_length=1, max_length=1000)],
                    at: float | None = None) -> dict:  # fmt: skip
        """Record clicks on shown items (by the exposure ids the slate carried)."""
        from adflow.ab.store import ABError

        try:
            n = await self._db(self.store.log_clicks, exposure_ids, time.time() if at is None else at)
        except ABError as e:
            raise bentoml.exceptions.InvalidArgument(str(e)) from e
        return {"logged": n}

    @bentoml.api
    async def explain(self, exposure_id: str) -> dict:
        """Why this creative was shown for this exposure (asks the creative service with the same model)."""
        row = await self._db(self.store.exposure, exposure_id)
        if row is None:
            raise bentoml.exceptions.NotFound(f"no exposure {exposure_id!r}")
        ref = f"version:{str(row['model']).rsplit('@', 1)[1]}"  # the exact model that served it
        return await self.creative.to_async.explain(
            user_id=int(row["user_id"]), item_id=int(row["item_id"]), model=ref
        )

    @bentoml.api
    async def status(self) -> dict:
        """The experiment the router serves and its arms (what a person checks after a ramp or a stop)."""
        exp = await self._db(self.store.find, self.cfg.experiment) if self.cfg.experiment else None
        if exp is None:
            return {"experiment": None, "default_model": self.cfg.default_model}
        return {"experiment": exp.name, "status": exp.status, "arms": [vars(a) for a in exp.serving_arms()]}
