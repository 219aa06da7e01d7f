"""The Ray Train building blocks the CTR and MOON stages share (adflow/train.py): resuming under DeepSpeed,
one run per fit, and a resume with nothing left to train."""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from adflow import train as T
from tests.conftest import small_settings


def test_deepspeed_resume_keeps_the_restored_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeRO-2 on CPU over gloo, one process: weights restored the way the loops restore them (into the bare model,
    then the engine) survive the next optimiser step. Loaded into the engine's module after initialize, they
    did not: ZeRO's fp32 master copy, taken at initialize, went back over them (5.0 -> ~0.3 in one step)."""
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    for k, v in {**env, "LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"}.items():
        monkeypatch.setenv(k, v)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        saved = {"weight": torch.full((1, 4), 5.0), "bias": torch.full((1,), 5.0)}
        state = {"epoch": 0, "models": {"m": saved}, "opts": {}}  # a DeepSpeed checkpoint has no moments
        T.load_weights({"m": model}, state)
        config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1}
        eng, opt = T.engine(model, opt, config | {"zero_optimization": {"stage": 2}})
        T.restore_optimisers({"m": opt}, state, deepspeed=True)
        T.step(eng, opt, eng(torch.randn(4, 4)).pow(2).mean(), deepspeed=True)
        w = T.unwrap(eng).weight.detach()
        assert torch.allclose(w, torch.full_like(w, 5.0), atol=0.01), w  # one step of lr 1e-3 away
    finally:
        dist.destroy_process_group()


def _loop(config: dict[str, Any]) -> None:
    """Ray Train worker: record the state it would continue from, then report an epoch's checkpoint."""
    import ray.train

    state = T.load_state(config)
    with open(config["log"], "a") as f:
        f.write(json.dumps({"run": config["run"], "resumed": state.get("run")}) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"epoch": 0, "run": config["run"], "models": {}}, Path(tmp) / "state.pt")
        ray.train.report({"epoch": 0.0}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


@pytest.mark.slow
def test_each_fit_is_a_run_of_its_own(tmp_path: Path) -> None:
    """A second fit into the same storage under the same name starts fresh (Ray Train handed it the first
    one's checkpoint before), and a resume_from that already holds every epoch starts no Ray at all. (A fit
    continuing from resume_from: tests/test_ctr_training.py's resume test; each fit here costs ~25 s.)"""
    s = small_settings(tmp_path, "placement.num_workers=1")
    log, store = tmp_path / "log.jsonl", tmp_path / "ray"

    def fit(run: str, resume_from: str | None = None, epochs: int | None = None) -> Any:
        config = {"run": run, "log": str(log), "resume_from": resume_from}
        return T.fit(s, _loop, config, store, "ctr", epochs)

    first = fit("first")
    second = fit("second")
    assert first.error is None and second.error is None
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines == [{"run": "first", "resumed": None}, {"run": "second", "resumed": None}]
    runs = {Path(r.checkpoint.path).parent for r in (first, second)}
    assert len(runs) == 2 and all(p.parent == store and p.name.startswith("ctr-") for p in runs)
    # the checkpoint holds epoch 0 of 1: nothing left, no Ray run, no line in the log
    assert T.epochs_done(first.checkpoint.path) == 1 and T.epochs_done(None) == 0
    assert fit("done", resume_from=first.checkpoint.path, epochs=1) is None
    checkpoint = T.final_checkpoint(None, first.checkpoint.path, "test")
    assert checkpoint.path == first.checkpoint.path and len(log.read_text().splitlines()) == 2
