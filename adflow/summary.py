"""The run summary: per stage its status, duration, metrics and artifacts; a table for people, JSON for tools.

Written to runs/<run_id>/summary.json and runs/latest/summary.json, and read back from MLflow's child runs,
which the stages write wherever they ran.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adflow.tracking import ARTIFACTS_TAG, ERROR_TAG, NOTE_TAG, STAGE_TAG, STATUS_TAG

# The metrics a person wants to see first, per stage (all metrics are in the JSON).
HEADLINE = {
    "synth": ("rows_impressions", "click_rate", "oracle_auc", "cold_start_items"),
    "ingest": ("rows_items", "rows_impressions"),
    "validate": ("expectations_evaluated", "expectations_failed", "rows_validated"),
    "creative": (
        "random_accuracy",
        "sft_accuracy",
        "sft_grpo_accuracy",
        "sft_grpo_swap_consistency",
        "tournament_best_hit",
        "tournament_chance",
        "scorer_agreement_with_selector",
        "selector_served",
        "train_s",
    ),
    "moon": ("recall_at_10_moon", "recall_at_10_baseline", "detector_iou_cluttered", "train_s"),
    "features": ("rows_joined", "rows_train_split", "rows_test_split"),
    "train_ctr": ("final_ciubm_val_auc", "final_din_val_auc", "train_s"),
    "gate": (
        "passed",
        "ciubm_auc",
        "ciubm_gauc",
        "ciubm_cold_auc",
        "din_auc",
        "din_gauc",
        "din_cold_auc",
        "oracle_auc",
        "reference_auc",
        "reference_category_auc",
        "reference_cold_auc",
        "reference_category_cold_auc",
        "reference_text_auc",
        "reference_moon_auc",
        "lead_vs_din_cold_auc_diff",
        "lead_vs_din_cold_auc_lo",
        "lead_vs_din_cold_auc_hi",
        "champion_gauc",
        "ciubm_text_auc",
        "ciubm_moon_auc",
        "ciubm_text_moon_auc",
        "exchange_rate_auc",
    ),
    "register": ("version", "champion_version"),
    "abtest": ("champion_ctr", "challenger_ctr", "lift", "p_value", "srm_p", "http_5xx", "aa_test"),
}


@dataclass
class StageSummary:
    name: str
    status: str  # succeeded | failed | skipped (branch decided against) | not run (not yet, or never)
    duration_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    failures: list[str] = field(default_factory=list)
    note: str | None = None  # a stage's one-line verdict (the gate's reason)
    mlflow_run_id: str | None = None


@dataclass
class RunSummary:
    run_id: str
    pipeline: str
    preset: str
    placement: str
    status: str
    started_at: str
    duration_s: float
    stages: list[StageSummary]
    mlflow: dict[str, str]
    error: str | None = None
    run_dir: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


# Branch groups that run under a dsl.If on a stage's metric rather than as alternatives: every stage of the
# group runs, one after the other, when the metric is true (ads_full's deploy branch: register, then abtest,
# when the gate passed). Any other group is a dsl.If/Else whose outputs a dsl.OneOf joins: one stage runs.
CONDITIONS = {"deploy": ("gate", "passed")}


def stage_summaries(client: Any, experiment_id: str, parent_run_id: str, stages: Any) -> list[StageSummary]:
    """Each stage's summary from its MLflow child run. A stage with no child run is "skipped" only when its
    branch was decided against it (its alternative ran; its condition's metric is false), else "not run":
    not yet (the console shows it as waiting) or never (the run stopped before it)."""
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=500
    )
    by_stage = {r.data.tags.get(STAGE_TAG): r for r in children}
    ran_groups = {s.branch_of for s in stages if s.name in by_stage and s.branch_of}
    out = []
    for s in stages:
        r = by_stage.get(s.name)
        if r is None:
            decided = _decided_against(s.branch_of, by_stage, ran_groups)
            out.append(StageSummary(s.name, "skipped" if decided else "not run"))
            continue
        metrics = dict(r.data.metrics)
        tags = r.data.tags
        failures = json.loads(tags["adflow.failures"]) if "adflow.failures" in tags else []
        out.append(
            StageSummary(
                name=s.name,
                status=tags.get(STATUS_TAG, "failed" if r.info.status == "FAILED" else "running"),
                duration_s=metrics.pop("duration_s", None),
                metrics=metrics,
                artifacts=json.loads(tags.get(ARTIFACTS_TAG, "{}")),
                error=tags.get(ERROR_TAG),
                failures=failures,
                note=tags.get(NOTE_TAG),
                mlflow_run_id=r.info.run_id,
            )
        )
    return out


def _decided_against(group: str | None, by_stage: dict[str, Any], ran_groups: set[str]) -> bool:
    if group is None:
        return False
    if group in CONDITIONS:
        stage, metric = CONDITIONS[group]
        decider = by_stage.get(stage)
        # no value yet (the deciding stage has not finished, or failed) decides nothing
        return decider is not None and decider.data.metrics.get(metric) == 0
    return group in ran_groups


def write(summary: RunSummary, runs_dir: str | Path) -> Path:
    runs = Path(runs_dir)
    run_dir = runs / summary.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    summary.run_dir = str(run_dir)
    path = run_dir / "summary.json"
    path.write_text(summary.to_json())
    latest = runs / "latest"
    tmp = runs / f".latest-{summary.run_id}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(summary.run_id, target_is_directory=True)
    os.replace(tmp, latest)  # atomic: a reader never sees runs/latest missing
    return path


def stage_artifacts(summary_path: str | Path) -> dict[str, dict[str, str]]:
    """{stage: {artifact name: path or URI}} from a run's summary.json; {} when the file is missing."""
    path = Path(summary_path)
    if not path.exists():
        return {}
    return {st["name"]: dict(st.get("artifacts") or {}) for st in json.loads(path.read_text())["stages"]}


# Where a run's data set, feature set and Creative4U selector are: (stage, artifact name), the first found wins.
DATASET = (("synth", "dataset"), ("ingest", "dataset"))
FEATURES = (("features", "features"),)
SELECTOR = (("creative", "creative"),)


def latest_artifact(runs_dir: str | Path, places: tuple[tuple[str, str], ...]) -> tuple[str, Path] | None:
    """(artifact, run folder) from the most recent succeeded run that has one of `places`, or None.

    Not simply runs/latest: that is the newest run whatever its end, and a run that failed validation (its
    data set rejected), was cancelled, or was only submitted has nothing to reuse. Recency: the summary's
    start time, then the file's time (for summaries without one)."""
    found = []
    for path in Path(runs_dir).glob("*/summary.json"):
        if path.parent.name == "latest":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # being written, or not a summary
            continue
        if data.get("status") != "succeeded":
            continue
        stages = {st["name"]: st for st in data.get("stages", [])}
        for stage, name in places:
            st = stages.get(stage, {})
            value = (st.get("artifacts") or {}).get(name)
            if value and st.get("status") == "succeeded":
                found.append(((data.get("started_at") or "", path.stat().st_mtime), value, path.parent))
                break
    if not found:
        return None
    _, value, run = max(found, key=lambda f: f[0])
    return value, run


def latest_dataset(runs_dir: str | Path) -> str | None:
    """The data set (its synth or ingest stage's) of the most recent succeeded run that made one."""
    found = latest_artifact(runs_dir, DATASET)
    return found[0] if found else None


def latest_selector(runs_dir: str | Path) -> str | None:
    """The Creative4U stage's output (its trained selector) of the most recent succeeded run that has one."""
    found = latest_artifact(runs_dir, SELECTOR)
    return found[0] if found else None


def _fmt(v: float) -> str:
    if v != v:  # NaN: a measure with nothing to measure (e.g. no held-out product unseen in training)
        return "n/a"
    return f"{v:.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.4g}"


def render(summary: RunSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    colour = {
        "succeeded": "green",
        "failed": "red",
        "skipped": "dim",
        "not run": "yellow",
        "cancelled": "yellow",
    }
    t = Table(
        title=f"{summary.pipeline} · run {summary.run_id} · preset {summary.preset} · {summary.placement}"
    )
    t.add_column("stage")
    t.add_column("status")
    t.add_column("time", justify="right")
    t.add_column("key metrics")
    for s in summary.stages:
        keys = HEADLINE.get(s.name, tuple(s.metrics)[:4])
        shown = ", ".join(f"{k}={_fmt(s.metrics[k])}" for k in keys if k in s.metrics)
        dur = f"{s.duration_s:.1f}s" if s.duration_s is not None else "-"
        t.add_row(s.name, f"[{colour.get(s.status, 'white')}]{s.status}[/]", dur, shown)
    console.print(t)
    for s in summary.stages:
        if s.note:
            console.print(f"  {s.name}: {s.note}", soft_wrap=True, markup=False, highlight=False)
    for s in summary.stages:
        for name, path in s.artifacts.items():
            console.print(f"  {s.name}.{name}: {path}", soft_wrap=True)
    st = "green" if summary.status == "succeeded" else "red"
    console.print(
        f"[{st}]run {summary.status}[/] in {summary.duration_s:.1f}s · summary {summary.run_dir}/summary.json"
    )
    console.print(
        f"MLflow: {summary.mlflow.get('tracking_uri')} (parent run {summary.mlflow.get('parent_run_id')})",
        soft_wrap=True,
    )
    console.print("console: .venv/bin/adflow ui  (http://127.0.0.1:8000: runs, models, experiments)")
    failed = [s for s in summary.stages if s.status == "failed"]
    for s in failed:
        console.print(f"[red]stage {s.name} failed:[/]")
        console.print(s.error or "", soft_wrap=True, markup=False, highlight=False)
