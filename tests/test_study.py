"""Seed studies (adflow/study.py): seeds, statistics across seeds, resume, and both stages' studies for real."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from adflow import study as S
from adflow.cli import app
from components.evaluation.gate.core import score
from components.features.build.core import build

from .conftest import CREATIVE_FAST, MOON_FAST, small_settings


def test_parse_seeds() -> None:
    assert S.parse_seeds("0-5") == [0, 1, 2, 3, 4, 5]
    assert S.parse_seeds("3, 0,7") == [3, 0, 7]
    assert S.parse_seeds("1-3,2,8") == [1, 2, 3, 8]  # each seed once
    for bad, why in (
        ("4", "at least two"),
        ("5-2", "backwards"),
        ("a-b", "not a seed"),
        ("1,,2", "not a seed"),
    ):
        with pytest.raises(S.StudyError, match=why):
            S.parse_seeds(bad)


def test_across_seeds_and_reading() -> None:
    d = S.across_seeds([0.01, 0.02, 0.03, -0.01])
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.0125)
    assert d["sd"] == pytest.approx(np.std([0.01, 0.02, 0.03, -0.01], ddof=1))
    assert d["ci95"] == pytest.approx(3.182446 * d["sd"] / 2, rel=1e-5)  # t(0.975, 3) * sd / sqrt(4)
    assert (d["positive"], d["negative"]) == (3, 1)
    assert S.verdict(d) == "not told from zero"
    up = S.across_seeds([0.010, 0.012, 0.011])
    assert S.verdict(up) == "better" and S.verdict(up, higher_is_better=False) == "worse"
    assert S.verdict(S.across_seeds([-0.010, -0.012, -0.011])) == "worse"
    assert S.verdict(S.across_seeds([0.01])) == "not enough seeds"
    assert S.across_seeds([0.01, math.nan, 0.03])["n"] == 2  # a missing value is left out, not averaged in


def _study(per_seed: dict[int, dict[str, dict[str, float]]], key: dict[str, str]) -> S.Study:
    return S.Study(
        "ctr", sorted(per_seed), "a", ["b"], per_seed, dict.fromkeys(per_seed, 1.0), key, S.CTR_METRICS
    )


def test_report_and_resume(tmp_path: Path) -> None:
    row = {"auc": 0.70, "gauc": 0.71, "cold_auc": 0.60, "logloss": 0.30}
    per_seed = {s: {"a": row, "b": {**row, "auc": 0.719 + 0.001 * s, "logloss": 0.29}} for s in range(3)}
    st = _study(per_seed, {"data": "x"})
    d = st.differences("auc")["b"]
    assert d["mean"] == pytest.approx(0.02) and d["positive"] == 3
    S.write_report(st, tmp_path)
    md = (tmp_path / "study.md").read_text()
    assert "| b | auc | +0.0200 | [+0.0175, +0.0225] | 3 / 0 | better |" in md
    assert "| b | logloss | -0.0100 |" in md and "| 0 / 3 | better |" in md  # lower logloss: better
    assert (tmp_path / "study.png").stat().st_size > 0
    assert json.loads((tmp_path / "study.json").read_text())["done"] == [0, 1, 2]
    # a restart on the same data and settings keeps the seeds it finished and runs the rest
    kept, seconds = S._resume(tmp_path, "ctr", [0, 1, 2, 5], {"data": "x"})
    assert (
        sorted(kept) == [0, 1, 2]
        and kept[1]["b"]["auc"] == pytest.approx(0.72)
        and sorted(seconds) == [0, 1, 2]
    )
    # what would be written over is refused: another study, or finished seeds left out of --seeds
    with pytest.raises(S.StudyError, match="another study"):
        S._resume(tmp_path, "ctr", [0, 1, 2], {"data": "y"})
    with pytest.raises(S.StudyError, match="another study"):
        S._resume(tmp_path, "creative", [0, 1, 2], {"data": "x"})
    with pytest.raises(S.StudyError, match=r"seeds \[2\] that --seeds leaves out"):
        S._resume(tmp_path, "ctr", [0, 1], {"data": "x"})
    assert json.loads((tmp_path / "study.json").read_text())["done"] == [0, 1, 2]  # untouched


def test_run_artifacts(tmp_path: Path) -> None:
    ds, fs = tmp_path / "dataset", tmp_path / "features"
    ds.mkdir()
    fs.mkdir()
    stages = [
        {"name": "synth", "artifacts": {"dataset": str(ds)}},
        {"name": "features", "artifacts": {"features": str(fs), "online_store": "x"}},
        {"name": "train_ctr", "artifacts": {"models": str(tmp_path / "gone")}},
    ]
    (tmp_path / "summary.json").write_text(json.dumps({"stages": stages}))
    assert S.run_artifacts(tmp_path) == {"dataset": ds, "features": fs}
    assert S.run_artifacts(tmp_path / "summary.json") == {"dataset": ds, "features": fs}
    with pytest.raises(S.StudyError, match=r"no summary\.json"):
        S.run_artifacts(tmp_path / "nowhere")
    r = CliRunner().invoke(app, ["study", "ctr", "--run", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "no summary.json" in r.output
    r = CliRunner().invoke(app, ["study", "ctr", "--run", str(tmp_path), "--seeds", "3"])
    assert r.exit_code == 2 and "at least two seeds" in r.output


@pytest.fixture(autouse=True, scope="module")
def _shutdown_ray():  # type: ignore[no-untyped-def]
    """The studies start Ray inside this process; stop it so later pipeline runs start clean."""
    yield
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_ctr_study_trains_each_seed_and_resumes(small_world: Path, tmp_path: Path) -> None:
    settings = small_settings(tmp_path, "ctr_train.epochs=2")
    features = tmp_path / "features"
    build(settings, small_world, features)
    with pytest.raises(S.StudyError, match="ciubm_moon"):  # no MOON here: stopped before any training
        S.ctr_study(settings, features, [0, 1], ["ciubm", "ciubm_moon"], "ciubm", tmp_path / "bad")
    assert not (tmp_path / "bad" / "seed0").exists()
    with pytest.raises(S.StudyError, match="not among"):
        S.ctr_study(settings, features, [0, 1], ["ciubm", "din"], "ciubm_text", tmp_path / "bad")
    with pytest.raises(S.StudyError, match="list one of the two"):  # no MOON: ciubm reads the text embedding
        S.ctr_study(settings, features, [0], ["ciubm", "ciubm_text"], "ciubm", tmp_path / "bad")

    out = tmp_path / "study"
    st = S.ctr_study(settings, features, [0, 1], ["ciubm", "din"], "ciubm", out)
    assert sorted(st.per_seed) == [0, 1]
    test = pd.read_parquet(features / "test.parquet")
    for seed in (0, 1):  # each seed's numbers are its exported models' scores on the test split
        din = torch.load(out / f"seed{seed}" / "din.pt", weights_only=False)
        ciubm = torch.load(out / f"seed{seed}" / "ciubm.pt", weights_only=False)
        m, _ = score(din, test, ciubm.encoder.is_cold(test))
        assert st.per_seed[seed]["din"]["auc"] == pytest.approx(m["auc"])
        assert st.per_seed[seed]["din"]["cold_auc"] == pytest.approx(m["cold_auc"])
    assert st.per_seed[0]["ciubm"]["auc"] != st.per_seed[1]["ciubm"]["auc"]  # the seed reached training
    d = st.differences("auc")["din"]
    assert d["mean"] == pytest.approx(
        np.mean([st.per_seed[s]["din"]["auc"] - st.per_seed[s]["ciubm"]["auc"] for s in (0, 1)])
    )
    # MLflow: one run for the study, each seed's numbers at step = seed, the paired differences, the report
    from adflow.tracking import client

    c = client(settings.resolved().placement.tracking_uri())
    exp = c.get_experiment_by_name(f"{settings.placement.mlflow_experiment}-studies")
    (run,) = c.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["kind"] == "ctr"
    hist = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "din.auc")}
    assert hist == pytest.approx({s: st.per_seed[s]["din"]["auc"] for s in (0, 1)})
    assert run.data.metrics["din_minus_ciubm.auc.mean"] == pytest.approx(d["mean"])
    assert {"study.md", "study.png", "study.json"} <= {f.path for f in c.list_artifacts(run.info.run_id)}
    # a restart with one more seed trains only that one
    before = (out / "seed0" / "ciubm.pt").stat().st_mtime_ns
    again = S.ctr_study(settings, features, [0, 1, 2], ["ciubm", "din"], "ciubm", out)
    assert sorted(again.per_seed) == [0, 1, 2] and again.per_seed[1] == st.per_seed[1]
    assert (out / "seed0" / "ciubm.pt").stat().st_mtime_ns == before
    assert "| din | auc |" in (out / "study.md").read_text()
    # the feature settings training reads are part of what the finished seeds were measured on
    shorter = small_settings(tmp_path, "ctr_train.epochs=2", "features.seq_len=5")
    with pytest.raises(S.StudyError, match="another study"):
        S.ctr_study(shorter, features, [0, 1, 2], ["ciubm", "din"], "ciubm", out)


@pytest.mark.slow
def test_creative_study_pairs_sft_and_grpo_per_seed(small_world: Path, tmp_path: Path) -> None:
    settings = small_settings(
        tmp_path,
        *CREATIVE_FAST,
        "creative_train.sft_epochs=2",
        "creative_train.vision_warmup_steps=0",
        "creative_train.grpo_steps=2",
        "creative_train.tournament_limit=2",
        "creative_train.distill_pairs=10",
    )
    out = tmp_path / "study"
    st = S.creative_study(settings, small_world, [0, 1], out)
    for seed in (0, 1):
        m = json.loads((out / f"seed{seed}" / "evaluation.json").read_text())["metrics"]
        row = st.per_seed[seed]
        assert row["sft"]["accuracy"] == m["sft_accuracy"]
        assert row["sft_grpo"]["accuracy"] == m["sft_grpo_accuracy"]
        # the held-out answers are the same examples before and after GRPO: the paired gain is the difference
        assert row["sft_grpo"]["paired_gain"] == pytest.approx(m["sft_grpo_accuracy"] - m["sft_accuracy"])
    from safetensors.torch import load_file

    a, b = (
        load_file(str(next((out / f"seed{k}" / "prepared" / "sft").glob("*.safetensors")))) for k in (0, 1)
    )
    assert any(not torch.equal(a[k], b[k]) for k in a)  # another init seed trained another selector
    assert "| sft_grpo | accuracy |" in (out / "study.md").read_text()
    settings.creative_train.grpo_steps = 0
    with pytest.raises(S.StudyError, match="grpo_steps is 0"):
        S.creative_study(settings, small_world, [0, 1], tmp_path / "none")


@pytest.mark.slow
def test_moon_study_compares_every_encoder_per_seed(small_world: Path, tmp_path: Path) -> None:
    settings = small_settings(tmp_path, *MOON_FAST, "moon_train.variants=[moon, no_core_region]")
    out = tmp_path / "study"
    st = S.moon_study(settings, small_world, [0, 1], out)
    assert st.metrics == ("image_r10", "image_r10_cluttered", "text_image_r10")
    assert st.compared == ["baseline", "moon_pretrain", "no_core_region"]  # baseline first, then by name
    for seed in (0, 1):  # each seed's numbers are its stage's evaluation table
        recall = json.loads((out / f"seed{seed}" / "moon.json").read_text())["image_recall"]
        for v in ("moon", "baseline", "no_core_region", "moon_pretrain"):
            assert st.per_seed[seed][v]["image_r10"] == pytest.approx(recall[v])
        assert "text_image_r10" not in st.per_seed[seed]["baseline"]  # MiniLM reads no text-to-image here
    a, b = (pd.read_parquet(out / f"seed{k}" / "embeddings.parquet") for k in (0, 1))
    assert not np.allclose(
        np.stack(a["moon_embedding"]), np.stack(b["moon_embedding"])
    )  # the seed reached training
    md = (out / "study.md").read_text()
    assert "| baseline | image_r10 |" in md and "| no_core_region | image_r10_cluttered |" in md
    assert "| baseline | text_image_r10 |" not in md  # no such number: no row


def test_a_study_key_holds_where_it_trains_and_pairs_need_both_rows(tmp_path: Path) -> None:
    """Seeds trained on another number of Ray workers or another device, or MOON post-trained from another
    cut-off, are another study; a metric the base variant lacks is left out of the pairs, not a KeyError."""
    from adflow.config import load_settings

    base = load_settings("tiny", "local")
    keys = {
        "same": S._key(base, tmp_path, "moon_train"),
        "workers": S._key(
            load_settings("tiny", "local", ["placement.num_workers=1"]), tmp_path, "moon_train"
        ),
        "gpu": S._key(load_settings("tiny", "local", ["placement.use_gpu=true"]), tmp_path, "moon_train"),
    }
    assert keys["same"] == S._key(load_settings("tiny", "local"), tmp_path, "moon_train")
    assert keys["workers"] != keys["same"] and keys["gpu"] != keys["same"]
    row = {"auc": 0.7}
    st = _study(
        {
            0: {"a": row, "b": {**row, "extra": 1.0}},
            1: {"a": {**row, "extra": 0.5}, "b": {**row, "extra": 1.0}},
        },
        {"data": "x"},
    )
    assert st.paired("b", "extra") == [0.5]  # seed 0's base has no "extra"
