"""The synthetic world's ground truth: learnable, deterministic, with cold start and consistent pair labels."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from adflow.contract import PANDAS_DTYPES, TABLES, read_manifest
from adflow.data.world import COLOUR_NAMES, FACTOR_TEXT, STYLES, appeal, generate, pair_verdict

from .conftest import small_settings


def _digest(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(pd.read_parquet(p).to_csv().encode()).hexdigest()
        for p in sorted(root.glob("*.parquet"))
    }


def test_tables_follow_the_contract(small_world: Path) -> None:
    manifest = read_manifest(small_world)
    assert manifest["source"] == "synthetic"
    for name, t in TABLES.items():
        df = pd.read_parquet(small_world / f"{name}.parquet")
        assert list(df.columns) == t.column_names, name
        assert len(df) == manifest["rows"][name] > 0
        for c in t.columns:
            if not c.nullable:
                assert df[c.name].notna().all(), f"{name}.{c.name}"
            if c.kind in ("int", "float", "ts") and not c.nullable:
                assert str(df[c.name].dtype) == PANDAS_DTYPES[c.kind], f"{name}.{c.name}"
    items = pd.read_parquet(small_world / "items.parquet")
    assert all((small_world / p).is_file() for p in items["image_path"])
    assert ((items.box_x1 > items.box_x0) & (items.box_y1 > items.box_y0)).all()


def test_same_seed_same_world_other_seed_other_world(small_world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(small_settings(tmp_path).world, again)
    assert _digest(again) == _digest(small_world)
    other = tmp_path / "other"
    generate(small_settings(tmp_path, "world.seed=8").world, other)
    assert _digest(other)["impressions.parquet"] != _digest(small_world)["impressions.parquet"]


def test_refuses_to_overwrite_a_world(small_world: Path) -> None:
    with pytest.raises(FileExistsError):
        generate(small_settings(small_world.parent).world, small_world)


def test_clicks_follow_the_ground_truth(small_world: Path) -> None:
    imp = pd.read_parquet(small_world / "impressions.parquet")
    truth = pd.read_parquet(small_world / "truth" / "impressions.parquet")
    meta = json.loads((small_world / "truth" / "meta.json").read_text())
    assert (imp["impression_id"] == truth["impression_id"]).all()
    oracle = roc_auc_score(imp["click"], truth["p_click"])
    assert oracle == pytest.approx(meta["oracle_auc"])
    assert oracle > 0.7  # planted structure is strong enough to learn
    assert abs(imp["click"].mean() - truth["p_click"].mean()) < 0.02  # clicks are calibrated to the truth
    # each term of the click model carries signal on its own
    for term in ("content", "appeal", "pos_term"):
        assert roc_auc_score(imp["click"], truth[term]) > 0.52, term
    # top positions get more clicks (position bias)
    ctr_by_pos = imp.groupby("position")["click"].mean()
    assert ctr_by_pos.iloc[0] > ctr_by_pos.iloc[-1]


def test_history_carries_the_whole_taste(small_world: Path) -> None:
    """Pre-window clicks reflect category, colour and style taste, so content interest is learnable from them."""
    users = pd.read_parquet(small_world / "truth" / "users.parquet")
    items = pd.read_parquet(small_world / "truth" / "items.parquet")
    meta = json.loads((small_world / "truth" / "meta.json").read_text())
    beh = pd.read_parquet(small_world / "behaviour.parquet")
    hist = beh[(beh["event_type"] == "click") & (beh["ts"] < pd.Timestamp(meta["window_start"]))]
    hist = hist.merge(items, on="item_id").merge(users, on="user_id")
    assert len(hist) > 5 * len(users)
    # a clicked item's colour (style) is one the user likes more than a catalog item of the same browse would
    # be: the mean taste for the clicked value beats the catalog-weighted mean taste for every value
    for attr, pref_col, values, lift in (
        ("colour", "colour_pref", list(COLOUR_NAMES), 1.15),
        ("style", "style_pref", list(STYLES), 1.08),
    ):
        share = items[attr].value_counts(normalize=True).reindex(values, fill_value=0.0).to_numpy()
        prefs = np.stack(hist[pref_col].to_numpy())
        clicked = prefs[np.arange(len(hist)), hist[attr].map(values.index).to_numpy()]
        assert clicked.mean() > lift * (prefs @ share).mean(), attr
    # and the category taste, more strongly: most history clicks are in one of the user's top-2 categories
    top2 = [set(np.argsort(-np.asarray(p))[:2]) for p in hist["cat_pref"]]
    in_top2 = np.mean([c in t for c, t in zip(hist["category_index"], top2, strict=True)])
    assert in_top2 > 0.6


def test_cold_start_items_exist_and_respect_launch(small_world: Path) -> None:
    items = pd.read_parquet(small_world / "items.parquet")
    truth_items = pd.read_parquet(small_world / "truth" / "items.parquet")
    imp = pd.read_parquet(small_world / "impressions.parquet")
    beh = pd.read_parquet(small_world / "behaviour.parquet")
    cold = set(truth_items.loc[truth_items.is_cold, "item_id"])
    assert cold
    assert imp["item_id"].isin(cold).sum() > 0  # cold items do get shown
    launch = items.set_index("item_id")["launch_ts"]
    assert (imp["ts"].to_numpy() >= launch.reindex(imp["item_id"]).to_numpy()).all()
    assert (beh["ts"].to_numpy() >= launch.reindex(beh["item_id"]).to_numpy()).all()
    window_start = pd.Timestamp(json.loads((small_world / "truth" / "meta.json").read_text())["window_start"])
    first_shown = imp.groupby("item_id")["ts"].min()
    assert (first_shown.reindex(sorted(cold)).dropna() > window_start).all()


def test_pair_labels_agree_with_the_appeal_model(small_world: Path) -> None:
    pairs = pd.read_parquet(small_world / "creative_pairs.parquet")
    creatives = pd.read_parquet(small_world / "creatives.parquet").set_index("creative_id")
    appeal_truth = pd.read_parquet(small_world / "truth" / "creative_appeal.parquet").set_index("creative_id")
    assert set(pairs["label"]) == {"A", "B"}
    assert 0.3 < (pairs["label"] == "A").mean() < 0.7
    assert set(pairs["split"]) == {"train", "test", "test_unseen"}
    assert not set(pairs.loc[pairs.split == "test_unseen", "item_id"]) & set(
        pairs.loc[pairs.split == "train", "item_id"]
    )
    for row in pairs.itertuples():
        a, b = creatives.loc[row.creative_a], creatives.loc[row.creative_b]
        assert a.item_id == b.item_id == row.item_id
        better = (
            "A"
            if appeal_truth.at[row.creative_a, row.user_segment]
            > appeal_truth.at[row.creative_b, row.user_segment]
            else "B"
        )
        assert row.label == better
        label, deciding, _ = pair_verdict(a.to_dict(), b.to_dict(), row.user_segment)
        assert (label, deciding) == (row.label, row.deciding_factor)
        assert f"Deciding factor: {FACTOR_TEXT[deciding]}, which favours {label}." in row.rationale


def test_a_pair_drawn_twice_stays_in_one_split(small_world: Path, tmp_path: Path) -> None:
    """The label is a function of (item, the two creatives, segment): pairs drawn again with that key are
    the same question, so they share a split (a held-out pair must not repeat a trained one). The pairs
    themselves are those the seed draws: as many as asked, the same ids and labels again."""
    pairs = pd.read_parquet(small_world / "creative_pairs.parquet")
    assert len(pairs) == small_settings(tmp_path).world.n_pairs
    a, b = pairs[["creative_a", "creative_b"]].min(axis=1), pairs[["creative_a", "creative_b"]].max(axis=1)
    key = list(zip(pairs["item_id"], a, b, pairs["user_segment"], strict=True))
    by_key = pairs.groupby(pd.Series(key, index=pairs.index))
    assert (by_key.size() > 1).sum() >= 5  # the small world draws some keys again: the check bites
    assert (by_key["split"].nunique() == 1).all()
    # the same key's answer is the same answer, in the table's own A-B order
    same_order = pairs["creative_a"] < pairs["creative_b"]
    canon = pairs["label"].where(same_order, pairs["label"].map({"A": "B", "B": "A"}))
    assert (canon.groupby(pd.Series(key, index=pairs.index)).nunique() == 1).all()
    again = tmp_path / "again"
    generate(small_settings(tmp_path).world, again)
    pairs2 = pd.read_parquet(again / "creative_pairs.parquet")
    assert pairs2[["pair_id", "creative_a", "creative_b", "label", "split"]].equals(
        pairs[["pair_id", "creative_a", "creative_b", "label", "split"]]
    )


def test_appeal_weights_differ_by_segment() -> None:
    prom, clut, leg = np.array([0.9, 0.3]), np.array([0.5, 0.5]), np.array([0.1, 0.9])
    theme = np.array(["cool", "cool"])
    # a prominent product with unreadable text vs. a small product with readable text
    assert appeal(prom, clut, leg, theme, "brand_lover")[0] > appeal(prom, clut, leg, theme, "brand_lover")[1]
    assert (
        appeal(prom, clut, leg, theme, "bargain_hunter")[0]
        < appeal(prom, clut, leg, theme, "bargain_hunter")[1]
    )
