"""The synthetic world's click model, read back from the truth it wrote (`<dataset>/truth/`).

The traffic simulator draws clicks from it for whatever the serving stack shows (item, creative, position),
and the A/B analysis compares the measured lift with the true one. It is the same formula the world drew its
logged clicks with (adflow/data/world.py), so on logged impressions it reproduces their `p_click` exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from adflow.contract import read_table
from adflow.data.render import STYLES
from adflow.data.world import (
    COLOUR_NAMES,
    SEGMENTS,
    W_APPEAL,
    W_CONTENT,
    W_POPULARITY,
    W_POSITION,
    content_score,
)


class NoTruthError(FileNotFoundError):
    """The dataset is not a synthetic world (imported data has no ground truth to simulate clicks with)."""


@dataclass
class ClickModel:
    intercept: float
    n_categories: int
    cat_pref: np.ndarray  # [user row, category]
    colour_pref: np.ndarray
    style_pref: np.ndarray
    segment: np.ndarray  # [user row] segment index
    user_row: dict[int, int]
    item_row: dict[int, int]
    item_cat: np.ndarray
    item_colour: np.ndarray
    item_style: np.ndarray
    popularity: np.ndarray
    creative_row: dict[int, int]
    appeal: np.ndarray  # [creative row, segment], centred as the world centres it

    @classmethod
    def load(cls, dataset: str | Path) -> ClickModel:
        truth = Path(dataset) / "truth"
        if not (truth / "meta.json").exists():
            raise NoTruthError(f"{dataset} has no truth/ folder: only a synthetic world can simulate clicks")
        meta = json.loads((truth / "meta.json").read_text())
        users = pd.read_parquet(truth / "users.parquet")
        items = pd.read_parquet(truth / "items.parquet")
        app = pd.read_parquet(truth / "creative_appeal.parquet")
        catalog = read_table(Path(dataset), "items")
        appeal = app[list(SEGMENTS)].to_numpy(float)
        return cls(
            intercept=float(meta["intercept"]),
            n_categories=int(catalog["category"].nunique()),
            cat_pref=np.stack(users["cat_pref"].to_numpy()),
            colour_pref=np.stack(users["colour_pref"].to_numpy()),
            style_pref=np.stack(users["style_pref"].to_numpy()),
            segment=users["segment"].map({s: k for k, s in enumerate(SEGMENTS)}).to_numpy(int),
            user_row={int(u): k for k, u in enumerate(users["user_id"])},
            item_row={int(i): k for k, i in enumerate(items["item_id"])},
            item_cat=items["category_index"].to_numpy(int),
            item_colour=items["colour"].map({c: k for k, c in enumerate(COLOUR_NAMES)}).to_numpy(int),
            item_style=items["style"].map({s: k for k, s in enumerate(STYLES)}).to_numpy(int),
            popularity=items["popularity"].to_numpy(float),
            creative_row={int(c): k for k, c in enumerate(app["creative_id"])},
            appeal=appeal - appeal.mean(),
        )

    @property
    def user_ids(self) -> np.ndarray:
        return np.fromiter(self.user_row, dtype=np.int64)

    def p_click(
        self, user_ids: np.ndarray, item_ids: np.ndarray, creative_ids: np.ndarray, positions: np.ndarray
    ) -> np.ndarray:
        """True click probability of each shown (user, item, creative, position)."""
        u = np.array([self.user_row[int(x)] for x in np.asarray(user_ids)], dtype=np.int64)
        i = np.array([self.item_row[int(x)] for x in np.asarray(item_ids)], dtype=np.int64)
        c = np.array([self.creative_row[int(x)] for x in np.asarray(creative_ids)], dtype=np.int64)
        content = content_score(
            self.cat_pref[u, self.item_cat[i]],
            self.colour_pref[u, self.item_colour[i]],
            self.style_pref[u, self.item_style[i]],
            self.n_categories,
        )
        z = (
            self.intercept
            + W_CONTENT * content
            + W_APPEAL * self.appeal[c, self.segment[u]]
            - W_POSITION * np.log(np.asarray(positions, dtype=float))
            + W_POPULARITY * self.popularity[i]
        )
        return np.asarray(1.0 / (1.0 + np.exp(-z)))
