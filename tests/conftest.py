"""Shared fixtures: a small synthetic world generated once per session, settings pointing at temp folders."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from adflow.config import Settings, load_settings

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# DeepSpeed JIT-builds ops on first use: keep them out of the home folder (the Makefile sets the same)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).parents[1] / ".adflow" / "torch_extensions"))
SMALL = [
    "world.n_users=150",
    "world.n_items=120",
    "world.sessions_per_user=4",
    "world.n_pairs=200",
    "world.image_size=32",
    "ctr_train.epochs=8",
    "ab.enabled=false",  # the deploy branch's A/B test: on in test_synth_run_end_to_end and test_serving only
    "moon_train.enabled=false",  # MOON: on in test_moon and the first run of test_synth_run_end_to_end
    "creative_train.enabled=false",  # Creative4U: on in the first run of test_synth_run_end_to_end
]
# MOON at test size: a few epochs on the small world (the stage's code path, not its quality)
MOON_FAST = [
    "moon_train.enabled=true",
    "moon_train.pretrain_epochs=2",
    "moon_train.posttrain_epochs=1",
    "moon_train.posttrain_steps_per_epoch=2",
    "moon_train.batch_size=32",
    "moon_train.views_per_item=2",
    "moon_train.detector_steps=60",
]

# Creative4U at test size: the whole stage (SFT, GRPO, evaluation, tournament, scorer) on the small world
CREATIVE_FAST = [
    "creative_train.enabled=true",
    "creative_train.num_workers=1",
    "creative_train.threads=2",
    "creative_train.vision_warmup_steps=40",
    "creative_train.sft_epochs=8",  # ~270 examples: 8 epochs learn the verdict format
    "creative_train.sft_loss=completion",  # the tiny preset's; named so the e2e checks of its logs stay put
    "creative_train.grpo_steps=10",  # logging_steps is 10: the rewards are logged once
    "creative_train.grpo_prompts_per_step=2",
    "creative_train.num_generations=4",
    "creative_train.tournament_limit=12",
    "creative_train.distill_pairs=40",
    # every reward on, the optional graded facts reward too: GRPO must hand it the records' `gold` column
    "creative_train.reward_weights={format: 0.5, accuracy: 1.0, factor: 0.25, facts: 0.5, consistency: 0.5}",
    # the serving floor is tested on its own (test_creative_rewards); here the small world's selector, whatever
    # it learnt from ~270 examples, is served so that /explain's Creative4U path runs end to end
    "creative_train.serve_min_accuracy=0",
]


def small_settings(tmp: Path, *extra: str) -> Settings:
    return load_settings(
        "tiny",
        "local",
        [*SMALL, f"placement.workspace={tmp / 'ws'}", f"placement.runs_dir={tmp / 'runs'}", *extra],
    )


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world (read-only: copy it before changing anything)."""
    from adflow.data.world import generate

    out = tmp_path_factory.mktemp("world") / "small"
    generate(small_settings(out.parent).world, out)
    return out


@pytest.fixture
def world_copy(small_world: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "dataset"
    shutil.copytree(small_world, dst)
    return dst


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its sha256: to show a failed step wrote nothing there."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def accepted_workspace(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace where the validation stage accepted a clean dataset (its profile is the drift reference).
    The stage's own function, not a whole pipeline run: everything after validation is tested elsewhere.
    One per test module that asks for it; the corrupted datasets' tests check it is left untouched."""
    from components.validation.validate.core import validate_dataset

    root = tmp_path_factory.mktemp("accepted")
    clean = root / "clean"
    shutil.copytree(small_world, clean)
    s = small_settings(root, "data.source=dataset", f"data.path={clean}")
    report = validate_dataset(clean, s.validation, root / "docs", s.placement.workspace)
    assert report.success and report.accepted_dir
    return root


# ---------------------------------------------------------------- the web console
ADMIN_TOKEN = "alice-" + "t0ken" * 4  # test-only tokens; real ones live in a file that is never committed
OTHER_TOKEN = "bob-" + "s3cret" * 4
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def console_core(tmp: Path) -> object:
    """A console over a temp workspace (small world), with `ctr-ciubm` v1 champion and v2 challenger."""
    import torch

    from adflow import registry
    from adflow.console.core import ConsoleCore
    from adflow.tracking import client, ensure_experiment

    base = [*SMALL, f"placement.workspace={tmp / 'ws'}", f"placement.runs_dir={tmp / 'runs'}"]
    s = load_settings("tiny", "local", base).resolved()
    uri = s.placement.tracking_uri()
    c = client(uri)
    exp = ensure_experiment(c, s.placement.mlflow_experiment, s.placement.artifact_root())
    path = tmp / "predictor.pt"
    torch.save(torch.nn.Linear(2, 1), path)
    name = s.registry.model_name
    for k, alias in ((1, registry.CHAMPION), (2, registry.CHALLENGER)):
        run = c.create_run(exp, run_name=f"train-{k}")
        v = registry.register(uri, run.info.run_id, str(path), name, {"gate_reason": f"candidate {k} passed"},
                              ["torch==2.13.0"])  # fmt: skip
        registry.move_alias(c, name, alias, v, f"gate passed ({k})", "register", by="pipeline")
    return ConsoleCore(s, "local", base, cwd=Path(__file__).parents[1])
