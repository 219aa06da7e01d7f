"""Training and evaluation material for MOON, cut from a dataset in the contract.

- product views: another photo of the same product (its core region pasted on a fresh cluttered background,
  at another place and size, colours jittered), with the new box, so the detector and the image search
  have ground truth without a second photo shoot;
- negatives: same-category groups inside a batch (hard negatives) with near duplicates masked out, and
  spatio-temporal negatives (shown in the same session but not clicked);
- behaviour pairs for post-training: search query -> clicked item, and items co-clicked in one session.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from adflow.data.render import draw_clutter


@dataclass
class Catalog:
    """Items with their texts, images (uint8 arrays), boxes and near-duplicate keys, row-aligned."""

    item_ids: np.ndarray
    titles: list[str]  # the text view: title and category
    attribute_texts: list[str]  # the visible attributes alone ("handbag red sport")
    categories: np.ndarray
    attributes: list[dict[str, str]]
    images: list[np.ndarray] | None  # None: a data set without images (text-only MOON is not offered)
    boxes: np.ndarray | None  # [N, 4] fractions, None when the data set has none
    dup_keys: np.ndarray  # items with equal keys look alike: never each other's negatives

    def __len__(self) -> int:
        return len(self.item_ids)


def load_catalog(dataset: str | Path, duplicate_keys: list[str]) -> Catalog:
    root = Path(dataset)
    items = pd.read_parquet(root / "items.parquet").sort_values("item_id").reset_index(drop=True)
    attrs = [
        json.loads(a) if isinstance(a, str) and a else {}
        for a in items.get("attributes", [None] * len(items))
    ]
    cats = items["category"].fillna("").astype(str).to_numpy()
    titles = [f"{t}. category: {c}" for t, c in zip(items["title"].fillna(""), cats, strict=True)]
    visible = [
        " ".join([c] + [str(a[k]) for k in duplicate_keys if k != "category" and k in a]).strip()
        for c, a in zip(cats, attrs, strict=True)
    ]
    keys = np.array(
        [
            "|".join(c if k == "category" else str(a.get(k, "")) for k in duplicate_keys)
            for c, a in zip(cats, attrs, strict=True)
        ]
    )
    images = None
    if "image_path" in items and items["image_path"].notna().all():
        images = [np.asarray(Image.open(root / p).convert("RGB")) for p in items["image_path"]]
    boxes = None
    cols = ["box_x0", "box_y0", "box_x1", "box_y1"]
    if images is not None and all(c in items for c in cols) and items[cols].notna().all().all():
        boxes = items[cols].to_numpy(np.float32)
    return Catalog(
        item_ids=items["item_id"].astype(int).to_numpy(),
        titles=titles,
        attribute_texts=visible,
        categories=cats,
        attributes=attrs,
        images=images,
        boxes=boxes,
        dup_keys=keys,
    )


def new_view(
    image: np.ndarray,
    box: np.ndarray | None,
    rng: np.random.Generator,
    clutter: tuple[float, float] = (0.3, 1.0),
    scale: tuple[float, float] = (0.35, 0.7),
    jitter: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """Another photo of the product: its region on a new cluttered background; returns it and the new box."""
    h, w = image.shape[:2]
    size = w
    if box is None:  # no box known: a random crop of most of the picture stands in for the product
        f = rng.uniform(0.7, 1.0)
        x0, y0 = rng.uniform(0, 1 - f, 2)
        box = np.array([x0, y0, x0 + f, y0 + f], np.float32)
    x0, y0, x1, y1 = (round(v) for v in (box[0] * w, box[1] * h, box[2] * w, box[3] * h))
    obj = Image.fromarray(image).crop((x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)))
    bg = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(90, 200, 3)))
    draw_clutter(bg, rng, float(rng.uniform(*clutter)))
    side = max(4, int(rng.uniform(*scale) * size))
    ratio = obj.size[1] / max(1, obj.size[0])
    ow, oh = side, max(4, min(size, int(side * ratio)))
    px, py = int(rng.uniform(0, size - ow + 1)), int(rng.uniform(0, size - oh + 1))
    bg.paste(obj.resize((ow, oh), Image.Resampling.BILINEAR), (px, py))
    arr = np.asarray(bg).astype(np.float32) * rng.uniform(1 - jitter, 1 + jitter, 3)
    new_box = np.array([px / size, py / size, (px + ow) / size, (py + oh) / size], np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8), new_box


def views(
    catalog: Catalog, per_item: int, seed: int, clutter: tuple[float, float] = (0.3, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """`per_item` new views of every item: images [N, V, S, S, 3] and boxes [N, V, 4]."""
    if catalog.images is None:
        raise ValueError("this data set has no item images: MOON needs them")
    rng = np.random.default_rng(seed)
    imgs, boxes = [], []
    for k, image in enumerate(catalog.images):
        box = catalog.boxes[k] if catalog.boxes is not None else None
        pairs = [new_view(image, box, rng, clutter) for _ in range(per_item)]
        imgs.append(np.stack([p[0] for p in pairs]))
        boxes.append(np.stack([p[1] for p in pairs]))
    return np.stack(imgs), np.stack(boxes)


# ---------------------------------------------------------------- negatives


def hard_negatives(i: int, catalog: Catalog, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to k items of item i's category that are neither item i nor a near duplicate of it."""
    same = np.flatnonzero(
        (catalog.categories == catalog.categories[i]) & (catalog.dup_keys != catalog.dup_keys[i])
    )
    return rng.choice(same, size=min(k, len(same)), replace=False) if len(same) else same


def batches(
    catalog: Catalog, batch: int, hard_frac: float, group: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of item batches. `hard_frac` of each batch comes in groups of one category (an anchor and
    its hard negatives), so in-batch negatives include same-category items at no extra forward pass."""
    n = len(catalog)
    order = list(rng.permutation(n))
    used = np.zeros(n, bool)
    out: list[np.ndarray] = []
    n_hard = round(batch * hard_frac) // group * group
    while order:
        rows: list[int] = []
        while len(rows) < n_hard and order:
            anchor = order.pop()
            if used[anchor]:
                continue
            group_rows = [
                anchor,
                *[int(j) for j in hard_negatives(anchor, catalog, group - 1, rng) if not used[j]],
            ][: batch - len(rows)]  # a group cut at the batch's end: rows past it stay for a later batch
            for j in group_rows:
                used[j] = True
            rows += group_rows
        while len(rows) < batch and order:
            j = order.pop()
            if not used[j]:
                used[j] = True
                rows.append(j)
        if len(rows) >= 2:
            out.append(np.array(rows))
    return out


def duplicate_mask(queries: np.ndarray, candidates: np.ndarray, catalog: Catalog) -> np.ndarray:
    """[Q, C] True where candidate c is a near duplicate of query q's positive but not the positive itself."""
    qk, ck = catalog.dup_keys[queries], catalog.dup_keys[candidates]
    return (qk[:, None] == ck[None, :]) & (queries[:, None] != candidates[None, :])


# ---------------------------------------------------------------- behaviour pairs (post-training)


def behaviour_pairs(
    dataset: str | Path,
    catalog: Catalog,
    before: pd.Timestamp,
    n_negatives: int,
    seed: int,
    interest_per_user: int = 0,
) -> pd.DataFrame:
    """Post-training pairs from impressions and behaviour before `before` (never the test period):

    - query: the search text -> the clicked item; negatives: items shown in the same session, not clicked;
    - coclick: an item clicked in a session -> another item clicked in that session;
    - interest: an item a user clicked -> the next different item that user clicked (behaviour log), up to
      `interest_per_user` per user: content-interest alignment in the MIM paper's sense, since what one
      user clicks shares that user's taste (category, colour, style); no explicit negatives.
    Columns: kind, text, anchor (row of the catalog or -1), positive (row), negatives (list of rows).
    """
    root = Path(dataset)
    imps = pd.read_parquet(root / "impressions.parquet")
    imps = imps[imps["ts"] < before]
    row_of = {int(i): k for k, i in enumerate(catalog.item_ids)}
    imps = imps[imps["item_id"].astype(int).isin(row_of)]
    imps = imps.assign(row=imps["item_id"].astype(int).map(row_of))
    queries = pd.read_parquet(root / "queries.parquet") if (root / "queries.parquet").exists() else None
    text_of = dict(zip(queries["query_id"], queries["text"], strict=True)) if queries is not None else {}
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for _, s in imps.groupby("session_id", sort=True):
        clicked = s.loc[s["click"] == 1, "row"].astype(int).tolist()
        if not clicked:
            continue
        shown = s.loc[s["click"] == 0, "row"].astype(int).to_numpy()
        qid = s["query_id"].iloc[0] if "query_id" in s else None
        text = text_of.get(qid) if qid is not None and pd.notna(qid) else None
        for c in clicked:
            negs = [j for j in shown if catalog.dup_keys[j] != catalog.dup_keys[c]]
            negs = list(rng.choice(negs, size=min(n_negatives, len(negs)), replace=False)) if negs else []
            if text:
                rows.append(
                    {
                        "kind": "query",
                        "text": str(text),
                        "anchor": -1,
                        "positive": c,
                        "negatives": [int(j) for j in negs],
                    }
                )
            for d in clicked:
                if d != c:
                    rows.append(
                        {
                            "kind": "coclick",
                            "text": None,
                            "anchor": c,
                            "positive": d,
                            "negatives": [int(j) for j in negs],
                        }
                    )
    beh_path = root / "behaviour.parquet"
    if interest_per_user > 0 and beh_path.exists():
        beh = pd.read_parquet(beh_path, columns=["ts", "user_id", "item_id", "event_type"])
        beh = beh[(beh["event_type"] == "click") & (beh["ts"] < before) & beh["item_id"].isin(row_of)]
        beh = beh.sort_values(["user_id", "ts"], kind="stable")
        for _, g in beh.groupby("user_id", sort=True):
            seq = [row_of[int(i)] for i in g["item_id"]]
            nxt = [(a, b) for a, b in itertools.pairwise(seq) if a != b]
            if len(nxt) > interest_per_user:
                nxt = [nxt[k] for k in sorted(rng.choice(len(nxt), interest_per_user, replace=False))]
            rows += [
                {"kind": "interest", "text": None, "anchor": a, "positive": b, "negatives": []}
                for a, b in nxt
            ]
    return pd.DataFrame(rows, columns=["kind", "text", "anchor", "positive", "negatives"])
