"""Feast features: point-in-time correctness on a hand-built case, row accounting, Redis and SQLite online stores."""

import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adflow import features as F
from adflow.config import load_settings
from adflow.contract import write_manifest, write_table

T0 = pd.Timestamp("2026-03-02 10:00", tz="UTC")


def _ts(minutes: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=minutes)


def _hand_built(root: Path) -> Path:
    """User 1 clicks item 10 at +0; item 11 is shown at +60 and clicked at +61 (its own click); item 12 at +120.
    User 2 is shown item 12 at +60 and rates it at that very instant (MovieLens logs a rating as its
    impression and its label at one time), clicking item 10 at the same instant; item 11 the next day."""
    root.mkdir(parents=True)
    items = pd.DataFrame(
        {
            "item_id": [10, 11, 12],
            "title": ["red watch", "blue mug", "green lamp"],
            "category": ["watch", "mug", "lamp"],
            "attributes": ["{}"] * 3,
            "price": [1.0, 2.0, 3.0],
            "launch_ts": [_ts(-60 * 24)] * 3,
        }
    )
    imps = pd.DataFrame(
        {
            "impression_id": [1, 2, 3, 4, 5, 6],
            "ts": [_ts(-1), _ts(60), _ts(60), _ts(120), _ts(60 * 24 + 5), _ts(60 * 24 + 6)],
            "user_id": [1, 1, 2, 1, 1, 2],
            "item_id": [10, 11, 12, 12, 11, 11],
            "creative_id": [10, 11, 12, 12, 11, 11],
            "session_id": [1, 2, 3, 4, 5, 6],
            "position": [1, 1, 1, 1, 1, 1],
            "click": [1, 1, 1, 0, 0, 0],
        }
    )
    beh = pd.DataFrame(
        {
            "event_id": [1, 2, 3, 4],
            "ts": [_ts(0), _ts(61), _ts(60), _ts(60)],
            "user_id": [1, 1, 2, 2],
            "item_id": [10, 11, 12, 10],
            "event_type": ["click", "click", "rate", "click"],
            "value": [None, None, 5.0, None],
        }
    )
    write_table(root, "items", items)
    write_table(root, "creatives", pd.DataFrame({"creative_id": [10, 11, 12], "item_id": [10, 11, 12]}))
    write_table(root, "users", pd.DataFrame({"user_id": [1, 2], "segment": ["practical", "brand_lover"]}))
    write_table(root, "impressions", imps)
    write_table(root, "behaviour", beh)
    write_manifest(root, "hand-built")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    tmp = tmp_path_factory.mktemp("pit")
    data = _hand_built(tmp / "data")
    s = load_settings("tiny", "local", [f"placement.workspace={tmp / 'ws'}", "features.seq_len=5"])
    F.build_tables(data, tmp / "tables", s.features)
    fs = F.store(s.placement)
    F.apply(fs, tmp / "tables")
    return data, tmp / "tables", fs


def test_no_leakage_point_in_time(built: tuple[Path, Path, object]) -> None:
    data, tables, fs = built
    frame = F.training_frame(fs, data, tables).set_index("impression_id")
    assert len(frame) == 6
    assert list(frame.at[1, "hist_item_ids"]) == []  # before any click
    # impression 2 (item 11 at +60) is clicked at +61: that click must not be in its own features
    assert list(frame.at[2, "hist_item_ids"]) == [10]
    assert frame.at[2, "clicks_total"] == 1
    assert list(frame.at[4, "hist_item_ids"]) == [11, 10]  # later impressions see it, newest first
    assert frame.at[4, "clicks_total"] == 2
    # impression 3 is rated (its label) at its own instant: events at that instant do not reach it either
    assert list(frame.at[3, "hist_item_ids"]) == [] and frame.at[3, "clicks_total"] == 0
    assert list(frame.at[6, "hist_item_ids"]) == [10, 12]  # a later one sees both, in the log's order
    assert frame.at[6, "clicks_total"] == 2
    # one row per user per instant: the start, then after each instant with events
    rows = pd.read_parquet(tables / "user_behaviour.parquet").groupby("user_id").size()
    assert rows.to_dict() == {1: 3, 2: 2}
    # item stats are as of the start of the day: the same day's clicks are not visible yet
    assert frame.at[2, "impressions_to_date"] == 0 and frame.at[4, "impressions_to_date"] == 0
    assert frame.at[5, "impressions_to_date"] == 1 and frame.at[5, "clicks_to_date"] == 1  # next day: item 11
    # content vectors are static per item: the CTR model reads them from the catalog table, not per impression
    assert "text_embedding" not in frame and "moon_embedding" not in frame
    content = pd.read_parquet(tables / "item_content.parquet")
    assert {len(e) for e in content["text_embedding"]} == {384} and {
        len(e) for e in content["moon_embedding"]
    } == {0}
    assert frame.at[3, "segment"] == "brand_lover"


def test_rows_sharing_user_and_time_are_all_kept(built: tuple[Path, Path, object]) -> None:
    _, tables, fs = built
    ent = pd.DataFrame(
        {
            "impression_id": [1, 2, 3],
            "user_id": [1, 1, 1],
            "item_id": [10, 11, 12],
            "event_timestamp": [_ts(90)] * 3,  # one user, one second, three impressions
        }
    )
    out = F.historical(fs, ent, tables)
    assert list(out["impression_id"]) == [1, 2, 3]
    assert all(list(h) == [11, 10] for h in out["hist_item_ids"])


def test_item_stats_start_at_the_first_impression(built: tuple[Path, Path, object]) -> None:
    """The items launched 60 days before the first impression: one row each stands for those days (no counts,
    the prior's CTR), then one a day while impressions run. Not a row a day since launch: a catalog's launch
    dates can go back decades (MovieLens)."""
    _, tables, fs = built
    stats = pd.read_parquet(tables / "item_stats.parquet")
    days = sorted(stats["event_timestamp"].unique())
    # t0 (a day before the launches), then the impressions' two days and the day after the last
    assert len(days) == 4 and days[0] < _ts(-60 * 24) and days[1] == T0.floor("D")
    assert len(stats) == 3 * 4
    # a lookup between launch and the first impression reads the t0 row: nothing counted, the prior's CTR
    ent = pd.DataFrame({"impression_id": [1, 2], "user_id": [1, 1], "item_id": [10, 11]})
    ent["event_timestamp"] = [_ts(-30 * 24), T0.floor("D") + pd.Timedelta(minutes=1)]
    out = F.historical(fs, ent, tables).set_index("impression_id")
    assert (out["impressions_to_date"] == 0).all() and (out["clicks_to_date"] == 0).all()
    assert out.at[1, "ctr_smoothed"] == pytest.approx(out.at[2, "ctr_smoothed"])
    assert out.at[1, "ctr_smoothed"] == pytest.approx(1 / 10)  # the global prior before any impression


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path):  # type: ignore[no-untyped-def]
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (Debian package redis-server; .ci/run installs it)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_online_store_serves_what_sqlite_serves(
    built: tuple[Path, Path, object], redis_url: str, tmp_path: Path
) -> None:
    _, tables, sqlite_fs = built
    s = load_settings(
        "tiny", "cluster", [f"placement.workspace={tmp_path / 'ws'}", f"placement.redis_url={redis_url}"]
    )
    redis_fs = F.store(s.placement)
    assert type(redis_fs.config.online_store).__name__ == "RedisOnlineStoreConfig"
    F.apply(redis_fs, tables)
    F.materialize(redis_fs, tables)
    F.materialize(sqlite_fs, tables)
    got_r = F.online(redis_fs, [1, 2, 99], [10, 11])
    got_s = F.online(sqlite_fs, [1, 2, 99], [10, 11])
    assert list(got_r[0]["hist_item_ids"][0]) == [11, 10]  # the latest state
    assert list(got_r[0]["hist_item_ids"][1]) == [10, 12]  # both events of one instant, as offline
    assert got_r[0]["hist_item_ids"][2] is None  # an unknown user reads as missing
    for r, q in zip(got_r, got_s, strict=True):
        for key in r:
            if key in ("text_embedding", "moon_embedding"):
                assert np.allclose(np.asarray(r[key][0]), np.asarray(q[key][0]), atol=1e-6)
            else:
                assert [list(x) if isinstance(x, list | np.ndarray) else x for x in r[key]] == [
                    list(x) if isinstance(x, list | np.ndarray) else x for x in q[key]
                ], key


def test_redis_takes_a_later_runs_features_at_the_same_time(
    built: tuple[Path, Path, object], redis_url: str, tmp_path: Path
) -> None:
    """Redis keeps a stored value unless the new row is newer: a retrained MOON's embeddings or a new segment,
    stamped at the same t0 as the last run's, must still replace them."""
    _, tables, _ = built
    s = load_settings(
        "tiny", "cluster", [f"placement.workspace={tmp_path / 'ws'}", f"placement.redis_url={redis_url}"]
    )
    fs = F.store(s.placement)
    F.apply(fs, tables)
    F.materialize(fs, tables)
    later = tmp_path / "later"
    shutil.copytree(tables, later)
    profile = pd.read_parquet(later / "user_profile.parquet")
    profile["segment"] = "trend_seeker"  # same timestamps, new values
    profile.to_parquet(later / "user_profile.parquet", index=False)
    content = pd.read_parquet(later / "item_content.parquet")
    content["text_embedding"] = [np.full(384, 0.5, np.float32)] * len(content)
    content.to_parquet(later / "item_content.parquet", index=False)
    F.apply(fs, later)
    F.materialize(fs, later)
    users, items = F.online(fs, [1, 2], [10])
    assert users["segment"] == ["trend_seeker", "trend_seeker"]
    assert np.allclose(np.asarray(items["text_embedding"][0]), 0.5)
    assert list(users["hist_item_ids"][0]) == [11, 10]  # the views left as they were are all still there


def test_cluster_store_needs_a_redis_address(tmp_path: Path) -> None:
    s = load_settings("tiny", "cluster", [f"placement.workspace={tmp_path}", "placement.redis_url=null"])
    with pytest.raises(ValueError, match="redis_url"):
        F.store(s.placement)
