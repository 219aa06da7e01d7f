"""The serving core, free of BentoML: online features, models by registry reference, ranking, creatives.

The BentoML services (serving/service.py) are thin shells around this, and `make bench` calls it in-process
as the baseline the HTTP paths are measured against.

Ranking scores every creative of every candidate item at position 1 (the model learned position as a
feature; scoring all candidates at the same position ranks them by what they are, not by where they were
shown before) and keeps each item's best creative: the CTR model's creative factors make it the fast
creative scorer. Unknown users get the empty-history features a new user has in training (the encoder maps
them to its out-of-vocabulary rows); items with no online features get a new item's features (no
impressions yet). An item is `cold` when the serving model's encoder never saw its id: the model scores it
from what is known (content, creative) through the shared out-of-vocabulary id. Ids that are not in the
catalogue at all cannot be shown and come back as `unranked`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow.config import Placement

MAX_CANDIDATES = 1000
USER_COLUMNS = (
    "hist_item_ids", "hist_ts", "hist_categories", "clicks_1d", "clicks_7d", "clicks_total",
    "category_affinity", "affinity_categories", "segment",
)  # fmt: skip
ITEM_COLUMNS = ("impressions_to_date", "clicks_to_date", "ctr_smoothed")
CREATIVE_FACTORS = ("prominence", "clutter", "legibility", "theme")


CONFIG_ENV = "ADFLOW_SERVE_CONFIG"


@dataclass
class ServeConfig:
    """What a server process needs: where features, models, the catalogue and the A/B log live.

    Written as JSON by whoever starts the server (the deploy stage, `adflow serve`) and named by the
    ADFLOW_SERVE_CONFIG environment variable, so every BentoML worker process reads the same settings.
    """

    placement_json: str  # adflow.config.Placement (tracking URI, Feast environment, Redis URL)
    dataset: str  # the dataset folder: the creative catalogue (and, for the simulator, the world's truth)
    model_name: str = "ctr-ciubm"
    feast_dir: str | None = None  # None: <workspace>/feast
    ab_store: str = ""  # SQLite file of experiments and exposures; "" = adflow.ab.store.default_store_path
    experiment: str | None = None  # the experiment the router serves; None: everyone gets default_model
    default_model: str = "champion"
    preload: list[str] = field(default_factory=lambda: ["champion"])  # model refs loaded at start-up
    torch_threads: int = 1
    device: str = "auto"  # auto: cuda when the node has a GPU (the ranker's declared resource), else cpu
    # the Creative4U selector (a creative stage's output or the selector folder): backs `explain`; None: the
    # fast scorer's factor-by-factor view
    selector: str | None = None

    def placement(self) -> Placement:
        return Placement.model_validate_json(self.placement_json)

    def __post_init__(self) -> None:
        if not self.ab_store:
            from adflow.ab.store import default_store_path

            self.ab_store = str(default_store_path(self.placement().workspace))

    def write(self, path: str | Path) -> Path:
        import json

        Path(path).write_text(json.dumps(vars(self), indent=2))
        return Path(path)

    @classmethod
    def from_env(cls) -> ServeConfig:
        import json
        import os

        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise RuntimeError(
                f"{CONFIG_ENV} is not set: it names the serving config JSON (adflow serve writes it)"
            )
        return cls(**json.loads(Path(path).read_text()))


class BadRequest(ValueError):
    """A request the caller must fix (HTTP 400): the message names the problem."""


@dataclass(frozen=True)
class ModelRef:
    """`champion`, `alias:champion`, `3` or `version:3`."""

    kind: str  # alias | version
    value: str

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        kind, _, value = ref.partition(":") if ":" in ref else ("", "", ref)
        kind = kind or ("version" if value.isdigit() else "alias")
        if kind not in ("alias", "version") or not value or (kind == "version" and not value.isdigit()):
            raise BadRequest(f"model reference {ref!r}: use an alias (champion) or a version (version:3)")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class ModelPool:
    """Registered models loaded once per version; aliases re-resolved every `alias_ttl_s` so a promotion
    reaches a running server without a restart."""

    def __init__(self, tracking_uri: str, name: str, alias_ttl_s: float = 10.0, device: str = "auto") -> None:
        self.tracking_uri, self.name, self.alias_ttl_s = tracking_uri, name, alias_ttl_s
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self._models: dict[int, Any] = {}
        self._aliases: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def version(self, ref: ModelRef) -> int:
        if ref.kind == "version":
            return int(ref.value)
        hit = self._aliases.get(ref.value)
        if hit and time.monotonic() - hit[0] < self.alias_ttl_s:
            return hit[1]
        from adflow import registry
        from adflow.tracking import client

        v = registry.alias_version(client(self.tracking_uri), self.name, ref.value)
        if v is None:
            raise BadRequest(f"model {self.name} has no alias {ref.value!r}")
        self._aliases[ref.value] = (time.monotonic(), v)
        return v

    def get(self, ref: ModelRef) -> tuple[int, Any]:
        v = self.version(ref)
        with self._lock:  # one load per version even when requests race for it
            if v not in self._models:
                from mlflow.exceptions import MlflowException

                from adflow import registry

                try:
                    model = registry.load(self.tracking_uri, self.name, str(v))
                except MlflowException as e:
                    raise BadRequest(f"model {self.name} version {v} cannot be loaded: {e}") from e
                model.model.to(self.device).eval()  # CTRPredictor.predict follows the model's device
                self._models[v] = model
        return v, self._models[v]


@dataclass
class Catalogue:
    """Which creatives each item has, with their design factors (read once from the dataset)."""

    creatives: pd.DataFrame  # creative_id, item_id, factors
    by_item: dict[int, np.ndarray] = field(default_factory=dict)  # item id -> row numbers in `creatives`

    @classmethod
    def load(cls, dataset: str | Path) -> Catalogue:
        from adflow.contract import read_table

        cr = read_table(Path(dataset), "creatives")[
            ["creative_id", "item_id", *CREATIVE_FACTORS]
        ].reset_index(drop=True)
        return cls(cr, {int(k): np.asarray(v) for k, v in cr.groupby("item_id").indices.items()})


@dataclass
class Scored:
    item_id: int
    creative_id: int
    score: float
    cold: bool  # not in the serving model's item vocabulary: scored from content and creative only


@dataclass
class RankRequest:
    user_id: int
    item_ids: list[int]
    model: str = "champion"  # registry alias or version (ModelRef)
    at: float | None = None  # unix seconds the request is made at (None: now); feature ages are taken from it


@dataclass
class Ranking:
    model_version: int
    ranked: list[Scored]  # every catalogue candidate with its best creative, best first
    unranked: list[int]  # ids not in the catalogue: nothing to show


class Ranker:
    """Scores candidates for users with registered CTR models and the Feast online store.

    `rank` takes a batch of requests (BentoML's adaptive batching hands them over together): one online read
    for all their users, one for the union of their items, and one forward pass per model version.
    """

    def __init__(
        self,
        placement: Placement,
        dataset: str | Path,
        model_name: str,
        feast_dir: str | None = None,
        device: str = "auto",
    ) -> None:
        from adflow import features

        self.fs = features.store(placement, feast_dir)
        self.catalogue = Catalogue.load(dataset)
        self.pool = ModelPool(placement.tracking_uri(), model_name, device=device)

    def online(
        self, user_ids: list[int], item_ids: list[int]
    ) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
        from adflow import features

        users, items = features.online(self.fs, user_ids, item_ids)
        u = {uid: {k: users[k][r] for k in USER_COLUMNS} for r, uid in enumerate(user_ids)}
        i = {iid: {k: items[k][r] for k in ITEM_COLUMNS} for r, iid in enumerate(item_ids)}
        return u, i

    def frame(self, req: RankRequest, user: dict[str, Any], items: dict[int, dict[str, Any]]) -> pd.DataFrame:
        """One row per (candidate, creative) with the features the model reads."""
        shown = [i for i in req.item_ids if i in self.catalogue.by_item]
        rows = np.concatenate([self.catalogue.by_item[i] for i in shown]) if shown else np.zeros(0, int)
        per_item = np.array([len(self.catalogue.by_item[i]) for i in shown], dtype=int)
        frame = self.catalogue.creatives.iloc[rows].reset_index(drop=True)
        n = len(frame)
        frame["user_id"] = int(req.user_id)
        frame["position"] = 1
        frame["event_timestamp"] = pd.Timestamp(time.time() if req.at is None else req.at, unit="s", tz="UTC")
        for k in USER_COLUMNS:
            v = user[k]
            frame[k] = pd.Series([v] * n, dtype=object) if isinstance(v, list) or v is None else v
        frame["segment"] = frame["segment"].fillna("")
        for k in ITEM_COLUMNS:
            vals = np.array([0 if items[i][k] is None else items[i][k] for i in shown], dtype=float)
            frame[k] = np.repeat(vals, per_item)
        return frame

    def rank(self, reqs: list[RankRequest]) -> list[Ranking]:
        for r in reqs:
            check_candidates(r.item_ids)
        refs = [ModelRef.parse(r.model) for r in reqs]
        models = [self.pool.get(ref) for ref in refs]
        user_ids = list(dict.fromkeys(int(r.user_id) for r in reqs))
        item_ids = list(dict.fromkeys(i for r in reqs for i in r.item_ids if i in self.catalogue.by_item))
        if not item_ids:
            # no candidate of the batch is in the catalogue: nothing to score, so no online read (Feast's read
            # of zero entity rows raises an IndexError); every id comes back unranked
            return [Ranking(v, [], list(r.item_ids)) for r, (v, _) in zip(reqs, models, strict=True)]
        users, items = self.online(user_ids, item_ids)
        frames = [self.frame(r, users[int(r.user_id)], items) for r in reqs]
        scores: list[np.ndarray] = [np.zeros(0)] * len(reqs)
        for version in dict.fromkeys(v for v, _ in models):
            idx = [k for k, (v, _) in enumerate(models) if v == version]
            model = next(m for v, m in models if v == version)
            batch = pd.concat([frames[k] for k in idx], ignore_index=True)
            p = model.predict(batch) if len(batch) else np.zeros(0)
            bounds = np.cumsum([0, *(len(frames[k]) for k in idx)])
            for j, k in enumerate(idx):
                scores[k] = p[bounds[j] : bounds[j + 1]]
        out = []
        for r, (version, model), frame, p in zip(reqs, models, frames, scores, strict=True):
            # per request: arms of one batch can serve models trained on different item vocabularies
            cold = model.encoder.is_cold(frame)
            best: dict[int, Scored] = {}
            for item, creative, s, c in zip(frame["item_id"], frame["creative_id"], p, cold, strict=True):
                if int(item) not in best or s > best[int(item)].score:
                    best[int(item)] = Scored(int(item), int(creative), float(s), bool(c))
            ranked = sorted(best.values(), key=lambda x: (-x.score, x.item_id))
            unknown = [i for i in r.item_ids if i not in self.catalogue.by_item]
            out.append(Ranking(version, ranked, unknown))
        return out

    def creatives(
        self, model: str, user_id: int, item_id: int, at: float | None = None
    ) -> tuple[int, pd.DataFrame]:
        """Every creative of one item scored for the user, best first, with its design factors."""
        if item_id not in self.catalogue.by_item:
            raise BadRequest(f"item {item_id} is not in the catalogue")
        version, m = self.pool.get(ModelRef.parse(model))
        users, items = self.online([int(user_id)], [int(item_id)])
        req = RankRequest(int(user_id), [int(item_id)], model, at)
        frame = self.frame(req, users[int(user_id)], items)
        frame["score"] = m.predict(frame)
        cols = ["creative_id", "score", *CREATIVE_FACTORS]
        return version, frame[cols].sort_values("score", ascending=False).reset_index(drop=True)


def check_candidates(item_ids: list[int]) -> None:
    if not item_ids:
        raise BadRequest("item_ids is empty: send the candidate items to rank")
    if len(item_ids) > MAX_CANDIDATES:
        raise BadRequest(f"{len(item_ids)} candidates: at most {MAX_CANDIDATES} per request")
    if len(set(item_ids)) != len(item_ids):
        dup = sorted({i for i in item_ids if item_ids.count(i) > 1})[:5]
        raise BadRequest(f"item_ids has duplicates: {dup}")


def explain_choice(table: pd.DataFrame) -> dict[str, Any]:
    """Why the best-scored creative beats the runner-up: the design factors that differ, in words."""
    best = table.iloc[0]
    out: dict[str, Any] = {"creative_id": int(best["creative_id"]), "score": float(best["score"])}
    if len(table) < 2:
        return {**out, "rationale": "the item has one creative"}
    other = table.iloc[1]
    words = {
        "prominence": "product prominence",
        "clutter": "background clutter",
        "legibility": "text legibility",
    }
    diffs = []
    for f, name in words.items():
        d = float(best[f]) - float(other[f])
        if abs(d) >= 0.1:
            diffs.append(f"{'more' if d > 0 else 'less'} {name} ({best[f]:.2f} vs {other[f]:.2f})")
    if best["theme"] != other["theme"]:
        diffs.append(f"a {best['theme']} theme instead of {other['theme']}")
    gap = float(best["score"]) - float(other["score"])
    why = "; ".join(diffs) if diffs else "nearly identical design factors"
    out["runner_up"] = int(other["creative_id"])
    out["rationale"] = (
        f"creative {int(best['creative_id'])} scores {best['score']:.4f} against {other['score']:.4f} for creative "
        f"{int(other['creative_id'])} (+{gap:.4f}): {why}"
    )
    return out
