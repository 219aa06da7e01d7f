"""The CLI: clear errors and exit codes on bad input."""

from pathlib import Path

from typer.testing import CliRunner

from adflow.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("run", "data", "pipeline", "config"):
        assert cmd in r.output


def test_config_show_and_bad_key() -> None:
    r = runner.invoke(app, ["config", "show", "--preset", "full", "--placement", "cluster"])
    assert r.exit_code == 0 and "n_users: 200000" in r.output and "use_gpu: true" in r.output
    r = runner.invoke(app, ["config", "show", "--set", "world.n_user=5"])
    assert r.exit_code == 2 and "world.n_user" in r.output


def test_import_malformed_exits_2_with_location(tmp_path: Path) -> None:
    bad = tmp_path / "ub.csv"
    bad.write_text("1,100,7,pv,1511544070\n1,100,7,nope,1511544070\n")
    r = runner.invoke(app, ["data", "import", "taobao", "--path", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "line 2" in r.output and "behavior_type" in r.output


def test_contract_markdown() -> None:
    r = runner.invoke(app, ["data", "contract"])
    assert r.exit_code == 0 and "## `impressions`" in r.output and "-> items.item_id" in r.output


def test_contract_doc_is_current() -> None:
    from adflow.contract import schema_markdown

    doc = Path(__file__).parents[1] / "docs" / "data-contract.md"
    assert doc.read_text().strip() == schema_markdown().strip(), (
        "regenerate: adflow data contract > docs/data-contract.md"
    )


def test_importer_usage_names_real_options() -> None:
    """The importers' usage lines name only options `adflow data import` has (they named --csv and --dir)."""
    import re

    import adflow.data.importers as importers

    r = runner.invoke(app, ["data", "import", "--help"])
    assert r.exit_code == 0
    usage = [line for line in (importers.__doc__ or "").splitlines() if "adflow data import" in line]
    named = {o for line in usage for o in re.findall(r"--[a-z][a-z-]*", line)}
    assert len(usage) == 3 and "--path" in named
    assert named <= set(re.findall(r"--[a-z][a-z-]*", r.output)), (named, r.output)
