"""Picking the creative to show: a pairwise tournament with the selector, and the fast scorer distilled from it.

- `tournament`: every two of an item's N creatives are put to the selector in both orders (N(N-1) prompts,
  generated in one batch); a creative scores a point for every verdict in its favour, the most points wins
  (ties: the tied creative that won their direct games, else a seeded draw: never "the first one", which
  would hand a selector that always answers A a free pick). The explanation is the selector's own
  reasoning from a game the winner won against the runner-up (the one with the winner as "A" when it won
  both orders), with which creative was "A" and which "B" in it: the reasoning speaks of slots.
- `FastScorer`: generation is far too slow for the online path, so a Bradley-Terry model is distilled from
  the selector's verdicts: P(A beats B | segment) = sigmoid(w_segment . (x_A - x_B)) on the creatives'
  design factors (the creatives table's annotations). Scoring N creatives is a dot product.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow.data.world import SEGMENTS, THEME_NAMES

FACTOR_COLUMNS = ("prominence", "clutter", "legibility")


@dataclass
class Choice:
    creative_id: int
    points: dict[int, float]  # creative id -> verdicts won
    explanation: str  # the selector's reasoning in the winner's match against the runner-up
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # every prompt: (first, second, answer)
    # the creatives in slots "A" and "B" of the explained game (its reasoning says "A"/"B"); None: no game
    explained_a: int | None = None
    explained_b: int | None = None


def tournament(
    model: Any,
    processor: Any,
    title: str,
    interests: str,
    creatives: Sequence[tuple[int, Any]],
    max_new_tokens: int,
    batch_size: int = 64,
    seed: int = 0,
    instructions: bool = True,
) -> Choice:
    """The best of N creatives (id, image) for one user and item, by the selector's pairwise verdicts, asked
    as it was trained (`instructions`: `creative_model.instructions`)."""
    from adflow.creative.data import prompt
    from adflow.creative.rewards import parse
    from adflow.creative.selector import generate, user_message

    if len(creatives) == 1:
        return Choice(int(creatives[0][0]), {int(creatives[0][0]): 0.0}, "the item has one creative")
    games = list(itertools.permutations(range(len(creatives)), 2))  # both orders of every pair
    msg = user_message(prompt(title, interests, instructions))
    outs = generate(
        model,
        processor,
        [msg] * len(games),
        [[creatives[i][1], creatives[j][1]] for i, j in games],
        max_new_tokens,
        batch_size,
    )
    ids = [int(c[0]) for c in creatives]
    points = dict.fromkeys(ids, 0.0)
    reasons: dict[tuple[int, int], str] = {}  # (first, second) of a game with a winner -> its reasoning
    log: list[dict[str, Any]] = []
    for (i, j), text in zip(games, outs, strict=True):
        v = parse(text)
        winner = None if v is None else (ids[i] if v.answer == "A" else ids[j])
        if winner is not None:
            points[winner] += 1.0
            reasons[(ids[i], ids[j])] = v.think  # type: ignore[union-attr]
        log.append({"first": ids[i], "second": ids[j], "answer": v.answer if v else None, "winner": winner})
    direct: dict[int, float] = dict.fromkeys(ids, 0.0)
    top = max(points.values())
    tied = [c for c in ids if points[c] == top]
    for g in log:  # games among the tied creatives only
        if g["winner"] is not None and g["first"] in tied and g["second"] in tied:
            direct[g["winner"]] += 1.0
    draw = np.random.default_rng(seed).permutation(len(ids))
    ranked = sorted(range(len(ids)), key=lambda k: (-points[ids[k]], -direct[ids[k]], draw[k]))
    best, runner = ids[ranked[0]], ids[ranked[1]]
    # the games the winner won: against the runner-up first, then with the winner as "A", then in game order
    won = [g for g in log if g["winner"] == best and reasons.get((g["first"], g["second"]))]
    if not won:
        return Choice(best, points, "no well-formed verdict favoured it", log)
    g = min(won, key=lambda g: (runner not in (g["first"], g["second"]), g["first"] != best))
    return Choice(best, points, reasons[(g["first"], g["second"])], log, g["first"], g["second"])


def design_features(creatives: pd.DataFrame) -> np.ndarray:
    """Design factors as the scorer's features: the three levels and the colour theme one-hot."""
    x = creatives[list(FACTOR_COLUMNS)].to_numpy(np.float64)
    theme = np.stack([(creatives["theme"] == t).to_numpy(np.float64) for t in THEME_NAMES], axis=1)
    return np.hstack([x, theme])


@dataclass
class FastScorer:
    """Bradley-Terry on design factors, one weight vector per user segment (and one for unknown users)."""

    weights: dict[str, list[float]]

    def score(self, creatives: pd.DataFrame, segment: str | None) -> np.ndarray:
        w = np.asarray(self.weights.get(segment or "", self.weights["any"]))
        return design_features(creatives) @ w

    def best(self, creatives: pd.DataFrame, segment: str | None) -> int:
        return int(creatives["creative_id"].iloc[int(np.argmax(self.score(creatives, segment)))])

    def p_first(self, a: pd.DataFrame, b: pd.DataFrame, segments: Sequence[str]) -> np.ndarray:
        """P(the first creative beats the second) for aligned rows of a and b."""
        xa, xb = design_features(a), design_features(b)
        w = np.stack([np.asarray(self.weights.get(s, self.weights["any"])) for s in segments])
        return 1.0 / (1.0 + np.exp(-np.sum(w * (xa - xb), axis=1)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": "bradley_terry", "weights": self.weights}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> FastScorer:
        return cls(json.loads(Path(path).read_text())["weights"])


def fit_scorer(
    a: pd.DataFrame,
    b: pd.DataFrame,
    segments: Sequence[str],
    first_wins: np.ndarray,
    epochs: int,
    l2: float = 1e-2,
) -> FastScorer:
    """Distil verdicts (first_wins: 1 when the selector chose the first creative) into a FastScorer."""
    import torch

    d = torch.as_tensor(design_features(a) - design_features(b), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(first_wins, np.float32))
    seg = np.asarray(segments)
    weights: dict[str, list[float]] = {}
    for name in (*SEGMENTS, "any"):
        m = torch.as_tensor(seg == name) if name != "any" else torch.ones(len(seg), dtype=torch.bool)
        w = torch.zeros(d.shape[1], requires_grad=True)
        if int(m.sum()) > 0:
            opt = torch.optim.LBFGS([w], lr=0.5, max_iter=epochs)

            def closure(m: torch.Tensor = m, w: torch.Tensor = w, opt: Any = opt) -> torch.Tensor:
                opt.zero_grad()
                loss = (
                    torch.nn.functional.binary_cross_entropy_with_logits(d[m] @ w, y[m]) + l2 * (w * w).sum()
                )
                loss.backward()
                return loss

            opt.step(closure)
        weights[name] = [float(v) for v in w.detach()]
    return FastScorer(weights)


def selector_folder(stage_out: str | Path | None) -> Path | None:
    """The trained selector inside a creative stage's output folder, or None when the stage stepped aside.

    The selector folder itself is taken too, unless its stage refused to serve it (`served` null in the
    stage's creative.json: it failed creative_train.serve_min_accuracy): that is refused with the reason,
    since going one folder down must not serve what the stage judged no better than a coin."""
    if not stage_out:
        return None
    root = Path(stage_out)
    if (root / "selector.json").exists():  # already the selector itself
        stage_meta = root.parent / "creative.json"
        if stage_meta.exists():
            info = json.loads(stage_meta.read_text())
            if info.get("selector", "selector") == root.name and not info.get("served"):
                raise ValueError(
                    f"{root} is a selector its Creative4U stage does not serve ({stage_meta} says served: "
                    f"null): {info.get('note') or 'no reason recorded'}"
                )
        return root
    meta = root / "creative.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return root / info["selector"] if info.get("served") else None


class Chooser:
    """Best of N creatives for a (user, item) by the selector's tournament, from a data set's catalogue:
    what serving's `explain` runs (slow: N(N-1) generations; the online pick stays with the fast scorer)."""

    def __init__(self, selector_dir: str | Path, dataset: str | Path, device: str = "cpu") -> None:
        from adflow.contract import read_table
        from adflow.creative.data import user_interests
        from adflow.creative.selector import load_selector

        self.model, self.processor, meta = load_selector(selector_dir)
        self.model.to(device)
        self.image_size = int(meta["config"]["image_size"])
        self.max_new_tokens = int(meta["config"]["max_new_tokens"])
        # selectors saved before the setting existed were trained with the instructions
        self.instructions = bool(meta["config"].get("instructions", True))
        self.root = Path(dataset)
        self.creatives = read_table(self.root, "creatives")
        self.titles = read_table(self.root, "items").set_index("item_id")["title"]
        self.interests = user_interests(self.root)

    def choose(self, user_id: int, item_id: int) -> Choice:
        from adflow.creative.selector import load_image

        rows = self.creatives[self.creatives["item_id"] == item_id]
        if rows.empty:
            raise KeyError(f"item {item_id} has no creatives")
        images = [
            (int(c), load_image(str(self.root / p), self.image_size))
            for c, p in zip(rows["creative_id"], rows["image_path"], strict=True)
        ]
        interests = self.interests.get(int(user_id), "segment: unknown (a new user)")
        return tournament(
            self.model,
            self.processor,
            str(self.titles.get(item_id, "")),
            interests,
            images,
            self.max_new_tokens,
            seed=int(user_id) * 100_003 + int(item_id),
            instructions=self.instructions,
        )
