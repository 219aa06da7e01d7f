"""The synthetic ad world: a catalog, creatives, users, searches, impressions and clicks with known truth.

    adflow data synth --preset tiny --out data/tiny      # well under a minute on 2 cores

The click model (the truth every CTR model is scored against):

    logit = b0 + W_CONTENT * content(u, i) + W_APPEAL * appeal(creative, segment(u))
               - W_POSITION * log(position) + W_POPULARITY * popularity(i)

- content(u, i): the user's latent taste for the item's category, colour and style (log-ratios to a
  uniform taste; colour and style weigh nearly as much as category). Category is the object's shape in the
  image, colour its fill and the title's colour word, style a mark and a title word: a content model can
  read it; an ID model must learn it item by item, and cannot for cold-start items.
- the behaviour history before the window is drawn with the same content term (browse by category taste,
  click with probability proportional to exp(content)), so past clicks reveal the whole taste.
- appeal(creative, segment): the creative's design factors weighted per user segment (SEGMENT_WEIGHTS).
  It also labels CreativePairs, and the deciding factor is the one that contributes most to the winner.
- popularity(i): an ID-level effect no picture shows (what collaborative signals capture).
- b0 is solved so the mean true click probability is `base_ctr`.

Cold-start items launch in the window's last quarter: no history, few impressions. Everything is drawn
from one seeded generator, so the same seed and config give the same dataset, byte for byte in the tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from adflow.config import WorldConfig
from adflow.contract import write_manifest, write_table
from adflow.data.render import COLOURS, SHAPES, STYLES, THEMES, render_creative, render_item
from adflow.progress import Progress, log

STAGE = "synth"
NOUNS = (
    ("watch", "handbag", "lamp", "earring", "brooch", "mug", "sneaker", "backpack"),
    ("smartwatch", "wallet", "desklamp", "pendant", "hairclip", "teapot", "sandal", "suitcase"),
)
MATERIALS = ("leather", "cotton", "metal", "plastic", "wood")
BRANDS = (
    "Arlo", "Bexa", "Corvo", "Dune", "Elia", "Fenn", "Gala", "Hoku", "Ivra", "Juno",
    "Kato", "Lumo", "Mira", "Nox", "Orla", "Pima", "Quill", "Rhea", "Sol", "Tova",
)  # fmt: skip
COLOUR_NAMES = tuple(COLOURS)
THEME_NAMES = tuple(THEMES)
SEGMENTS = ("bargain_hunter", "brand_lover", "trend_seeker", "practical")
SEGMENT_TEXT = {
    "bargain_hunter": "a bargain hunter who reads prices and offers",
    "brand_lover": "a brand lover who wants to see the product itself",
    "trend_seeker": "a trend seeker drawn to warm, lively designs",
    "practical": "a practical shopper put off by busy pictures",
}
# How much each design factor moves appeal, per segment. theme: bonus for the segment's favourite theme.
SEGMENT_WEIGHTS: dict[str, dict[str, float]] = {
    "bargain_hunter": {"prominence": 0.6, "clutter": -0.6, "legibility": 1.6, "theme": 0.6},
    "brand_lover": {"prominence": 1.6, "clutter": -0.8, "legibility": 0.4, "theme": 0.6},
    "trend_seeker": {"prominence": 0.8, "clutter": -0.4, "legibility": 0.5, "theme": 0.9},
    "practical": {"prominence": 1.0, "clutter": -1.6, "legibility": 0.8, "theme": 0.5},
}
FAVOURITE_THEME = {
    "bargain_hunter": "bright",
    "brand_lover": "dark",
    "trend_seeker": "warm",
    "practical": "cool",
}
FACTOR_TEXT = {
    "prominence": "product prominence",
    "clutter": "background clutter",
    "legibility": "text legibility",
    "theme": "colour theme",
}
W_CONTENT, W_APPEAL, W_POSITION, W_POPULARITY = 1.0, 0.8, 0.5, 0.6
COLOUR_W, STYLE_W = 0.8, 0.6  # within content(u, i), relative to category taste (weight 1)
PROTOCOL = (
    "Protocol: compare product prominence, background clutter, text legibility and colour theme, "
    "weigh them by what this user cares about, then decide."
)


def category_names(n: int) -> list[str]:
    return [NOUNS[k // len(SHAPES)][k % len(SHAPES)] for k in range(n)]


def category_visual(k: int) -> tuple[str, bool]:
    """Category index -> (shape, striped)."""
    return SHAPES[k % len(SHAPES)], k >= len(SHAPES)


# ---------------------------------------------------------------- ground-truth functions


def factor_contributions(a: dict[str, object], b: dict[str, object], segment: str) -> dict[str, float]:
    """Per-factor contribution to appeal(A) - appeal(B) for a segment. Inputs: factor dicts of two creatives."""
    w = SEGMENT_WEIGHTS[segment]
    fav = FAVOURITE_THEME[segment]
    out = {f: w[f] * (float(a[f]) - float(b[f])) for f in ("prominence", "clutter", "legibility")}  # type: ignore[arg-type]
    out["theme"] = w["theme"] * (float(a["theme"] == fav) - float(b["theme"] == fav))
    return out


def appeal(
    prominence: np.ndarray, clutter: np.ndarray, legibility: np.ndarray, theme: np.ndarray, segment: str
) -> np.ndarray:
    """Appeal of creatives (vectorised over arrays of factors) to one segment."""
    w = SEGMENT_WEIGHTS[segment]
    return (
        w["prominence"] * prominence
        + w["clutter"] * clutter
        + w["legibility"] * legibility
        + w["theme"] * (np.asarray(theme) == FAVOURITE_THEME[segment])
    )


def pair_verdict(a: dict[str, object], b: dict[str, object], segment: str) -> tuple[str, str, float]:
    """(label, deciding factor, appeal margin) of a creative pair for a segment, from the ground truth."""
    contrib = factor_contributions(a, b, segment)
    diff = sum(contrib.values())
    label = "A" if diff > 0 else "B"
    sign = 1.0 if diff > 0 else -1.0
    deciding = max(contrib, key=lambda f: sign * contrib[f])
    return label, deciding, abs(diff)


def content_score(
    p_cat: np.ndarray, p_colour: np.ndarray, p_style: np.ndarray, n_categories: int
) -> np.ndarray:
    """content(u, i) from the user's taste for the item's category, colour and style (probabilities).

    Log-ratios to a uniform taste, clipped: strong dislikes do not dominate the logit. Colour and style weigh
    nearly as much as category: within a category, what a user clicks is decided by what the item looks like,
    which is what a content model reads and an ID model cannot for new items.
    """
    c = np.clip(np.log(n_categories * p_cat + 1e-9), -3.0, 2.0)
    c = c + COLOUR_W * np.clip(np.log(len(COLOURS) * p_colour + 1e-9), -2.0, 1.5)
    c = c + STYLE_W * np.clip(np.log(len(STYLES) * p_style + 1e-9), -2.0, 1.5)
    return np.asarray(c * 0.6)


LEVELS = {  # what the protocol says about one creative: (upper bounds, words) per design factor
    "prominence": ((0.48, 0.72), ("product small", "product medium", "product large")),
    "clutter": ((1 / 3, 2 / 3), ("background clean", "some clutter", "background busy")),
    "legibility": ((1 / 3, 2 / 3), ("text faint", "text readable", "text crisp")),
}


def describe_creative(f: dict[str, object]) -> str:
    """One creative by the protocol, in words: each factor's level, then the colour theme."""
    words = []
    for factor, (bounds, names) in LEVELS.items():
        x = float(f[factor])  # type: ignore[arg-type]
        words.append(names[sum(x >= b for b in bounds)])
    return ", ".join([*words, f"{f['theme']} theme"])


def pair_rationale(a: dict[str, object], b: dict[str, object], segment: str) -> str:
    """A chain-of-thought rationale from the ground truth: each creative assessed by the protocol, then the
    decisive factor named. Each creative is described on its own (levels, not "A is larger than B"): a
    selector can read one creative's level from its image, and then weigh levels in its reasoning."""
    label, deciding, _ = pair_verdict(a, b, segment)
    return (
        f"The user is {SEGMENT_TEXT[segment]}. A: {describe_creative(a)}. B: {describe_creative(b)}. "
        f"Deciding factor: {FACTOR_TEXT[deciding]}, which favours {label}."
    )


# ---------------------------------------------------------------- generation


@dataclass
class WorldSummary:
    out_dir: str
    rows: dict[str, int]
    oracle_auc: float
    click_rate: float
    cold_start_items: int
    cold_start_impressions: int
    seconds: float


def _ts(start: pd.Timestamp, seconds: np.ndarray) -> pd.Series:
    return pd.Series(start + pd.to_timedelta(np.asarray(seconds, dtype=np.int64), unit="s"))


def _solve_intercept(logit_wo_b0: np.ndarray, target: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        mean = float(np.mean(1.0 / (1.0 + np.exp(-(logit_wo_b0 + mid)))))
        lo, hi = (mid, hi) if mean < target else (lo, mid)
    return (lo + hi) / 2


def _draw_in_category(
    rng: np.random.Generator, cats: np.ndarray, by_cat: list[np.ndarray], cdf_by_cat: list[np.ndarray]
) -> np.ndarray:
    """One item per entry of `cats`, by popularity within the category (vectorised per category)."""
    out = np.empty(len(cats), dtype=np.int64)
    for k in np.unique(cats):
        idx = np.nonzero(cats == k)[0]
        pos = np.searchsorted(cdf_by_cat[k], rng.random(len(idx)) * cdf_by_cat[k][-1])
        out[idx] = by_cat[k][np.minimum(pos, len(by_cat[k]) - 1)]
    return out


def generate(cfg: WorldConfig, out_dir: str | Path) -> WorldSummary:
    """Generate the world into `out_dir` (created; must be empty or absent)."""
    import time

    from sklearn.metrics import roc_auc_score

    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: refusing to mix two worlds in one folder")
    (out / "images" / "items").mkdir(parents=True, exist_ok=True)
    (out / "images" / "creatives").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    K, n_items, n_users = cfg.n_categories, cfg.n_items, cfg.n_users
    start = pd.Timestamp(cfg.start_date, tz="UTC")
    hist_s, win_s = cfg.history_days * 86400, cfg.n_days * 86400
    window_start = hist_s  # seconds after `start`

    # ---- items
    cat = rng.integers(0, K, n_items)
    cat[:K] = np.arange(K)  # every category present
    colour = rng.integers(0, len(COLOURS), n_items)
    style = rng.integers(0, len(STYLES), n_items)
    material = rng.integers(0, len(MATERIALS), n_items)
    brand = rng.integers(0, len(BRANDS), n_items)
    popularity = rng.normal(0.0, 1.0, n_items)
    style_mult = np.array([1.0, 1.2, 3.0, 0.8])[style]
    price = np.round(np.exp(rng.normal(3.0 + 0.15 * (cat % 8), 0.35, n_items)) * style_mult, 2)
    n_cold = round(cfg.cold_start_frac * n_items)
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[rng.choice(np.arange(K, n_items), size=min(n_cold, n_items - K), replace=False)] = True
    launch = np.where(
        is_cold,
        rng.uniform(window_start + 0.75 * win_s, window_start + 0.95 * win_s, n_items),
        rng.uniform(-60 * 86400, 0, n_items),
    ).astype(np.int64)
    cat_names = category_names(K)
    item_ids = np.arange(1, n_items + 1)
    titles, attrs, paths, boxes = [], [], [], []
    p = Progress(STAGE, "catalog images", n_items)
    for j in range(n_items):
        shape, striped = category_visual(int(cat[j]))
        col, sty = COLOUR_NAMES[colour[j]], STYLES[style[j]]
        mat, br = MATERIALS[material[j]], BRANDS[brand[j]]
        titles.append(f"{br} {sty} {col} {mat} {cat_names[cat[j]]}")
        attrs.append(json.dumps({"colour": col, "style": sty, "material": mat, "brand": br}, sort_keys=True))
        img, box = render_item(rng, cfg.image_size, shape, col, sty, striped)
        rel = f"images/items/{item_ids[j]}.png"
        img.save(out / rel)
        paths.append(rel)
        boxes.append(box)
        p.advance()
    b = np.array(boxes)
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": titles,
            "category": [cat_names[k] for k in cat],
            "attributes": attrs,
            "price": price,
            "image_path": paths,
            "box_x0": b[:, 0],
            "box_y0": b[:, 1],
            "box_x1": b[:, 2],
            "box_y1": b[:, 3],
            "launch_ts": _ts(start, launch),
        }
    )

    # ---- creatives
    n_c = cfg.creatives_per_item
    c_item = np.repeat(np.arange(n_items), n_c)
    nc_total = len(c_item)
    prom = rng.uniform(0.25, 0.95, nc_total)
    clut = rng.uniform(0.0, 1.0, nc_total)
    leg = rng.uniform(0.0, 1.0, nc_total)
    theme = np.array(THEME_NAMES)[rng.integers(0, len(THEMES), nc_total)]
    creative_ids = np.arange(1, nc_total + 1)
    c_paths = []
    p = Progress(STAGE, "creative images", nc_total)
    for k in range(nc_total):
        j = c_item[k]
        shape, striped = category_visual(int(cat[j]))
        img = render_creative(
            rng, cfg.image_size, shape, COLOUR_NAMES[colour[j]], STYLES[style[j]], striped,
            float(prom[k]), float(clut[k]), float(leg[k]), str(theme[k]), BRANDS[brand[j]].upper(),
        )  # fmt: skip
        rel = f"images/creatives/{creative_ids[k]}.png"
        img.save(out / rel)
        c_paths.append(rel)
        p.advance()
    creatives = pd.DataFrame(
        {
            "creative_id": creative_ids,
            "item_id": item_ids[c_item],
            "image_path": c_paths,
            "prominence": prom,
            "clutter": clut,
            "legibility": leg,
            "theme": theme,
        }
    )
    appeal_by_seg = {s: appeal(prom, clut, leg, theme, s) for s in SEGMENTS}

    # ---- users
    cat_pref = rng.dirichlet(np.full(K, 0.3), n_users)
    colour_pref = rng.dirichlet(np.full(len(COLOURS), 0.5), n_users)
    style_pref = rng.dirichlet(np.full(len(STYLES), 1.0), n_users)
    seg_idx = rng.integers(0, len(SEGMENTS), n_users)
    activity = np.exp(rng.normal(0.0, 0.5, n_users))
    user_ids = np.arange(1, n_users + 1)
    users = pd.DataFrame({"user_id": user_ids, "segment": np.array(SEGMENTS)[seg_idx]})

    def content(u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return content_score(cat_pref[u, cat[i]], colour_pref[u, colour[i]], style_pref[u, style[i]], K)

    by_cat = [np.nonzero(cat == k)[0] for k in range(K)]
    cdf_by_cat = [np.cumsum(np.exp(0.5 * popularity[ix])) for ix in by_cat]
    warm_by_cat = [ix[~is_cold[ix]] for ix in by_cat]
    warm_cdf = [np.cumsum(np.exp(0.5 * popularity[ix])) for ix in warm_by_cat]

    def pick_users_items(u: np.ndarray, at_s: np.ndarray, match: float) -> np.ndarray:
        """Items for (user, time) draws: category from taste (prob `match`) or uniform; launched by then."""
        cats = np.where(
            rng.random(len(u)) < match, _sample_rows(rng, cat_pref[u]), rng.integers(0, K, len(u))
        )
        items_ = _draw_in_category(rng, cats, by_cat, cdf_by_cat)
        for _ in range(3):  # not launched yet: redraw, then fall back to a warm item of the category
            bad = launch[items_] > at_s
            if not bad.any():
                break
            items_[bad] = _draw_in_category(rng, cats[bad], by_cat, cdf_by_cat)
        bad = launch[items_] > at_s
        if bad.any():
            items_[bad] = _draw_in_category(rng, cats[bad], warm_by_cat, warm_cdf)
        return items_

    # ---- pre-window behaviour history: clicks while browsing before the window, drawn like the window's
    # clicks. Browsed items follow the user's category taste; a browsed item is clicked with probability
    # proportional to exp(W_CONTENT * content), the click model's content term at a low click rate. So the
    # history carries the whole taste (category, colour, style), as a real click log does. Accept-reject
    # over a surplus of candidates keeps the draw vectorised at full scale.
    n_hist = rng.poisson(cfg.history_events_per_user * activity)
    c_user = np.repeat(np.arange(n_users), 8 * n_hist + 4)  # sorted by user
    c_ts = rng.uniform(0, hist_s, len(c_user)).astype(np.int64)
    c_item = pick_users_items(c_user, c_ts, match=0.65)
    score = W_CONTENT * content(c_user, c_item)
    accept = rng.random(len(c_user)) < np.exp(np.minimum(score - np.quantile(score, 0.95), 0.0))
    c_user, c_ts, c_item = c_user[accept], c_ts[accept], c_item[accept]
    rank = np.arange(len(c_user)) - np.searchsorted(c_user, c_user)  # candidates come in random order
    keep = rank < n_hist[c_user]
    h_user, h_ts, h_item = c_user[keep], c_ts[keep], c_item[keep]

    # ---- sessions, queries, slates
    n_sess = np.maximum(1, rng.poisson(cfg.sessions_per_user * activity))
    s_user = np.repeat(np.arange(n_users), n_sess)
    n_s = len(s_user)
    s_ts = rng.uniform(window_start, window_start + win_s, n_s).astype(np.int64)
    s_cat = _sample_rows(rng, cat_pref[s_user])
    q_colour = np.where(rng.random(n_s) < 0.4, _sample_rows(rng, colour_pref[s_user]), -1)
    q_text = [
        (f"{COLOUR_NAMES[c]} " if c >= 0 else "") + cat_names[k] for c, k in zip(q_colour, s_cat, strict=True)
    ]
    queries = pd.DataFrame(
        {
            "query_id": np.arange(1, n_s + 1),
            "user_id": user_ids[s_user],
            "ts": _ts(start, s_ts),
            "text": q_text,
            "category": [cat_names[k] for k in s_cat],
        }
    )
    log(STAGE, f"{n_s} sessions for {n_users} users")
    L = cfg.slate_size
    sl_sess = np.repeat(np.arange(n_s), L)
    sl_user = s_user[sl_sess]
    sl_ts = s_ts[sl_sess] + np.tile(np.arange(L), n_s)  # one second apart keeps event order stable
    on_query = rng.random(len(sl_sess)) < 0.65
    sl_cat = np.where(on_query, s_cat[sl_sess], _sample_rows(rng, cat_pref[sl_user]))
    sl_item = _draw_in_category(rng, sl_cat, by_cat, cdf_by_cat)
    for _ in range(4):
        bad = launch[sl_item] > s_ts[sl_sess]
        if not bad.any():
            break
        sl_item[bad] = _draw_in_category(rng, sl_cat[bad], by_cat, cdf_by_cat)
    bad = launch[sl_item] > s_ts[sl_sess]
    sl_item[bad] = _draw_in_category(rng, sl_cat[bad], warm_by_cat, warm_cdf)
    slate = pd.DataFrame({"sess": sl_sess, "item": sl_item, "user": sl_user, "ts": sl_ts})
    slate = slate.drop_duplicates(["sess", "item"]).reset_index(drop=True)
    u, i = slate["user"].to_numpy(), slate["item"].to_numpy()
    cscore = content(u, i)
    relevance = cscore + 0.6 * popularity[i] + rng.normal(0, 1.0, len(slate))
    slate["position"] = (
        pd.Series(-relevance).groupby(slate["sess"]).rank(method="first").astype(np.int64).to_numpy()
    )
    # A random creative of the item: the creative's effect is then identifiable from the logs.
    c_pick = rng.integers(0, n_c, len(slate))
    c_row = i * n_c + c_pick
    seg_of = seg_idx[u]
    app = np.zeros(len(slate))
    for s_k, s_name in enumerate(SEGMENTS):
        m = seg_of == s_k
        app[m] = appeal_by_seg[s_name][c_row[m]]
    app_c = app - np.mean(np.concatenate(list(appeal_by_seg.values())))
    pos_term = -W_POSITION * np.log(slate["position"].to_numpy())
    z = W_CONTENT * cscore + W_APPEAL * app_c + pos_term + W_POPULARITY * popularity[i]
    b0 = _solve_intercept(z, cfg.base_ctr)
    p_click = 1.0 / (1.0 + np.exp(-(z + b0)))
    click = (rng.random(len(slate)) < p_click).astype(np.int64)
    slate["ts"] = s_ts[slate["sess"].to_numpy()] + slate["position"].to_numpy() - 1
    slate["creative_row"] = c_row
    truth_cols = {"p_click": p_click, "content": cscore, "appeal": app, "pos_term": pos_term}
    for col, values in truth_cols.items():
        slate[col] = values
    slate["click"] = click
    slate = slate.sort_values(["ts", "sess", "position"], kind="stable").reset_index(drop=True)
    n_imp = len(slate)
    sess1 = slate["sess"].to_numpy() + 1
    impressions = pd.DataFrame(
        {
            "impression_id": np.arange(1, n_imp + 1),
            "ts": _ts(start, slate["ts"].to_numpy()),
            "user_id": user_ids[slate["user"].to_numpy()],
            "item_id": item_ids[slate["item"].to_numpy()],
            "creative_id": creative_ids[slate["creative_row"].to_numpy()],
            "query_id": sess1,
            "session_id": sess1,
            "position": slate["position"].to_numpy(),
            "click": slate["click"].to_numpy(),
        }
    )
    log(STAGE, f"{n_imp} impressions, click rate {impressions['click'].mean():.3f}")

    # ---- behaviour: history clicks, then the window's clicks with some carts and purchases after them
    clicked = slate[slate["click"] == 1]
    ev_user = [h_user, clicked["user"].to_numpy()]
    ev_item = [h_item, clicked["item"].to_numpy()]
    ev_ts = [h_ts, clicked["ts"].to_numpy() + 5]
    ev_type = [np.full(len(h_user), "click", dtype=object), np.full(len(clicked), "click", dtype=object)]
    base_u, base_i, base_t = np.concatenate(ev_user), np.concatenate(ev_item), np.concatenate(ev_ts)
    cart = rng.random(len(base_u)) < 0.2
    ev_user.append(base_u[cart])
    ev_item.append(base_i[cart])
    cart_ts = base_t[cart] + rng.integers(60, 600, int(cart.sum()))
    ev_ts.append(cart_ts)
    ev_type.append(np.full(int(cart.sum()), "cart", dtype=object))
    buy = rng.random(int(cart.sum())) < 0.35
    ev_user.append(base_u[cart][buy])
    ev_item.append(base_i[cart][buy])
    ev_ts.append(cart_ts[buy] + rng.integers(600, 3600, int(buy.sum())))
    ev_type.append(np.full(int(buy.sum()), "purchase", dtype=object))
    ev = pd.DataFrame(
        {
            "user": np.concatenate(ev_user),
            "item": np.concatenate(ev_item),
            "t": np.concatenate(ev_ts),
            "event_type": np.concatenate(ev_type),
        }
    )
    ev = ev.sort_values(["t", "user", "item"], kind="stable").reset_index(drop=True)
    behaviour = pd.DataFrame(
        {
            "event_id": np.arange(1, len(ev) + 1),
            "ts": _ts(start, ev["t"].to_numpy()),
            "user_id": user_ids[ev["user"].to_numpy()],
            "item_id": item_ids[ev["item"].to_numpy()],
            "event_type": ev["event_type"].to_numpy(),
            "value": np.nan,
        }
    )

    # ---- creative pairs, labelled by the appeal model
    top_cats = np.argsort(-cat_pref, axis=1)[:, :2]
    interests = [
        f"segment: {SEGMENTS[seg_idx[u_]].replace('_', ' ')}; likes {cat_names[top_cats[u_, 0]]} and "
        f"{cat_names[top_cats[u_, 1]]}; favourite colour {COLOUR_NAMES[int(np.argmax(colour_pref[u_]))]}"
        for u_ in range(n_users)
    ]
    unseen = np.zeros(n_items, dtype=bool)
    unseen[rng.choice(n_items, size=round(cfg.unseen_item_frac * n_items), replace=False)] = True
    factors = creatives[["prominence", "clutter", "legibility", "theme"]].to_dict("records")
    pairs: list[dict[str, object]] = []
    # the label is a function of (item, the two creatives, segment): a pair drawn again with the same key is
    # the same question, so it joins the split its key first drew (else a held-out pair repeats a trained one)
    split_of: dict[tuple[int, int, int, str], str] = {}
    attempts = 0
    p = Progress(STAGE, "creative pairs", cfg.n_pairs)
    while len(pairs) < cfg.n_pairs and attempts < 50 * max(cfg.n_pairs, 1):
        attempts += 1
        j = int(rng.integers(0, n_items))
        ca, cb = (j * n_c + rng.choice(n_c, 2, replace=False)).tolist()
        u_ = int(rng.integers(0, n_users))
        seg = SEGMENTS[seg_idx[u_]]
        label, deciding, margin = pair_verdict(factors[ca], factors[cb], seg)
        if margin < cfg.pair_min_margin:
            continue
        if unseen[j]:
            split = "test_unseen"
        else:  # drawn for every pair, as before: the generator's stream, so every other table, stays put
            drawn = "test" if rng.random() < 0.2 else "train"
            split = split_of.setdefault((j, min(ca, cb), max(ca, cb), seg), drawn)
        pairs.append(
            {
                "pair_id": len(pairs) + 1,
                "item_id": int(item_ids[j]),
                "creative_a": int(creative_ids[ca]),
                "creative_b": int(creative_ids[cb]),
                "user_id": int(user_ids[u_]),
                "user_segment": seg,
                "user_interests": interests[u_],
                "label": label,
                "deciding_factor": deciding,
                "rationale": pair_rationale(factors[ca], factors[cb], seg),
                "split": split,
            }
        )
        p.advance()
    pair_df = pd.DataFrame(pairs) if pairs else None

    # ---- write the contract tables, then the truth beside them
    for name, df in (
        ("items", items),
        ("creatives", creatives),
        ("users", users),
        ("queries", queries),
        ("impressions", impressions),
        ("behaviour", behaviour),
    ):
        write_table(out, name, df)
    if pair_df is not None:
        write_table(out, "creative_pairs", pair_df)
    oracle_auc = (
        float(roc_auc_score(impressions["click"], slate["p_click"])) if click.min() != click.max() else 0.5
    )
    pd.DataFrame(
        {"impression_id": impressions["impression_id"], **{col: slate[col].to_numpy() for col in truth_cols}}
    ).to_parquet(out / "truth" / "impressions.parquet", index=False)
    pd.DataFrame(
        {
            "item_id": item_ids,
            "popularity": popularity,
            "category_index": cat,
            "colour": np.array(COLOUR_NAMES)[colour],
            "style": np.array(STYLES)[style],
            "is_cold": is_cold,
            "unseen_in_pairs": unseen,
        }
    ).to_parquet(out / "truth" / "items.parquet", index=False)
    pd.DataFrame(
        {
            "user_id": user_ids,
            "segment": users["segment"],
            "activity": activity,
            "cat_pref": list(cat_pref),
            "colour_pref": list(colour_pref),
            "style_pref": list(style_pref),
        }
    ).to_parquet(out / "truth" / "users.parquet", index=False)
    pd.DataFrame({"creative_id": creative_ids, **{s: appeal_by_seg[s] for s in SEGMENTS}}).to_parquet(
        out / "truth" / "creative_appeal.parquet", index=False
    )
    cold_ids = set(item_ids[is_cold].tolist())
    cold_imps = int(impressions["item_id"].isin(cold_ids).sum())
    click_rate = float(impressions["click"].mean())
    meta = {
        "intercept": b0,
        "weights": {
            "content": W_CONTENT,
            "appeal": W_APPEAL,
            "position": W_POSITION,
            "popularity": W_POPULARITY,
        },
        "oracle_auc": oracle_auc,
        "click_rate": click_rate,
        "cold_start_items": int(is_cold.sum()),
        "cold_start_impressions": cold_imps,
        "window_start": str(start + pd.Timedelta(seconds=window_start)),
        "segments": list(SEGMENTS),
    }
    (out / "truth" / "meta.json").write_text(json.dumps(meta, indent=2))
    manifest = write_manifest(out, "synthetic", {"seed": cfg.seed, "world": cfg.model_dump()})
    secs = time.perf_counter() - t0
    log(STAGE, f"world written to {out} in {secs:.1f}s (oracle AUC {oracle_auc:.3f})")
    return WorldSummary(
        out_dir=str(out),
        rows=manifest["rows"],
        oracle_auc=oracle_auc,
        click_rate=click_rate,
        cold_start_items=int(is_cold.sum()),
        cold_start_impressions=cold_imps,
        seconds=secs,
    )


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a probability matrix (inverse-CDF, vectorised)."""
    cdf = np.cumsum(probs, axis=1)
    r = rng.random(len(probs))[:, None] * cdf[:, -1:]
    return np.minimum((cdf < r).sum(axis=1), probs.shape[1] - 1)
