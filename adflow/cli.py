"""The `adflow` command line: runs, data, pipelines, config.

adflow run [--preset tiny] [--placement local] [--set world.n_users=800]
adflow data synth --out data/tiny
adflow data import movielens --path ml-100k --out data/ml100k
adflow data validate data/tiny
adflow pipeline compile --out build/pipelines
adflow pipeline submit --host http://localhost:8080 [--preset full] [--placement cluster]
adflow config show --preset full --placement cluster
adflow workspace prune --older-than 14 --dry-run --placement cluster
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from adflow.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="adflow: MLOps for e-commerce search ads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate, import and validate datasets.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Compile pipelines; submit them to Kubeflow Pipelines.", no_args_is_help=True)
config_app = typer.Typer(help="Show resolved settings.", no_args_is_help=True)
model_app = typer.Typer(
    help="Registry: promote, roll back, and show the history of model aliases.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(config_app, name="config")
ab_app = typer.Typer(
    help="A/B experiments: create, ramp, pause, stop (kill switch), status, report.", no_args_is_help=True
)
services_app = typer.Typer(
    help="Cluster mode on one machine: PostgreSQL-backed MLflow, Redis, a two-node Ray, on loopback.",
    no_args_is_help=True,
)
app.add_typer(services_app, name="services")
app.add_typer(model_app, name="model")
app.add_typer(ab_app, name="ab")
workspace_app = typer.Typer(
    help="The workspace volume: what steps left there for Ray and Feast.", no_args_is_help=True
)
app.add_typer(workspace_app, name="workspace")
study_app = typer.Typer(
    help="Seed studies: a stage trained again over seeds on one run's data, compared paired.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")

Preset = Annotated[str, typer.Option("--preset", "-p", help="what to train: tiny | full | path to a YAML")]
Placement = Annotated[
    str, typer.Option("--placement", help="where it runs: local | cluster | path to a YAML")
]
Sets = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override, e.g. world.n_users=800 (repeatable)")
]


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _settings(preset: str, placement: str, sets: list[str] | None) -> Settings:
    try:
        return load_settings(preset, placement, sets or [])
    except ConfigError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e


@app.command()
def run(
    preset: Preset = "tiny",
    placement: Placement = "local",
    set_: Sets = None,
    pipeline: Annotated[str, typer.Option(help="pipeline name: ads_full | data_check")] = "ads_full",
    run_id: Annotated[str | None, typer.Option(help="id for the run (default: time + random)")] = None,
) -> None:
    """Run a pipeline end to end and print its summary (exit 1 if a stage failed, 143 if cancelled)."""
    from adflow.runner import cancel_on_sigterm, run_pipeline
    from pipelines import PIPELINES

    if pipeline not in PIPELINES:
        typer.secho(f"error: unknown pipeline {pipeline!r}: {' | '.join(PIPELINES)}", fg="red", err=True)
        raise typer.Exit(2)
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        typer.secho(f"error: run id {run_id!r}: letters, digits, '-' and '_' only", fg="red", err=True)
        raise typer.Exit(2)
    settings = _settings(preset, placement, set_)
    # runs/latest is the link to the newest run, and a run's folder holds one run: reusing either would
    # overwrite an earlier run's summary (and point runs/latest at itself)
    if run_id is not None and (
        run_id == "latest" or (Path(settings.placement.runs_dir) / run_id / "summary.json").exists()
    ):
        typer.secho(f"error: run id {run_id!r} is taken: choose another", fg="red", err=True)
        raise typer.Exit(2)
    cancel_on_sigterm()
    summary = run_pipeline(settings, pipeline, run_id=run_id)
    codes = {"succeeded": 0, "submitted": 0, "cancelled": 143}
    raise typer.Exit(codes.get(summary.status, 1))


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="new folder for the dataset")],
    preset: Preset = "tiny",
    set_: Sets = None,
) -> None:
    """Generate the synthetic ad world."""
    from adflow.data.world import generate

    s = _settings(preset, "local", set_)
    try:
        r = generate(s.world, out)
    except FileExistsError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"{r.out_dir}: {r.rows} oracle AUC {r.oracle_auc:.3f}, click rate {r.click_rate:.3f}")


@data_app.command("import")
def data_import(
    fmt: Annotated[str, typer.Argument(help="taobao | movielens | catalog")],
    path: Annotated[Path, typer.Option(help="Taobao CSV, MovieLens folder, or catalog CSV")],
    out: Annotated[Path, typer.Option(help="new folder for the dataset")],
    catalog: Annotated[Path | None, typer.Option(help="taobao: catalog CSV with titles/images")] = None,
    images: Annotated[Path | None, typer.Option(help="folder of item images")] = None,
) -> None:
    """Import a real data set into the data contract."""
    from adflow.data.importers import ImportFormatError, import_catalog, import_movielens, import_taobao

    try:
        if fmt == "taobao":
            m = import_taobao(path, out, catalog=catalog, images=images)
        elif fmt == "movielens":
            m = import_movielens(path, out)
        elif fmt == "catalog":
            m = import_catalog(path, out, images=images)
        else:
            typer.secho(f"error: unknown format '{fmt}': taobao | movielens | catalog", fg="red", err=True)
            raise typer.Exit(2)
    except (ImportFormatError, FileExistsError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"{out}: {m['rows']}")


@data_app.command("validate")
def data_validate(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    preset: Preset = "tiny",
    placement: Placement = "local",
    set_: Sets = None,
    docs: Annotated[
        Path | None, typer.Option(help="Data Docs folder (default: <dataset>/../<name>-docs)")
    ] = None,
    accept: Annotated[
        bool, typer.Option(help="record as the accepted dataset (drift reference) on success")
    ] = False,
) -> None:
    """Validate a dataset folder against the contract (exit 1 on failure)."""
    from components.validation.validate.core import DataValidationError, validate_dataset

    s = _settings(preset, placement, set_).resolved()
    docs_dir = docs or dataset.parent / f"{dataset.name}-docs"
    try:
        r = validate_dataset(dataset, s.validation, docs_dir, s.placement.workspace, accept=accept)
    except DataValidationError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"ok: {r.evaluated} expectations on {len(r.tables)} tables; report {r.docs_index}")


@data_app.command("contract")
def data_contract() -> None:
    """Print the data contract as Markdown."""
    from adflow.contract import schema_markdown

    typer.echo(schema_markdown())


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("build/pipelines"),
    preset: Preset = "tiny",
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Compile every pipeline to KFP IR YAML, stamped with the placement's image."""
    from adflow.compile import compile_all

    s = _settings(preset, placement, set_)
    for path in compile_all(s, out):
        typer.echo(f"{path}  (image {s.placement.image})")


@pipeline_app.command("submit")
def pipeline_submit(
    host: Annotated[
        str | None,
        typer.Option(help="Kubeflow Pipelines API, e.g. http://localhost:8080 (default: placement.kfp_host)"),
    ] = None,
    preset: Preset = "full",
    placement: Placement = "cluster",
    set_: Sets = None,
    pipeline: Annotated[str, typer.Option(help="pipeline name")] = "ads_full",
    experiment: Annotated[
        str | None, typer.Option(help="KFP experiment (default: placement.mlflow_experiment)")
    ] = None,
    run_name: Annotated[str | None, typer.Option(help="run name (default: <pipeline>-<UTC time>)")] = None,
    namespace: Annotated[str | None, typer.Option(help="Kubeflow profile namespace (multi-user)")] = None,
    token_env: Annotated[
        str | None, typer.Option(help="environment variable holding a bearer token for the KFP API")
    ] = None,
    parent_run_id: Annotated[str, typer.Option(help="MLflow run the stages log under")] = "",
    out: Annotated[Path | None, typer.Option(help="folder for the compiled package")] = None,
    dry_run: Annotated[bool, typer.Option(help="compile and check only; send nothing")] = False,
) -> None:
    """Compile a pipeline with the placement's image, upload it as a new version and start a run."""
    from adflow.submit import SubmitError, prepare, send

    s = _settings(preset, placement, set_)
    folder = out or Path("build/submit") / s.placement.name
    sub = _refusing(lambda: prepare(s, pipeline, host, folder, parent_run_id, token_env), (SubmitError,))
    typer.echo(f"{sub.package}  (image {sub.image})")
    if dry_run:
        typer.echo(f"dry run: nothing sent to {sub.host}")
        return
    try:
        send(sub, experiment or s.placement.mlflow_experiment, run_name, namespace, token_env)
    except Exception as e:  # connection, auth or API errors: the message says which
        typer.secho(f"error: submitting to {sub.host} failed: {type(e).__name__}: {e}", fg="red", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"pipeline {sub.pipeline_id} version {sub.version_id}: run {sub.run_id}\n{sub.run_url()}")


@config_app.command("show")
def config_show(preset: Preset = "tiny", placement: Placement = "local", set_: Sets = None) -> None:
    """Print the resolved settings as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(_settings(preset, placement, set_).model_dump(), sort_keys=False))


def _uri(placement: str, sets: list[str] | None) -> str:
    return _settings("tiny", placement, sets).resolved().placement.tracking_uri()


def _refusing(fn: Any, errors: tuple[type[Exception], ...]) -> Any:
    """Run a CLI action; a refusal (one of `errors`) prints its message and exits 2 instead of a traceback."""
    try:
        return fn()
    except errors as e:
        typer.secho(f"error: {getattr(e, 'message', e)}", fg="red", err=True)
        raise typer.Exit(2) from e


def _registry_call(fn: Any) -> Any:
    from mlflow.exceptions import MlflowException

    from adflow.registry import RegistryError

    return _refusing(fn, (RegistryError, MlflowException))


@model_app.command("promote")
def model_promote(
    name: Annotated[str, typer.Argument(help="registered model name, e.g. ctr-ciubm")],
    reason: Annotated[str, typer.Option(help="why (recorded in the history)")],
    to: Annotated[str, typer.Option(help="alias to move")] = "champion",
    version: Annotated[int | None, typer.Option(help="version to promote (default: the challenger)")] = None,
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Point an alias (default champion) at a version (default: the current challenger)."""
    from adflow.registry import promote

    m = _registry_call(lambda: promote(_uri(placement, set_), name, reason, version, to))
    typer.echo(f"{name}@{m.alias}: {m.from_version} -> {m.to_version} ({m.reason})")


@model_app.command("rollback")
def model_rollback(
    name: Annotated[str, typer.Argument(help="registered model name")],
    reason: Annotated[str, typer.Option(help="why (recorded in the history)")],
    alias: Annotated[str, typer.Option(help="alias to roll back")] = "champion",
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Point an alias back at the version it held before its latest move."""
    from adflow.registry import rollback

    m = _registry_call(lambda: rollback(_uri(placement, set_), name, reason, alias))
    typer.echo(f"{name}@{m.alias}: {m.from_version} -> {m.to_version} ({m.reason})")


@model_app.command("history")
def model_history(
    name: Annotated[str, typer.Argument(help="registered model name")],
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Every recorded alias move: when, who, what, why."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from adflow.registry import alias_version, history
    from adflow.tracking import client

    c = client(_uri(placement, set_))
    moves = _registry_call(lambda: history(c, name))

    def held(alias: str) -> str:
        v = _registry_call(lambda: alias_version(c, name, alias))
        return f"{alias} v{v}" if v is not None else f"no {alias}"

    # cells are Text, not markup: a reason like "won [exp ab-7]" is printed as written
    t = Table(title=Text(f"{name}: {held('champion')}, {held('challenger')}"))
    for col in ("when", "who", "action", "alias", "from", "to", "reason", "gate report"):
        t.add_column(col)
    for m in moves:
        cells = (m.at, m.who, m.action, m.alias, str(m.from_version or "-"), str(m.to_version), m.reason)
        t.add_row(*(Text(x) for x in (*cells, m.gate_report or "")))
    Console(width=160).print(t)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())


# ---------------------------------------------------------------- A/B experiments


def _ab_store(placement: str, sets: list[str] | None) -> Any:
    from adflow.ab.store import ABStore, default_store_path

    ws = _settings("tiny", placement, sets).resolved().placement.workspace_path()
    return ABStore(default_store_path(ws))


def _ab_call(fn: Any) -> Any:
    from adflow.ab.store import ABError

    return _refusing(fn, (ABError, ValueError))


def _weights(pairs: list[str]) -> dict[str, float]:
    out = {}
    for p in pairs:
        name, sep, w = p.partition("=")
        try:
            out[name] = float(w)
        except ValueError:
            sep = ""
        if not sep or not name:
            typer.secho(f"error: {p!r} is not ARM=WEIGHT (e.g. challenger=0.1)", fg="red", err=True)
            raise typer.Exit(2)
    return out


@ab_app.command("create")
def ab_create(
    name: Annotated[str, typer.Argument(help="experiment name")],
    treatment_weight: Annotated[float, typer.Option(help="share of traffic for the challenger")] = 0.01,
    control: Annotated[str, typer.Option(help="control arm's model (registry reference)")] = "alias:champion",
    treatment: Annotated[str, typer.Option(help="treatment arm's model")] = "alias:challenger",
    metric: Annotated[str, typer.Option(help="primary metric")] = "ctr",
    min_sample: Annotated[int, typer.Option(help="exposures per arm before a decision")] = 1000,
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Create a running experiment: control (champion) vs treatment (challenger)."""
    from adflow.ab.assign import Arm

    arms = [Arm("control", control, 1 - treatment_weight), Arm("treatment", treatment, treatment_weight)]
    store = _ab_store(placement, set_)
    exp = _ab_call(lambda: store.create(name, arms, metric, min_sample))
    typer.echo(f"{exp.name}: running, control {1 - treatment_weight:.2f} / treatment {treatment_weight:.2f}")


@ab_app.command("ramp")
def ab_ramp(
    name: Annotated[str, typer.Argument(help="experiment name")],
    weight: Annotated[list[str], typer.Argument(help="ARM=WEIGHT for treatment arms, e.g. treatment=0.5")],
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Change treatment weights (users already in a treatment stay there); resumes a paused experiment."""
    store = _ab_store(placement, set_)
    exp = _ab_call(lambda: store.ramp(name, _weights(weight)))
    typer.echo(f"{exp.name}: " + ", ".join(f"{a.name} {a.weight:.2f}" for a in exp.arms))


@ab_app.command("pause")
def ab_pause(name: str, placement: Placement = "local", set_: Sets = None) -> None:
    """All traffic to control for now; weights are kept for `ramp` to resume."""
    exp = _ab_call(lambda: _ab_store(placement, set_).pause(name))
    typer.echo(f"{exp.name}: paused")


@ab_app.command("stop")
def ab_stop(
    name: str,
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "",
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Kill switch: every user back to control at once, for good."""
    exp = _ab_call(lambda: _ab_store(placement, set_).stop(name, reason))
    typer.echo(f"{exp.name}: stopped, all traffic to {exp.control}")


@ab_app.command("status")
def ab_status(placement: Placement = "local", set_: Sets = None) -> None:
    """Every experiment: status, arms and weights, exposures so far."""
    from rich.console import Console
    from rich.table import Table

    store = _ab_store(placement, set_)
    t = Table(title="A/B experiments")
    for col in ("name", "status", "arms (weight, model)", "exposures", "clicks", "created"):
        t.add_column(col)
    for e in store.experiments():
        ex = store.exposures(e.name)
        arms = "; ".join(f"{a.name} {a.weight:.2f} {a.model}" for a in e.arms)
        t.add_row(e.name, e.status, arms, str(len(ex)), str(int(ex["click"].sum())), e.created_at)
    Console(width=160).print(t)


@ab_app.command("report")
def ab_report(
    name: str,
    out: Annotated[Path | None, typer.Option(help="report folder (default: runs/ab/<name>)")] = None,
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Analyse the exposure log: CTR per arm, lift, SRM, always-valid p-values; HTML + JSON."""
    from adflow.ab.analysis import analyse
    from adflow.ab.report import write_report

    s = _settings("tiny", placement, set_).resolved()
    store = _ab_store(placement, set_)
    exp = _ab_call(lambda: store.get(name))
    ex = store.exposures(name)
    weights = {x.name: x.weight for x in exp.arms}
    window = store.weight_period(name)
    a = _ab_call(
        lambda: analyse(ex, weights, exp.control, name, srm_window=window, min_sample=exp.min_sample)
    )
    page = write_report(a, ex, out or Path(s.placement.runs_dir) / "ab" / name)
    for r in a.arms:
        typer.echo(f"{r.arm:>10}: {r.exposures} exposures, CTR {r.ctr:.4f} [{r.ctr_lo:.4f}, {r.ctr_hi:.4f}]")
    typer.echo(f"SRM p={a.srm_p:.3g}; {a.verdict}\nreport: {page}")


@ab_app.command("conclude")
def ab_conclude(
    name: str,
    winner: Annotated[str, typer.Option(help="the arm that won")],
    reason: Annotated[
        str, typer.Option(help="why (recorded in the experiment and, with --promote, the registry)")
    ],
    promote: Annotated[bool, typer.Option(help="make the winner's model the registry champion")] = False,
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """End the experiment with a winner; with --promote, move the champion alias to the winner's model."""
    from mlflow.exceptions import MlflowException

    from adflow.ab.conclude import conclude

    s = _settings("tiny", placement, set_).resolved()
    store = _ab_store(placement, set_)
    uri, model = s.placement.tracking_uri(), s.registry.model_name
    # ABError and RegistryError are ValueErrors: a refusal of either prints its message, exit 2
    done = _refusing(
        lambda: conclude(store, name, winner, reason, uri, model, promote), (ValueError, MlflowException)
    )
    typer.echo(f"{done.experiment.name}: concluded, winner {winner} ({done.winner_model})")
    if done.move is not None:
        typer.echo(f"{model}@{done.move.alias}: {done.move.from_version} -> {done.move.to_version}")


@workspace_app.command("prune")
def workspace_prune(
    older_than: Annotated[float, typer.Option(help="days since anything in a folder last changed", min=0)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would go; delete nothing")] = False,
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Delete the step folders (Ray checkpoints, prepared inputs, data set copies) that pipeline runs left under
    <workspace>/steps, when untouched for --older-than days. Registered models, MLflow and Feast are not there."""
    from adflow.workspace import prune

    ws = _settings("tiny", placement, set_).resolved().placement.workspace
    gone = prune(ws, older_than, dry_run=dry_run)
    for f in gone:
        typer.echo(f"{f.age_days:7.1f} d  {f.size_bytes / 1e6:10.1f} MB  {f.path}")
    verb = "would free" if dry_run else "freed"
    typer.echo(
        f"{len(gone)} folder(s) under {ws}/steps older than {older_than:g} days; {verb} {sum(f.size_bytes for f in gone) / 1e6:.1f} MB"
    )


def _services_root(s: Settings) -> Path:
    return s.resolved().placement.workspace_path() / "servers"


@services_app.command("run")
def services_run(
    preset: Preset = "tiny",
    set_: Sets = None,
    pipeline: Annotated[str, typer.Option(help="pipeline name: ads_full | data_check")] = "ads_full",
) -> None:
    """Start the servers, run the pipeline against them (placement `services`), stop them; exit as `adflow run`."""
    from adflow import services
    from adflow.runner import cancel_on_sigterm, run_pipeline

    s = _settings(preset, "services", set_)
    cancel_on_sigterm()
    try:
        with services.start(_services_root(s), s.placement.num_workers) as svc:
            typer.echo(
                f"servers: MLflow {svc.mlflow_uri} · Redis {svc.redis_url} · Ray {svc.ray_address} (2 nodes)"
            )
            summary = run_pipeline(_settings(preset, "services", [*(set_ or []), *svc.overrides()]), pipeline)
    except services.ServiceError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    raise typer.Exit({"succeeded": 0, "cancelled": 143}.get(summary.status, 1))


@services_app.command("up")
def services_up(set_: Sets = None) -> None:
    """Start the servers and print their addresses (and the --set values that use them) until Ctrl-C."""
    from adflow import services

    s = _settings("tiny", "services", set_)
    try:
        with services.start(_services_root(s), s.placement.num_workers) as svc:
            typer.echo(f"MLflow   {svc.mlflow_uri}   (backend {svc.postgres_url})\nRedis    {svc.redis_url}\n"
                       f"Ray      {svc.ray_address} (head + 1 worker node)\nrun against them:\n  adflow run "
                       f"--placement services {' '.join('--set ' + o for o in svc.overrides())}\nCtrl-C stops them")  # fmt: skip
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopped")
    except services.ServiceError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help="admin tokens, one user:token per line (default: $ADFLOW_CONSOLE_TOKENS_FILE, "
            "then $ADFLOW_CONSOLE_TOKENS; none: read-only)"
        ),
    ] = None,
    mlflow_ui: Annotated[
        str | None, typer.Option(help="MLflow UI address for links (default: the tracking URI if it is http)")
    ] = None,
    router_url: Annotated[
        str | None, typer.Option(help="a running router (adflow serve) to show its live status")
    ] = None,
    timeout_s: Annotated[float, typer.Option(help="longest a page waits on MLflow or the A/B store")] = 10.0,
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Serve the web console: trigger runs, promote models, roll out A/B experiments (Ctrl-C stops it)."""
    import os

    import uvicorn

    from adflow.console.app import create_app
    from adflow.console.auth import TokenConfigError, Tokens
    from adflow.console.core import ConsoleCore

    s = _settings("tiny", placement, set_)
    tokens = _refusing(lambda: Tokens.load(tokens_file), (TokenConfigError,))
    # a remote MLflow that hangs must not hang the console's pages (their own limit is timeout_s)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    core = ConsoleCore(s, placement, list(set_ or []), mlflow_ui, router_url)
    mode = f"{len(tokens.users)} admin token(s)" if tokens.configured else "read-only (no admin tokens)"
    typer.echo(f"adflow console on http://{host}:{port} · placement {placement} · {mode}")
    uvicorn.run(create_app(core, tokens, timeout_s), host=host, port=port, log_level="warning")


@app.command()
def serve(
    experiment: Annotated[str | None, typer.Option(help="the A/B experiment the router serves")] = None,
    dataset: Annotated[
        Path | None, typer.Option(help="dataset folder (default: the most recent succeeded run's)")
    ] = None,
    selector: Annotated[
        Path | None,
        typer.Option(help="Creative4U selector behind /explain (default: the most recent succeeded run's)"),
    ] = None,
    port: Annotated[int, typer.Option(help="router port on 127.0.0.1")] = 3000,
    simulate_requests: Annotated[
        int, typer.Option("--simulate", help="send this many simulated requests, report, and stop")
    ] = 0,
    preset: Preset = "tiny",
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Serve the router (with ranker and creative services) on loopback until Ctrl-C, or simulate and stop."""
    import json
    import time

    from adflow.creative.choose import selector_folder
    from adflow.summary import DATASET, SELECTOR
    from serving.core import ServeConfig
    from serving.launch import ServeError
    from serving.launch import serve as launch

    s = _settings(preset, placement, set_).resolved()
    data = str(dataset) if dataset else _from_latest_run(s.placement.runs_dir, DATASET, "dataset")
    if not data or not Path(data).is_dir():
        typer.secho("error: no dataset: give --dataset or run `make run` first", fg="red", err=True)
        raise typer.Exit(2)
    if experiment:
        exp = _ab_call(lambda: _ab_store(placement, set_).get(experiment))
        preload = sorted({a.model for a in exp.arms})
    else:
        preload = ["champion"]
    chosen = str(selector) if selector else _from_latest_run(s.placement.runs_dir, SELECTOR, "selector")
    try:
        if selector and selector_folder(selector) is None:
            typer.secho(f"error: {selector} holds no trained Creative4U selector", fg="red", err=True)
            raise typer.Exit(2)
        folder = selector_folder(chosen)
    except ValueError as e:  # a selector its stage does not serve (below the accuracy floor), named directly
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    cfg = ServeConfig(s.placement.model_dump_json(), data, s.registry.model_name, experiment=experiment,
                      preload=preload, selector=str(folder) if folder else None)  # fmt: skip
    work = s.placement.workspace_path() / "serve"
    try:
        with launch(cfg, work, port) as url:
            typer.echo(f"router on {url} (experiment: {experiment or 'none, champion for everyone'}); "
                       f"log {work / 'server.log'}")  # fmt: skip
            if simulate_requests:
                from serving.simulate import simulate

                a = s.ab
                res = simulate(url, data, simulate_requests, a.rate_per_s, a.duration_s, a.concurrency,
                               a.candidates, a.slate_size, a.seed)  # fmt: skip
                typer.echo(json.dumps(res.to_dict(), indent=2))
                return
            typer.echo("Ctrl-C stops it")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopped")
    except ServeError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from e


def _from_latest_run(runs_dir: str, places: tuple[tuple[str, str], ...], what: str) -> str | None:
    """An artifact of the most recent succeeded run that has one, saying which run it came from."""
    from adflow.summary import latest_artifact

    found = latest_artifact(runs_dir, places)
    if found:
        typer.echo(f"{what}: {found[0]} (from run {found[1]}, the most recent succeeded run with one)")
    return found[0] if found else None


# ---------------------------------------------------------------- seed studies

RunDir = Annotated[
    Path | None,
    typer.Option(
        "--run",
        help="a finished run's folder (its data is reused; default: the most recent succeeded run with it)",
    ),
]
Seeds = Annotated[str, typer.Option("--seeds", help="seeds: 0-5, 0,3,7 or 1-3,8")]
StudyOut = Annotated[
    Path | None,
    typer.Option("--out", help="report folder (default runs/study-<kind>; a restart there resumes)"),
]


def _study(
    kind: str, s: Settings, run: Path | None, seeds: str, out: Path | None, needs: str, fn: Any
) -> None:
    """Find the run's data (`needs`: "dataset" or "features"), run `fn(data, seeds, folder)`, print.
    No `run`: the most recent succeeded run that has it (runs/latest is the newest run, even a failed one)."""
    from adflow import study as S
    from adflow.summary import DATASET, FEATURES, latest_artifact

    folder = out or Path("runs") / f"study-{kind}"
    what = {"dataset": "data set (synth or ingest)", "features": "feature set (did its features stage run?)"}
    if run is None:
        found = latest_artifact(s.placement.runs_dir, {"dataset": DATASET, "features": FEATURES}[needs])
        label = {"dataset": "data set", "features": "feature set"}[needs]
        if found is None:
            typer.secho(f"error: no succeeded run under {s.placement.runs_dir} has a {label}: pass --run",
                        fg="red", err=True)  # fmt: skip
            raise typer.Exit(2)
        run = found[1]
        typer.echo(f"run: {run} (the most recent succeeded run with a {label})")
    try:
        data = S.run_artifacts(run)
        if needs not in data:
            raise S.StudyError(f"{run}: the run left no {what[needs]}")
        result = fn(data[needs], S.parse_seeds(seeds), folder)
    except S.StudyError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    for line in S.summary_lines(result):
        typer.echo(line)
    typer.echo(f"report: {folder / 'study.md'}")


@study_app.command("creative")
def study_creative(
    run: RunDir = None,
    seeds: Seeds = "0-5",
    out: StudyOut = None,
    preset: Preset = "tiny",
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """Creative4U over init seeds: SFT against SFT+GRPO, paired on the same held-out answers."""
    from adflow.study import creative_study

    s = _settings(preset, placement, set_)
    _study("creative", s, run, seeds, out, "dataset", lambda d, seeds, f: creative_study(s, d, seeds, f))


@study_app.command("moon")
def study_moon(
    run: RunDir = None,
    seeds: Seeds = "0-4",
    out: StudyOut = None,
    preset: Preset = "tiny",
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """MOON over seeds: image-search recall of MOON against the baseline encoder and each ablation."""
    from adflow.study import moon_study

    s = _settings(preset, placement, set_)
    _study("moon", s, run, seeds, out, "dataset", lambda d, seeds, f: moon_study(s, d, seeds, f))


@study_app.command("ctr")
def study_ctr(
    run: RunDir = None,
    seeds: Seeds = "0-9",
    variants: Annotated[
        str, typer.Option(help="CTR variants trained side by side, comma-separated")
    ] = "ciubm_text,din,ciubm_moon,ciubm_text_moon",
    base: Annotated[str, typer.Option(help="the variant every other is compared with")] = "ciubm_text",
    out: StudyOut = None,
    preset: Preset = "tiny",
    placement: Placement = "local",
    set_: Sets = None,
) -> None:
    """CTR models over training seeds on one feature set: each variant against the base, paired by seed."""
    from adflow.study import ctr_study

    s = _settings(preset, placement, set_)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    _study("ctr", s, run, seeds, out, "features", lambda d, seeds, f: ctr_study(s, d, seeds, names, base, f))
