"""The validation core on clean and imported data; corruptions through the pipeline are in test_pipeline.py."""

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from adflow.config import ValidationConfig
from adflow.contract import ContractError
from adflow.data.importers import import_catalog, import_movielens, import_taobao
from components.validation.validate.core import DataValidationError, accepted_dir, validate_dataset

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
    loose = ValidationConfig(click_rate_min=0.0, click_rate_max=1.0)  # a handful of rows: any rate goes
    for name in ("tb", "ml", "cat"):
        r = validate_dataset(tmp_path / name, loose, tmp_path / f"docs-{name}", tmp_path / "ws")
        assert r.success, r.failures


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=r"dataset\.json"):
        validate_dataset(tmp_path, ValidationConfig(), tmp_path / "docs", tmp_path / "ws")
