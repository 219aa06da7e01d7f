"""Validate a dataset against the contract with Great Expectations; accept it only if every check passes.

    adflow data validate data/tiny                       # the same core, outside a pipeline

On success the dataset becomes the accepted one for its source: its profile is the drift reference for the
next dataset, and `<workspace>/accepted/<source>/` records it. On failure nothing there changes; the Data
Docs report is still written, and `DataValidationError` names every failed expectation and the report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from adflow.config import ValidationConfig
from adflow.contract import REQUIRED_TABLES, TABLES, ContractError, read_manifest
from adflow.progress import Progress, log

from . import expectations as ex
from .profile import load_reference, profile_dataset

STAGE = "validate"
INTERACTION_TABLES = ("users", "impressions", "behaviour")


@dataclass
class Failure:
    table: str
    check: str
    column: str | None
    expectation: str
    observed: Any

    def line(self) -> str:
        col = f".{self.column}" if self.column else ""
        return f"{self.table}{col}: {self.check} [{self.expectation}] observed {self.observed}"


@dataclass
class ValidationReport:
    success: bool
    dataset: str
    source: str
    tables: dict[str, dict[str, int]]
    failures: list[Failure] = field(default_factory=list)
    docs_index: str = ""
    report_json: str = ""
    reference_used: str | None = None
    accepted_dir: str | None = None

    @property
    def evaluated(self) -> int:
        return sum(t["expectations"] for t in self.tables.values())

    def metrics(self) -> dict[str, float]:
        return {
            "expectations_evaluated": float(self.evaluated),
            "expectations_failed": float(len(self.failures)),
            "tables_validated": float(len(self.tables)),
            "rows_validated": float(sum(t["rows"] for t in self.tables.values())),
        }


class DataValidationError(RuntimeError):
    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        shown = "\n".join(f"  - {f.line()}" for f in report.failures[:30])
        more = f"\n  ... and {len(report.failures) - 30} more" if len(report.failures) > 30 else ""
        super().__init__(
            f"data validation failed: {len(report.failures)} of {report.evaluated} expectations on {report.dataset}\n"
            f"{shown}{more}\nreport: {report.docs_index}"
        )


def _observed(result: Any) -> Any:
    r = result.result or {}
    if "observed_value" in r:
        v = r["observed_value"]
        note = (r.get("details") or {}).get("note") if isinstance(r.get("details"), dict) else None
        if note:  # what the number alone does not say (which category values are new or missing)
            v = f"{v:.4g} ({note})" if isinstance(v, float) else f"{v} ({note})"
    elif "unexpected_count" in r:
        sample = [ex.plain_value(v) for v in list(r.get("partial_unexpected_list") or [])[:5]]
        v = f"{r['unexpected_count']} unexpected, e.g. {sample}"
    elif result.exception_info and result.exception_info.get("raised_exception"):
        v = f"error: {result.exception_info.get('exception_message')}"
    else:
        v = None
    return v if isinstance(v, str | int | float | bool | type(None)) else str(v)


def _image_flags(root: Path, df: pd.DataFrame, column: str, sample: int) -> pd.Series:
    """True/False for rows checked (all rows, or an even sample of `sample`), missing for rows not checked."""
    flags = pd.Series(pd.NA, index=df.index, dtype="object")
    rows = df.index[df[column].notna()]
    if sample and len(rows) > sample:
        rows = rows[:: max(1, len(rows) // sample)]
    for i in rows:
        flags[i] = (root / str(df.at[i, column])).is_file()
    return flags


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def accepted_dir(workspace: str | Path, source: str) -> Path:
    return Path(workspace) / "accepted" / source


def validate_dataset(
    dataset: str | Path,
    cfg: ValidationConfig,
    docs_dir: str | Path,
    workspace: str | Path,
    accept: bool = True,
    now: dt.datetime | None = None,
) -> ValidationReport:
    """Validate every table of `dataset`; write Data Docs under `docs_dir`; raise DataValidationError on failure."""
    import great_expectations as gx

    root = Path(dataset)
    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    now = now or dt.datetime.now(dt.UTC)
    manifest = read_manifest(root)
    source = str(manifest.get("source", "unknown"))
    catalog_only = bool(manifest.get("catalog_only", False))
    ref_path = accepted_dir(workspace, source) / "profile.json"
    reference = load_reference(ref_path)

    frames: dict[str, pd.DataFrame] = {}
    missing: list[Failure] = []
    for name in TABLES:
        path = root / f"{name}.parquet"
        if path.exists():
            frames[name] = pd.read_parquet(path)
        elif name in REQUIRED_TABLES:
            missing.append(Failure(name, "table present", None, "file exists", f"{path.name} not found"))
    keys = {
        name: df[TABLES[name].key[0]].dropna().unique().tolist()
        for name, df in frames.items()
        if len(TABLES[name].key) == 1 and TABLES[name].key[0] in df.columns
    }

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
    for name, cfg_site in dict(ctx.variables.data_docs_sites or {}).items():
        # the ephemeral context's default site is a fresh /tmp folder per run: drop it, keep only ours
        ctx.delete_data_docs_site(name)
        shutil.rmtree(cfg_site.get("store_backend", {}).get("base_directory", ""), ignore_errors=True)
    site = "adflow"
    ctx.add_data_docs_site(
        site_name=site,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    ds = ctx.data_sources.add_pandas("dataset")
    report = ValidationReport(
        success=False, dataset=str(root), source=source, tables={}, failures=list(missing)
    )
    report.reference_used = str(ref_path) if reference else None
    prog = Progress(STAGE, "tables", len(frames))
    for name, df in frames.items():
        t = TABLES[name]
        frame = df
        if t.image_column and t.image_column in df.columns and cfg.check_images:
            frame = df.copy()
            frame[ex.IMAGE_OK] = _image_flags(root, df, t.image_column, cfg.image_check_sample)
        require_rows = name in REQUIRED_TABLES and not (catalog_only and name in INTERACTION_TABLES)
        exps = ex.build(name, frame, cfg, keys, reference, require_rows, now, source)
        suite = ctx.suites.add(gx.ExpectationSuite(name=name))
        for e in exps:
            suite.add_expectation(e)
        batch_def = ds.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        cp = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"validate_{name}",
                validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[site])],
                result_format={"result_format": "SUMMARY"},
            )
        )
        result = cp.run(batch_parameters={"dataframe": frame})
        n_failed = 0
        for vr in result.run_results.values():
            for r in vr.results:
                if r.success:
                    continue
                n_failed += 1
                conf = r.expectation_config
                meta = (conf.meta if conf else None) or {}
                kind = conf.type if conf else "unknown"
                report.failures.append(
                    Failure(name, str(meta.get("check", "")), meta.get("column"), kind, _observed(r))
                )
        report.tables[name] = {"rows": len(df), "expectations": len(exps), "failed": n_failed}
        prog.advance()

    report.docs_index = str(docs.resolve() / "index.html")
    report.success = not report.failures
    report.report_json = str(docs.resolve() / "report.json")
    if report.success and accept:
        report.accepted_dir = str(_accept(root, manifest, frames, workspace, source, now))
    _atomic_write(Path(report.report_json), json.dumps(asdict(report), indent=2, default=str))
    if not report.success:
        raise DataValidationError(report)
    log(STAGE, f"{report.evaluated} expectations passed on {len(frames)} tables; report {report.docs_index}")
    return report


def _accept(
    root: Path,
    manifest: dict[str, Any],
    frames: dict[str, pd.DataFrame],
    workspace: str | Path,
    source: str,
    now: dt.datetime,
) -> Path:
    """Record the dataset as accepted: its profile becomes the next drift reference. Written atomically."""
    out = accepted_dir(workspace, source)
    profile = profile_dataset(frames)
    record = {
        "dataset": str(root.resolve()),
        "accepted_at": now.isoformat(),
        "rows": manifest.get("rows", {}),
    }
    _atomic_write(out / "profile.json", json.dumps(profile, indent=2, sort_keys=True))
    _atomic_write(out / "current.json", json.dumps(record, indent=2, sort_keys=True))
    with (out / "history.jsonl").open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return out


def check_dataset_dir(path: str | Path) -> None:
    """Fail early, before any expectation runs, when a path is not a dataset folder at all."""
    if not (Path(path) / "dataset.json").exists():
        raise ContractError(f"{path}: not a dataset folder (dataset.json not found)")


def run(
    settings_json: str, tracking_uri: str, parent_run_id: str, dataset: str | Path, docs_dir: str | Path
) -> ValidationReport:
    """The pipeline stage: validate, record the outcome in MLflow, and stop the pipeline on failure."""
    from adflow.config import settings_from_json
    from adflow.tracking import stage_run

    s = settings_from_json(settings_json)
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        sr.params({"validation": s.validation.model_dump()})
        sr.artifact("data_docs", Path(docs_dir) / "index.html")
        try:
            report = validate_dataset(dataset, s.validation, docs_dir, s.placement.workspace)
        except DataValidationError as e:
            sr.metrics(e.report.metrics())
            sr.tag("adflow.failures", json.dumps([f.line() for f in e.report.failures[:50]]))
            sr.log_file(docs_dir, "data_docs")
            raise
        sr.metrics(report.metrics())
        if report.accepted_dir:
            sr.artifact("accepted", report.accepted_dir)
        sr.log_file(docs_dir, "data_docs")
    return report
