"""Feature tables for Feast, built point-in-time correct from a dataset, and the store around them.

- user_behaviour: one row per user at the start (empty) and one after each of their sequence events (clicks;
  views for Taobao; ratings >= 4 for MovieLens): the last N items, their times and categories, click counts,
  category affinity (counts per clicked category, named). Each row is stamped just after its event, and an impression at time t reads the latest
  row stamped at or before t: only events strictly before t reach its features, so neither its own click
  (logged after it) nor an event logged at its own instant (a MovieLens rating is both) can leak.
- item_stats: daily snapshots of each item's impressions, clicks and smoothed CTR from impressions *before*
  that day.
- item_content: the text embedding of title, category and attributes, and MOON's image + title embedding
  when the run trained MOON (static; an empty list otherwise).
- user_profile: the user's segment (static).
"""

from __future__ import annotations

import json
import string
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow.config import FeaturesConfig, Placement
from adflow.contract import read_table
from adflow.progress import Progress, log

STAGE = "features"
REPO = Path(__file__).resolve().parents[1] / "feature_store"


# how long after an event its user_behaviour row is stamped: later than the event's own instant, earlier than
# anything the contract's timestamps can tell from it (they are whole seconds; see build_tables)
AFTER = pd.Timedelta(microseconds=1)


class FeatureJoinError(RuntimeError):
    """Feast returned a different number of rows than it was given (TTL drops, duplicate keys)."""


def sequence_events(behaviour: pd.DataFrame) -> pd.DataFrame:
    keep = behaviour["event_type"].isin(("click", "view")) | (
        (behaviour["event_type"] == "rate") & (behaviour["value"].fillna(0) >= 4)
    )
    return behaviour[keep].sort_values(["user_id", "ts", "event_id"], kind="stable")


def _epoch_s(ts: pd.Series) -> np.ndarray:
    return (ts.astype("int64") // 10**9).to_numpy()


def build_tables(
    dataset: str | Path, out: str | Path, cfg: FeaturesConfig, moon_embeddings: str | Path | None = None
) -> dict[str, int]:
    """Write the four feature tables as parquet under `out`; returns their row counts.

    `moon_embeddings`: the MOON stage's parquet (item_id, moon_embedding) for every catalog item, or None."""
    root, out_dir = Path(dataset), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    items, users = read_table(root, "items"), read_table(root, "users")
    imps, beh = read_table(root, "impressions"), read_table(root, "behaviour")
    categories = sorted(items["category"].unique())
    cat_idx = {c: i for i, c in enumerate(categories)}
    item_cat = dict(zip(items["item_id"], items["category"], strict=True))
    starts = [s.min() for s in (items["launch_ts"], imps["ts"], beh["ts"]) if len(s)]
    t0 = min(starts) - pd.Timedelta(days=1)

    # ---- user_behaviour
    seq = sequence_events(beh)
    n = cfg.seq_len
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "user_id",
            "event_timestamp",
            "hist_item_ids",
            "hist_ts",
            "hist_categories",
            "clicks_1d",
            "clicks_7d",
            "clicks_total",
            "category_affinity",
            "affinity_categories",
        )
    }

    def emit(uid: int, ts: Any, hist: deque, times: deque, total: int, aff: list[int]) -> None:
        now = int(ts.value // 10**9)
        recent = [t for t in times if now - t < 7 * 86400]
        rows["user_id"].append(uid)
        rows["event_timestamp"].append(ts)
        rows["hist_item_ids"].append([h[0] for h in reversed(hist)])
        rows["hist_ts"].append([h[1] for h in reversed(hist)])
        rows["hist_categories"].append([h[2] for h in reversed(hist)])
        rows["clicks_1d"].append(sum(1 for t in recent if now - t < 86400))
        rows["clicks_7d"].append(len(recent))
        rows["clicks_total"].append(total)
        # by name, the clicked categories only: positions in this catalog's category list would be misread by
        # a model trained on another catalog's (the champion in the gate, or in serving after a new run)
        clicked = [k for k, v in enumerate(aff) if v]
        rows["category_affinity"].append([aff[k] for k in clicked])
        rows["affinity_categories"].append([categories[k] for k in clicked])

    by_user = {uid: g for uid, g in seq.groupby("user_id", sort=True)}
    prog = Progress(STAGE, "user behaviour", len(users))
    for uid in users["user_id"]:
        hist: deque = deque(maxlen=n)
        times: deque = deque()
        aff = [0] * len(categories)
        emit(int(uid), t0, hist, times, 0, aff)
        g = by_user.get(uid)
        if g is not None:
            stamps = list(g["ts"])
            for k, (item, ts) in enumerate(zip(g["item_id"].to_numpy(), stamps, strict=True), start=1):
                sec = int(ts.value // 10**9)
                cat = item_cat.get(int(item), "")
                hist.append((int(item), sec, cat))
                times.append(sec)
                while times and sec - times[0] >= 7 * 86400:
                    times.popleft()
                if cat in cat_idx:
                    aff[cat_idx[cat]] += 1
                # one row per instant, after its last event (Feast's join and the online store each pick one
                # row per timestamp: several rows at one instant made them disagree), stamped just after it:
                # Feast joins rows at or before an impression's time, and an event logged at the impression's
                # own instant (a MovieLens rating is its impression and its label) must not reach it
                if k == len(stamps) or stamps[k] != ts:
                    emit(int(uid), ts + AFTER, hist, times, k, aff)
        prog.advance()
    user_behaviour = pd.DataFrame(rows)
    user_behaviour["snapshot_id"] = np.arange(len(user_behaviour), dtype=np.int64)

    # ---- user_profile
    user_profile = pd.DataFrame(
        {"user_id": users["user_id"], "event_timestamp": t0, "segment": users["segment"].fillna("")}
    )

    # ---- item_stats: cumulative counts before each day. Daily rows start at the first impression's day; one
    # row at t0 stands for every day before it (no counts yet, the prior's CTR: what a daily row would say).
    # A catalog's launch dates can go back decades (MovieLens' release dates from 1922): a daily grid from t0
    # was 1.36M rows for a 120-film test export (~11k days each) and would be ~60M for the whole of ml-100k.
    if len(imps):
        day0 = imps["ts"].min().floor("D")
        last_day = imps["ts"].max().floor("D") + pd.Timedelta(days=1)
        days = pd.date_range(day0, last_day, freq="D")
        d_idx = ((imps["ts"] - day0) // pd.Timedelta(days=1)).to_numpy()
        per = pd.DataFrame(
            {"item_id": imps["item_id"].to_numpy(), "d": d_idx, "imp": 1, "clk": imps["click"].to_numpy()}
        )
        daily = per.groupby(["item_id", "d"])[["imp", "clk"]].sum()
        grid = pd.MultiIndex.from_product([items["item_id"], range(len(days))], names=["item_id", "d"])
        daily = daily.reindex(grid, fill_value=0)
        cum = daily.groupby(level=0).cumsum().groupby(level=0).shift(1, fill_value=0)  # strictly before day d
        glob = (
            per.groupby("d")[["imp", "clk"]]
            .sum()
            .reindex(range(len(days)), fill_value=0)
            .cumsum()
            .shift(1, fill_value=0)
        )
        g_ctr = (
            (glob["clk"] + 1.0) / (glob["imp"] + 10.0)
        ).to_numpy()  # global CTR to date (weakly regularised)
        cum = cum.reset_index()
        prior = g_ctr[cum["d"].to_numpy()]
        w = cfg.stats_prior_weight
        item_stats = pd.DataFrame(
            {
                "item_id": cum["item_id"].to_numpy(),
                "event_timestamp": days[cum["d"].to_numpy()],
                "impressions_to_date": cum["imp"].to_numpy().astype(np.int64),
                "clicks_to_date": cum["clk"].to_numpy().astype(np.int64),
                "ctr_smoothed": (cum["clk"].to_numpy() + w * prior) / (cum["imp"].to_numpy() + w),
            }
        )
        before = item_stats[item_stats["event_timestamp"] == day0].assign(event_timestamp=t0)  # t0 < day0
        item_stats = pd.concat([before, item_stats], ignore_index=True)
    else:
        item_stats = pd.DataFrame(
            {
                "item_id": items["item_id"],
                "event_timestamp": t0,
                "impressions_to_date": 0,
                "clicks_to_date": 0,
                "ctr_smoothed": 0.0,
            }
        )

    # ---- item_content
    from adflow.encoders.text import encode

    texts = [
        f"{t}. category: {c}. " + ", ".join(f"{k}: {v}" for k, v in json.loads(a or "{}").items())
        for t, c, a in zip(items["title"], items["category"], items["attributes"], strict=True)
    ]
    prog = Progress(STAGE, "text embeddings", len(texts))
    emb = encode(texts, cfg.text_encoder_path, cfg.encode_batch_size)
    prog.advance(len(texts))
    item_content = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "event_timestamp": t0,
            "category": items["category"],
            "text_embedding": list(emb),
            "moon_embedding": moon_column(items["item_id"], moon_embeddings),
        }
    )
    if "moon" in cfg.content_embedding and moon_embeddings is None:
        raise ValueError(
            f"features.content_embedding is '{cfg.content_embedding}' but this run has no MOON embeddings "
            "(moon_train.enabled is false, or the data set has no item images): use 'text'"
        )

    tables = {
        "user_behaviour": user_behaviour,
        "user_profile": user_profile,
        "item_stats": item_stats,
        "item_content": item_content,
    }
    for name, df in tables.items():
        df.to_parquet(out_dir / f"{name}.parquet", index=False)
    (out_dir / "categories.json").write_text(json.dumps(categories))
    counts = {name: len(df) for name, df in tables.items()}
    log(STAGE, f"feature tables {counts}")
    return counts


def moon_column(item_ids: pd.Series, path: str | Path | None) -> list[np.ndarray]:
    """MOON's vector per catalog item (row-aligned with item_ids); empty vectors when there is no MOON."""
    if path is None:
        return [np.zeros(0, np.float32) for _ in item_ids]
    moon = pd.read_parquet(path)
    vec = dict(zip(moon["item_id"].astype(int), moon["moon_embedding"], strict=True))
    missing = [int(i) for i in item_ids if int(i) not in vec]
    if missing:
        raise ValueError(
            f"MOON embeddings miss {len(missing)} catalog items (first: {missing[:5]}) in {path}"
        )
    return [np.asarray(vec[int(i)], np.float32) for i in item_ids]


# ---------------------------------------------------------------- the store


def store(placement: Placement, feast_dir: str | Path | None = None) -> Any:
    """A FeatureStore for the placement's environment (feature_store/<env>/feature_store.yaml)."""
    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    env_dir = REPO / placement.feast_env
    text = (env_dir / "feature_store.yaml").read_text()
    feast_path = Path(feast_dir) if feast_dir else Path(placement.workspace) / "feast"
    feast_path.mkdir(parents=True, exist_ok=True)
    values = {"ADFLOW_FEAST_DIR": str(feast_path.resolve()), "ADFLOW_REDIS_URL": placement.redis_url or ""}
    if placement.feast_env == "cluster" and not placement.redis_url:
        raise ValueError("placement.redis_url is required for the cluster feature store (Redis online store)")
    raw = yaml.safe_load(string.Template(text).substitute(values))
    return FeatureStore(config=RepoConfig(repo_path=env_dir, **raw))


def apply(fs: Any, tables_dir: str | Path) -> None:
    from feature_store.definitions import objects

    fs.apply(objects(Path(tables_dir).resolve()))


def materialize(fs: Any, tables_dir: str | Path) -> None:
    """Replace what the online store holds with the latest row of each entity in `tables_dir`.

    Feast's Redis writer keeps a stored value unless the new row is strictly newer, where SQLite's
    overwrites: a later run's rows stamped at the same or an earlier time (the static views at t0: a
    retrained MOON's embeddings, a new segment; a world regenerated from the same start date) would never
    reach Redis, and serving would read the old run's features beside the new model. So Redis's values for
    these views are deleted first (serving reads them as missing until the write is done)."""
    online = fs._get_provider().online_store
    if type(online).__name__ == "RedisOnlineStore":
        for view in fs.list_feature_views():
            online.delete_table(fs.config, view)
    ts = pd.concat(
        [
            pd.read_parquet(Path(tables_dir) / f"{v}.parquet", columns=["event_timestamp"])
            for v in ("user_behaviour", "item_stats", "item_content", "user_profile")
        ]
    )
    fs.materialize(
        ts["event_timestamp"].min().to_pydatetime(),
        (ts["event_timestamp"].max() + pd.Timedelta(seconds=1)).to_pydatetime(),
    )


def historical(
    fs: Any, entity_df: pd.DataFrame, tables_dir: str | Path, key: str = "impression_id"
) -> pd.DataFrame:
    """Point-in-time join of every feature onto `entity_df` (with `event_timestamp`), in its row order.

    Two gotchas of Feast's file store are handled here: it drops entity rows that share a join key and
    timestamp (two sessions of one user in the same second) and rows outside a TTL, and it reorders rows.
    So each view is queried with the unique (join key, timestamp) pairs, its row count checked (a loss is
    an error, never silent), and the result merged back. Views go one at a time: the store's joint join of
    four views took 30 s where the single joins take 12 s (tiny world). List-heavy views (SNAPSHOT_KEYS) are
    joined by Feast on their snapshot id alone; the lists come from the same table by that exact id.
    """
    from feature_store.definitions import NOT_IN_TRAINING, SNAPSHOT_KEYS, VIEWS

    if entity_df[key].duplicated().any():
        raise FeatureJoinError(f"entity rows must have unique '{key}'")
    out = entity_df
    for view, (entity, _, schema) in VIEWS.items():
        jk = entity.join_key
        pairs = entity_df[[jk, "event_timestamp"]].drop_duplicates().reset_index(drop=True)
        snap = SNAPSHOT_KEYS.get(view)
        skip = NOT_IN_TRAINING.get(view, ())
        names = [snap] if snap else [f.name for f in schema if f.name not in skip]
        got = fs.get_historical_features(entity_df=pairs, features=[f"{view}:{n}" for n in names]).to_df()
        if len(got) != len(pairs):
            lost = len(pairs) - len(got)
            raise FeatureJoinError(
                f"Feast returned {len(got)} rows of view {view} for {len(pairs)} entity rows ({lost} lost: TTL?)"
            )
        got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True).astype(
            entity_df["event_timestamp"].dtype
        )
        got = got[[jk, "event_timestamp", *names]]
        if snap:
            table = pd.read_parquet(Path(tables_dir) / f"{view}.parquet", columns=[f.name for f in schema])
            got = got.merge(table, on=snap, how="left", validate="many_to_one")
        out = out.merge(got, on=[jk, "event_timestamp"], how="left", validate="many_to_one")
    if len(out) != len(entity_df) or not (out[key].to_numpy() == entity_df[key].to_numpy()).all():
        raise FeatureJoinError("feature join changed the entity rows")
    return out


def online(
    fs: Any, user_ids: list[int], item_ids: list[int]
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Online reads for serving: user features for `user_ids`, item features for `item_ids`."""
    from feature_store.definitions import feature_refs

    users = fs.get_online_features(
        features=feature_refs("user_behaviour", "user_profile"),
        entity_rows=[{"user_id": int(u)} for u in user_ids],
    ).to_dict()
    items = fs.get_online_features(
        features=feature_refs("item_stats", "item_content"),
        entity_rows=[{"item_id": int(i)} for i in item_ids],
    ).to_dict()
    return users, items


def training_frame(fs: Any, dataset: str | Path, tables_dir: str | Path) -> pd.DataFrame:
    """Impressions with every feature as of their own time, creative factors, and the oracle p (if known)."""
    root = Path(dataset)
    imps = read_table(root, "impressions")
    ent = imps[["impression_id", "user_id", "item_id", "creative_id", "position", "click", "ts"]].rename(
        columns={"ts": "event_timestamp"}
    )
    frame = historical(fs, ent, tables_dir)
    creatives = read_table(root, "creatives")[["creative_id", "prominence", "clutter", "legibility", "theme"]]
    frame = frame.merge(creatives, on="creative_id", how="left", validate="many_to_one")
    truth = root / "truth" / "impressions.parquet"
    if truth.exists():
        p = pd.read_parquet(truth, columns=["impression_id", "p_click"]).rename(
            columns={"p_click": "oracle_p"}
        )
        frame = frame.merge(p, on="impression_id", how="left", validate="one_to_one")
    else:
        frame["oracle_p"] = np.nan
    return frame


def split(frame: pd.DataFrame, cfg: FeaturesConfig) -> dict[str, pd.DataFrame]:
    """Time split: train | val (end of the training period) | test (after the split quantile)."""
    cut = frame["event_timestamp"].quantile(cfg.split_quantile)
    train_all = frame[frame["event_timestamp"] < cut]
    test = frame[frame["event_timestamp"] >= cut]
    vcut = train_all["event_timestamp"].quantile(1 - cfg.val_fraction) if cfg.val_fraction > 0 else cut
    return {
        "train": train_all[train_all["event_timestamp"] < vcut].reset_index(drop=True),
        "val": train_all[train_all["event_timestamp"] >= vcut].reset_index(drop=True),
        "test": test.reset_index(drop=True),
    }
