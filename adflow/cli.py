"""The `adflow` command line: runs, data, pipelines, config.

adflow run [--preset tiny] [--placement local] [--set world.n_users=800]
adflow data synth --out data/tiny
adflow data import movielens --path ml-100k --out data/ml100k
adflow data validate data/tiny
adflow pipeline compile --out build/pipelines
adflow config show --preset full --placement cluster
"""

from __future__ import annotations

import sys
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
pipeline_app = typer.Typer(help="Compile pipelines.", no_args_is_help=True)
config_app = typer.Typer(help="Show resolved settings.", no_args_is_help=True)
model_app = typer.Typer(
    help="Registry: promote, roll back, and show the history of model aliases.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")

Preset = Annotated[str, typer.Option("--preset", "-p", help="what to train: tiny | full | path to a YAML")]
Placement = Annotated[
    str, typer.Option("--placement", help="where it runs: local | cluster | path to a YAML")
]
Sets = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override, e.g. world.n_users=800 (repeatable)")
]


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
    pipeline: Annotated[str, typer.Option(help="pipeline name")] = "ads_full",
) -> None:
    """Run a pipeline end to end and print its summary (exit 1 if a stage failed)."""
    from adflow.runner import run_pipeline

    summary = run_pipeline(_settings(preset, placement, set_), pipeline)
    raise typer.Exit(0 if summary.status in ("succeeded", "submitted") else 1)


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


@config_app.command("show")
def config_show(preset: Preset = "tiny", placement: Placement = "local", set_: Sets = None) -> None:
    """Print the resolved settings as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(_settings(preset, placement, set_).model_dump(), sort_keys=False))


def _uri(placement: str, sets: list[str] | None) -> str:
    return _settings("tiny", placement, sets).resolved().placement.tracking_uri()


def _registry_call(fn: Any) -> Any:
    from mlflow.exceptions import MlflowException

    from adflow.registry import RegistryError

    try:
        return fn()
    except (RegistryError, MlflowException) as e:
        typer.secho(f"error: {getattr(e, 'message', e)}", fg="red", err=True)
        raise typer.Exit(2) from e


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

    from adflow.registry import alias_version, history
    from adflow.tracking import client

    c = client(_uri(placement, set_))
    moves = _registry_call(lambda: history(c, name))
    t = Table(
        title=f"{name}: champion v{alias_version(c, name, 'champion')}, challenger v{alias_version(c, name, 'challenger')}"
    )
    for col in ("when", "who", "action", "alias", "from", "to", "reason", "gate report"):
        t.add_column(col)
    for m in moves:
        t.add_row(
            m.at,
            m.who,
            m.action,
            m.alias,
            str(m.from_version or "-"),
            str(m.to_version),
            m.reason,
            m.gate_report or "",
        )
    Console(width=160).print(t)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
