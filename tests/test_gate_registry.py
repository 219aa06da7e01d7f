"""The gate rule and the registry's alias moves, against a real MLflow registry (SQLite backend)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adflow import registry
from adflow.cli import app
from adflow.config import GateConfig
from adflow.metrics import linear_probe, paired_auc_diff
from adflow.tracking import client, ensure_experiment
from components.evaluation.gate.core import _probe_lines, content_probes, decide

CHAMP = {"auc": 0.74, "gauc": 0.74, "logloss": 0.250, "cold_auc": 0.70}


@pytest.mark.parametrize(
    ("cand", "champ", "passed", "says"),
    [
        ({**CHAMP, "gauc": 0.70}, None, True, "no champion yet"),
        ({**CHAMP, "gauc": 0.55}, None, False, "below the floor"),
        ({**CHAMP, "gauc": 0.750}, CHAMP, True, "beats champion"),
        ({**CHAMP, "gauc": 0.742}, CHAMP, False, "below the margin"),  # noise-sized gain
        ({**CHAMP, "gauc": 0.70}, CHAMP, False, "below the margin"),  # worse
        ({**CHAMP, "gauc": 0.76, "logloss": 0.270}, CHAMP, False, "logloss rises"),
        ({**CHAMP, "gauc": 0.76, "cold_auc": 0.60}, CHAMP, False, "cold-start AUC drops"),
        ({**CHAMP, "gauc": 0.76, "cold_auc": float("nan")}, CHAMP, True, "guards hold"),
        ({**CHAMP, "gauc": float("nan")}, CHAMP, False, "undefined"),  # no user with a click and a non-click
    ],
)
def test_gate_rule(cand: dict, champ: dict | None, passed: bool, says: str) -> None:
    ok, reason = decide(GateConfig(), cand, champ)
    assert ok is passed and says in reason


@pytest.fixture
def registry_uri(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = client(uri)
    exp = ensure_experiment(c, "t", (tmp_path / "art").as_uri())
    model = torch.nn.Linear(2, 1)
    path = tmp_path / "m.pt"
    torch.save(model, path)
    for k in range(3):
        run = c.create_run(exp, run_name=f"r{k}")
        v = registry.register(uri, run.info.run_id, str(path), "ctr", {"k": str(k)}, ["torch==2.13.0"])
        assert v == k + 1
    return uri


def test_paired_auc_difference_interval() -> None:
    """The candidate-vs-baseline lead in the gate report: zero for the same model, clearly positive for a
    better one, an interval around zero for two equally good ones."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(300), 20)
    signal = rng.normal(size=len(users))
    y = (rng.random(len(users)) < 1 / (1 + np.exp(-(signal - 2)))).astype(int)
    good, worse = signal + rng.normal(0, 0.5, len(y)), signal + rng.normal(0, 2.0, len(y))
    same = paired_auc_diff(users, y, good, good, n_boot=100)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    better = paired_auc_diff(users, y, good, worse, n_boot=100)
    assert 0 < better["lo"] < better["diff"] < better["hi"]
    twin = signal + rng.normal(0, 0.5, len(y))  # as good as `good`, different noise
    tie = paired_auc_diff(users, y, good, twin, n_boot=100)
    assert tie["lo"] < 0 < tie["hi"]
    none = paired_auc_diff(users[:0], y[:0], good[:0], worse[:0])  # e.g. no cold-start item in the split
    assert all(np.isnan(v) for v in none.values())


def test_content_probes_read_what_each_embedding_keeps(tmp_path: Path) -> None:
    import json

    import pandas as pd

    rng = np.random.default_rng(0)
    n = 120
    cats, colours, styles = rng.integers(0, 3, n), rng.integers(0, 4, n), rng.integers(0, 2, n)
    pd.DataFrame(
        {
            "item_id": np.arange(n),
            "category": [f"c{c}" for c in cats],
            "attributes": [
                json.dumps({"colour": f"k{k}", "style": f"s{s}"})
                for k, s in zip(colours, styles, strict=True)
            ],
        }
    ).to_parquet(tmp_path / "catalog.parquet")
    (tmp_path / "tables").mkdir()
    # "text" keeps category and colour (one-hot) and nothing of the style; "moon" is noise
    text = np.hstack([np.eye(3)[cats], np.eye(4)[colours]]) + 0.01 * rng.normal(size=(n, 7))
    pd.DataFrame(
        {
            "item_id": np.arange(n),
            "text_embedding": list(text),
            "moon_embedding": list(rng.normal(size=(n, 7))),
        }
    ).to_parquet(tmp_path / "tables" / "item_content.parquet")
    x = content_probes(tmp_path, ["category", "colour", "style"])
    assert x["probe_text_category"] == 1.0 and x["probe_text_colour"] == 1.0
    assert x["probe_text_style"] < 0.7  # two styles: ~0.5 by chance
    assert x["probe_moon_colour"] < 0.5  # four colours: ~0.25 by chance
    assert (x["catalog_values_colour"], x["catalog_values_style"]) == (4.0, 2.0)
    (line,) = _probe_lines(x)
    assert (
        "MiniLM category 1.00, colour 1.00, style" in line and "distinct values: category 3, colour 4" in line
    )
    assert np.isnan(linear_probe(text, np.zeros(n)))  # one label: nothing to read


def test_promote_rollback_history(registry_uri: str) -> None:
    c = client(registry_uri)
    registry.move_alias(c, "ctr", "challenger", 1, "gate passed", "register")
    assert registry.promote(registry_uri, "ctr", "first").to_version == 1  # default: the challenger
    registry.move_alias(c, "ctr", "challenger", 3, "gate passed", "register")
    m = registry.promote(registry_uri, "ctr", "won the A/B test")
    assert (m.from_version, m.to_version) == (1, 3)
    assert registry.alias_version(c, "ctr", "champion") == 3
    back = registry.rollback(registry_uri, "ctr", "CTR alert")
    assert (back.action, back.from_version, back.to_version) == ("rollback", 3, 1)
    assert registry.alias_version(c, "ctr", "champion") == 1
    moves = registry.history(c, "ctr")
    assert [(x.action, x.alias, x.from_version, x.to_version) for x in moves] == [
        ("register", "challenger", None, 1),
        ("promote", "champion", None, 1),
        ("register", "challenger", 1, 3),
        ("promote", "champion", 1, 3),
        ("rollback", "champion", 3, 1),
    ]
    assert all(x.who and x.at and x.reason for x in moves)
    # durable: a fresh client on the same database reads the same history
    assert registry.history(client(registry_uri), "ctr") == moves
    loaded = registry.load(registry_uri, "ctr", "champion")
    assert isinstance(loaded, torch.nn.Linear)


def test_rollback_walks_back_through_the_champions(registry_uri: str) -> None:
    """A repeated promotion adds nothing to roll back to; a second rollback goes one further back."""
    c = client(registry_uri)
    registry.promote(registry_uri, "ctr", "first", version=1)
    registry.promote(registry_uri, "ctr", "better", version=2)
    again = registry.promote(registry_uri, "ctr", "A/B test concluded for the control", version=2)
    assert (again.from_version, again.to_version) == (2, 2)  # recorded, as every move is
    registry.promote(registry_uri, "ctr", "better still", version=3)
    assert registry.rollback(registry_uri, "ctr", "alert").to_version == 2
    assert registry.rollback(registry_uri, "ctr", "alert again").to_version == 1
    assert registry.alias_version(c, "ctr", "champion") == 1
    with pytest.raises(registry.RegistryError, match="no earlier version"):
        registry.rollback(registry_uri, "ctr", "nothing before the first")
    assert registry.lineage(registry.history(c, "ctr"), "champion") == [1]
    # moved with MLflow directly: the history cannot say what came before, so nothing is guessed
    c.set_registered_model_alias("ctr", "champion", "3")
    with pytest.raises(registry.RegistryError, match="outside adflow"):
        registry.rollback(registry_uri, "ctr", "alert")
    assert registry.alias_version(c, "ctr", "champion") == 3


def test_an_unreachable_registry_is_an_error_not_no_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read as "no champion", it would let the gate pass a candidate on the floor alone."""
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(MlflowException):
        registry.alias_version(client("http://127.0.0.1:9"), "ctr", "champion")


def test_refusals(registry_uri: str) -> None:
    c = client(registry_uri)
    with pytest.raises(registry.RegistryError, match="no version 9"):
        registry.move_alias(c, "ctr", "champion", 9, "x")
    with pytest.raises(registry.RegistryError, match="reason"):
        registry.move_alias(c, "ctr", "champion", 1, " ")
    with pytest.raises(registry.RegistryError, match="no 'challenger'"):
        registry.promote(registry_uri, "ctr", "no challenger yet")
    with pytest.raises(registry.RegistryError, match="roll back"):
        registry.rollback(registry_uri, "ctr", "nothing to undo")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):  # MLflow refuses the alias itself: no move, and no record of one
        registry.move_alias(c, "ctr", "latest", 1, "a reserved alias")
    assert registry.history(c, "ctr") == []
    # a move the history cannot hold (MLflow's tag values stop at 100k characters; PostgreSQL's column at
    # 5000) is refused before the alias moves: never a move without its record
    with pytest.raises(MlflowException):
        registry.move_alias(c, "ctr", "champion", 1, "x" * 100_001)
    assert registry.alias_version(c, "ctr", "champion") is None and registry.history(c, "ctr") == []


def test_model_cli(registry_uri: str, tmp_path: Path) -> None:
    runner = CliRunner()
    sets = [
        "--set",
        f"placement.mlflow_tracking_uri={registry_uri}",
        "--set",
        f"placement.workspace={tmp_path}",
    ]
    r = runner.invoke(app, ["model", "promote", "ctr", "--version", "2", "--reason", "manual", *sets])
    assert r.exit_code == 0, r.output
    assert "ctr@champion: None -> 2" in r.output
    r = runner.invoke(app, ["model", "promote", "ctr", "--version", "3", "--reason", "better", *sets])
    assert r.exit_code == 0 and "2 -> 3" in r.output
    r = runner.invoke(app, ["model", "rollback", "ctr", "--reason", "alert", *sets])
    assert r.exit_code == 0 and "3 -> 2" in r.output
    r = runner.invoke(
        app, ["model", "promote", "ctr", "--version", "3", "--reason", "won [exp ab-7] [/ops/1]", *sets]
    )
    assert r.exit_code == 0
    r = runner.invoke(app, ["model", "history", "ctr", *sets])
    assert r.exit_code == 0 and "rollback" in r.output and "champion v3" in r.output
    assert "no challenger" in r.output
    assert "won [exp ab-7] [/ops/1]" in r.output  # as written, not read as markup
    r = runner.invoke(app, ["model", "promote", "nope", "--reason", "x", "--version", "1", *sets])
    assert r.exit_code == 2 and "error" in r.output
