"""The validation core on clean, imported and corrupted data; one corruption through the pipeline is in test_pipeline.py."""

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from adflow.config import ValidationConfig
from adflow.contract import ContractError
from adflow.data.importers import import_catalog, import_movielens, import_taobao
from components.validation.validate.core import DataValidationError, accepted_dir, validate_dataset

from .conftest import digest, small_settings
from .test_importers import CATALOG, TAOBAO, U_DATA, U_ITEM, _images, _ml, _write


def test_clean_world_passes_and_is_accepted(small_world: Path, tmp_path: Path) -> None:
    r = validate_dataset(small_world, ValidationConfig(), tmp_path / "docs", tmp_path / "ws")
    assert r.success and not r.failures
    assert r.evaluated > 100
    assert Path(r.docs_index).is_file() and "<html" in Path(r.docs_index).read_text().lower()
    acc = accepted_dir(tmp_path / "ws", "synthetic")
    assert (acc / "profile.json").is_file() and (acc / "current.json").is_file()
    # the second look uses the first as its drift reference and still passes: same data, no drift
    r2 = validate_dataset(small_world, ValidationConfig(), tmp_path / "docs2", tmp_path / "ws")
    assert r2.success and r2.reference_used and r2.evaluated > r.evaluated


def test_failure_report_names_checks_and_keeps_docs(world_copy: Path, tmp_path: Path) -> None:
    items = pd.read_parquet(world_copy / "items.parquet")
    items.loc[0, "price"] = -1.0
    items.to_parquet(world_copy / "items.parquet", index=False)
    with pytest.raises(DataValidationError) as e:
        validate_dataset(world_copy, ValidationConfig(), tmp_path / "docs", tmp_path / "ws")
    rep = e.value.report
    assert [(f.table, f.check, f.column) for f in rep.failures] == [("items", "range", "price")]
    assert "items.price: range" in str(e.value) and rep.docs_index in str(e.value)
    assert Path(rep.docs_index).is_file() and Path(rep.report_json).is_file()
    assert not accepted_dir(tmp_path / "ws", "synthetic").exists()  # a failed dataset is never accepted


def test_future_timestamps_are_caught(world_copy: Path, tmp_path: Path) -> None:
    now = dt.datetime(2026, 1, 20, tzinfo=dt.UTC)  # inside the impression window: later events are "future"
    with pytest.raises(DataValidationError) as e:
        validate_dataset(world_copy, ValidationConfig(), tmp_path / "docs", tmp_path / "ws", now=now)
    assert {f.check for f in e.value.report.failures} == {"timestamp sanity"}


def test_missing_image_files_are_caught(world_copy: Path, tmp_path: Path) -> None:
    (world_copy / "images" / "items" / "1.png").unlink()
    with pytest.raises(DataValidationError) as e:
        validate_dataset(world_copy, ValidationConfig(), tmp_path / "docs", tmp_path / "ws")
    assert [(f.table, f.check) for f in e.value.report.failures] == [("items", "image files exist")]


def test_imported_datasets_validate(tmp_path: Path) -> None:
    import_taobao(_write(tmp_path / "ub.csv", TAOBAO), tmp_path / "tb")
    import_movielens(_ml(tmp_path, U_DATA, U_ITEM), tmp_path / "ml")
    import_catalog(_write(tmp_path / "c.csv", CATALOG), tmp_path / "cat", images=_images(tmp_path, [1, 2]))
    # a handful of rows: any rate goes, whatever the source
    loose = ValidationConfig(click_rate_min=0.0, click_rate_max=1.0, click_rate_by_source={})
    for name in ("tb", "ml", "cat"):
        r = validate_dataset(tmp_path / name, loose, tmp_path / f"docs-{name}", tmp_path / "ws")
        assert r.success, r.failures


def _ml_with_ratings(tmp_path: Path, ratings: list[int]) -> Path:
    """A MovieLens folder: 40 users rate 30 items (one genre each), cycling through `ratings`."""
    d = tmp_path / "ml-100k"
    d.mkdir(parents=True)
    data = [
        f"{1 + k % 40}\t{1 + (k * 7) % 30}\t{ratings[k % len(ratings)]}\t{881250949 + 60 * k}"
        for k in range(120)
    ]
    (d / "u.data").write_text("\n".join(data) + "\n")
    items = []
    for i in range(1, 31):
        genres = ["1" if g == 1 + i % 18 else "0" for g in range(19)]
        items.append("|".join([str(i), f"Movie {i} (1995)", "01-Jan-1995", "", "http://x", *genres]))
    (d / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return d


def test_movielens_label_rate_is_bounded_for_its_source(world_copy: Path, tmp_path: Path) -> None:
    """MovieLens' click (rating >= 4) is ~55% of ratings: with the default settings a real ML-100k import
    passes (it failed the ad click bounds, 0.01-0.30), a label mapped wrong still fails, and the synthetic
    world's bounds are as tight as they were."""
    ml100k_like = [1, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5]  # ML-100k's shares, 60% >= 4
    import_movielens(_ml_with_ratings(tmp_path / "a", ml100k_like), tmp_path / "ml")
    r = validate_dataset(tmp_path / "ml", ValidationConfig(), tmp_path / "docs", tmp_path / "ws")
    assert r.success, r.failures
    import_movielens(_ml_with_ratings(tmp_path / "b", [4, 5, 5]), tmp_path / "all-clicks")
    with pytest.raises(DataValidationError) as e:
        validate_dataset(tmp_path / "all-clicks", ValidationConfig(), tmp_path / "docs2", tmp_path / "ws2")
    assert [(f.table, f.check) for f in e.value.report.failures] == [("impressions", "label rate bounds")]
    imp = pd.read_parquet(world_copy / "impressions.parquet")
    imp.loc[imp.index[: int(0.55 * len(imp))], "click"] = 1  # the synthetic world at MovieLens' rate
    imp.to_parquet(world_copy / "impressions.parquet", index=False)
    with pytest.raises(DataValidationError) as e:
        validate_dataset(world_copy, ValidationConfig(), tmp_path / "docs3", tmp_path / "ws3")
    assert [(f.table, f.check) for f in e.value.report.failures] == [("impressions", "label rate bounds")]


def test_category_drift_is_caught_both_ways(
    accepted_workspace: Path, small_world: Path, tmp_path: Path
) -> None:
    """KL(reference || current) catches a category that vanished (two merged); KL(current || reference) one
    that appeared. Both failures name the values. (GE's KL check passed the merge and failed the new
    category with "observed None".)"""
    ws = accepted_workspace / "ws"
    before = digest(ws / "accepted")
    items = pd.read_parquet(small_world / "items.parquet")
    shares = items["category"].value_counts()
    gone, into = shares.index[-1], shares.index[0]
    merged = tmp_path / "merged"
    shutil.copytree(small_world, merged)
    items.assign(category=items["category"].replace(gone, into)).to_parquet(
        merged / "items.parquet", index=False
    )
    with pytest.raises(DataValidationError) as e:
        validate_dataset(merged, ValidationConfig(), tmp_path / "docs", ws)
    [f] = e.value.report.failures
    assert (f.table, f.check, f.column) == ("items", "drift: category shares (KL)", "category")
    assert f"missing [{gone!r}]" in str(f.observed) and "new [" not in str(f.observed)

    grown = tmp_path / "grown"
    shutil.copytree(small_world, grown)
    changed = items.copy()
    changed.loc[changed.index[:6], "category"] = "brand_new"  # 5% of the catalog in a category never seen
    changed.to_parquet(grown / "items.parquet", index=False)
    with pytest.raises(DataValidationError) as e:
        validate_dataset(grown, ValidationConfig(), tmp_path / "docs2", ws)
    [f] = e.value.report.failures
    assert f.check == "drift: category shares (KL)" and "new ['brand_new']" in str(f.observed)
    assert isinstance(f.observed, str) and "KL(reference||current)" in f.observed  # a value, not None
    assert digest(ws / "accepted") == before
    # unchanged shares still pass against the same reference
    assert validate_dataset(small_world, ValidationConfig(), tmp_path / "docs3", ws, accept=False).success


def test_references_into_a_missing_table_fail(world_copy: Path, tmp_path: Path) -> None:
    """Impressions naming query ids while queries.parquet is gone: the reference check used to be skipped."""
    (world_copy / "queries.parquet").unlink()
    with pytest.raises(DataValidationError) as e:
        validate_dataset(world_copy, ValidationConfig(), tmp_path / "docs", tmp_path / "ws")
    assert [(f.table, f.check, f.column) for f in e.value.report.failures] == [
        ("impressions", "referential integrity -> queries.query_id (table missing)", "query_id")
    ]
    assert "np.int64" not in str(e.value)  # the sample of values reads as plain numbers
    # all-null references to it are fine (Taobao has no queries): test_imported_datasets_validate


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=r"dataset\.json"):
        validate_dataset(tmp_path, ValidationConfig(), tmp_path / "docs", tmp_path / "ws")


# ---- corruptions: each table broken in its own way; each caught by the right check; nothing accepted changes.
# One of them also goes through the whole pipeline (test_pipeline.py): validation stops the run there.


def _nulls_in_keys(d: Path) -> tuple[str, str, str | None]:
    df = pd.read_parquet(d / "users.parquet")
    df["user_id"] = df["user_id"].astype("Int64")
    df.loc[[3, 7], "user_id"] = pd.NA
    df.to_parquet(d / "users.parquet", index=False)
    return "users", "nulls", "user_id"


def _prices(d: Path) -> tuple[str, str, str | None]:
    df = pd.read_parquet(d / "items.parquet")
    df.loc[0, "price"] = -4.0
    df.loc[1, "price"] = 5e6
    df.to_parquet(d / "items.parquet", index=False)
    return "items", "range", "price"


def _unknown_items(d: Path) -> tuple[str, str, str | None]:
    df = pd.read_parquet(d / "impressions.parquet")
    df.loc[df.index[:5], "item_id"] = 987654
    df.to_parquet(d / "impressions.parquet", index=False)
    return "impressions", "referential integrity -> items.item_id", "item_id"


def _duplicate_keys(d: Path) -> tuple[str, str, str | None]:
    df = pd.read_parquet(d / "creatives.parquet")
    df.loc[1, "creative_id"] = df.loc[0, "creative_id"]
    df.to_parquet(d / "creatives.parquet", index=False)
    return "creatives", "key uniqueness", "creative_id"


def _dropped_column(d: Path) -> tuple[str, str, str | None]:
    df = pd.read_parquet(d / "behaviour.parquet").drop(columns=["event_type"])
    df.to_parquet(d / "behaviour.parquet", index=False)
    return "behaviour", "schema: columns", None


def _shifted_click_rate(d: Path) -> tuple[str, str, str | None]:
    df = pd.read_parquet(d / "impressions.parquet")
    rate = df["click"].mean()
    flip = df.index[df["click"] == 0][
        : int(0.8 * rate * len(df))
    ]  # ~1.8x the clicks: inside the absolute bounds
    df.loc[flip, "click"] = 1
    assert df["click"].mean() < 0.30
    df.to_parquet(d / "impressions.parquet", index=False)
    return "impressions", "drift: label rate", "click"


def _future_queries(d: Path) -> tuple[str, str, str | None]:
    df = pd.read_parquet(d / "queries.parquet")
    df.loc[0, "ts"] = pd.Timestamp("2100-01-01", tz="UTC")
    df.to_parquet(d / "queries.parquet", index=False)
    return "queries", "timestamp sanity", "ts"


def _bad_pair_label(d: Path) -> tuple[str, str, str | None]:
    df = pd.read_parquet(d / "creative_pairs.parquet")
    df.loc[0, "label"] = "C"
    df.to_parquet(d / "creative_pairs.parquet", index=False)
    return "creative_pairs", "allowed values", "label"


CORRUPTIONS: list[Callable[[Path], tuple[str, str, str | None]]] = [
    _nulls_in_keys, _prices, _unknown_items, _duplicate_keys, _dropped_column, _shifted_click_rate, _future_queries, _bad_pair_label,
]  # fmt: skip


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corruption_is_caught_by_the_right_check(
    corrupt: Callable[[Path], tuple[str, str, str | None]],
    accepted_workspace: Path,
    world_copy: Path,
    tmp_path: Path,
) -> None:
    table, check, column = corrupt(world_copy)
    accepted = accepted_workspace / "ws" / "accepted"
    before = digest(accepted)
    s = small_settings(accepted_workspace, "data.source=dataset", f"data.path={world_copy}")
    with pytest.raises(DataValidationError) as e:
        validate_dataset(world_copy, s.validation, tmp_path / "docs", s.placement.workspace)
    rep = e.value.report
    expected = f"{table}.{column}: {check}" if column else f"{table}: {check}"
    assert any(f.line().startswith(expected) for f in rep.failures), [f.line() for f in rep.failures]
    assert expected in str(e.value) and f"report: {rep.docs_index}" in str(e.value)  # names it and the report
    assert Path(rep.docs_index).is_file() and rep.accepted_dir is None
    assert rep.reference_used  # the accepted profile was the drift reference
    assert digest(accepted) == before  # earlier accepted outputs are untouched
