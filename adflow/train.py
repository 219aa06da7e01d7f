"""Building blocks the Ray Train stages share (CTR, MOON): the trainer, engines, checkpoints. Not a loop.

Each stage keeps its own training loop, readable top to bottom; these are the parts that must behave the same
in every stage: DDP or DeepSpeed from one config, the global batch across workers, a checkpoint per epoch that
a retried worker group or an explicit `resume_from` continues after, and one history line per epoch.

A loop resumes in three steps: `load_state` (the checkpoint's state), `load_weights` into the bare models,
then `engine`, then `restore_optimisers`. The weights go in before the engine is built because DeepSpeed's
ZeRO keeps fp32 master copies taken at initialize and copies them back over the model at every step.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adflow.config import Settings
from adflow.progress import log


def epochs_done(resume_from: str | Path | None) -> int:
    """How many epochs the checkpoint folder `resume_from` holds (0 for none)."""
    import torch

    if not resume_from:
        return 0
    # memory-mapped: only the epoch is read, not every variant's weights
    state = torch.load(Path(resume_from) / "state.pt", map_location="cpu", weights_only=False, mmap=True)
    return int(state["epoch"]) + 1


def fit(
    settings: Settings,
    loop: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    storage: str | Path,
    name: str,
    epochs: int | None = None,
) -> Any:
    """One TorchTrainer run of `loop` on the placement's workers (gloo on CPU, nccl on GPUs); Ray's Result.
    None, and Ray never started, when config's `resume_from` already holds all `epochs`: the loop would run
    no epoch and report no checkpoint (`final_checkpoint` then reads resume_from's).

    Every fit is a run of its own in `storage` (`name`-time-suffix): Ray Train reloads the checkpoints of a
    run folder it finds, so a second fit under the same name (a stage rerun into the same output folder)
    got the first one's last checkpoint from get_checkpoint(), before and instead of its `resume_from`."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from adflow.ray_cluster import connect

    if epochs is not None and (done := epochs_done(config.get("resume_from"))) >= epochs:
        log(name, f"{config['resume_from']} holds {done} epochs of {epochs}: nothing left to train")
        return None
    if config.get("resume_from") and (config.get("train") or {}).get("deepspeed"):
        log(name, "resuming under DeepSpeed: the checkpoint's weights, fresh optimiser moments (not saved)")
    run_name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    p = settings.placement
    connect(p.ray_address, num_cpus=p.num_workers)
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=p.num_workers,
            use_gpu=p.use_gpu,
            resources_per_worker={"GPU": p.gpus_per_worker} if p.use_gpu else {"CPU": 1},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(Path(storage).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit()


def final_checkpoint(result: Any, resume_from: str | None, what: str) -> Any:
    """The checkpoint a `fit` ended with: resume_from's when it had nothing left to train (None)."""
    import ray.train

    if result is None:
        assert resume_from, "fit returns None only for a finished resume_from"
        return ray.train.Checkpoint.from_directory(resume_from)
    if result.error:
        raise RuntimeError(f"{what} training failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError(f"{what} training reported no checkpoint")
    return result.checkpoint


def engine(model: Any, opt: Any, deepspeed_config: dict[str, Any] | None, **ddp: Any) -> tuple[Any, Any]:
    """(engine, optimizer): a DeepSpeed engine when configured (it reuses Ray's process group), else DDP."""
    if deepspeed_config:
        import deepspeed

        eng, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config)
        return eng, opt
    import ray.train.torch

    return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp or None), opt


def unwrap(eng: Any) -> Any:
    """The model inside a DDP or DeepSpeed engine."""
    return eng.module if hasattr(eng, "module") else eng


def half_dtype(deepspeed_config: dict[str, Any] | None) -> Any:
    """bf16 when DeepSpeed runs in bf16 (float inputs must match its weights), else None."""
    import torch

    return torch.bfloat16 if ((deepspeed_config or {}).get("bf16") or {}).get("enabled") else None


def load_state(config: dict[str, Any]) -> dict[str, Any]:
    """The saved state to continue from ({} when starting fresh): Ray's own checkpoint (a retried worker group
    of this fit, which went on from resume_from) first, else the config's `resume_from` (Ray Train v2 dropped
    TorchTrainer(resume_from_checkpoint=...)). Training continues at state["epoch"] + 1."""
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint.from_directory(config["resume_from"])
    if not ckpt:
        return {}
    with ckpt.as_directory() as d:
        state: dict[str, Any] = torch.load(Path(d) / "state.pt", weights_only=False)
    return state


def load_weights(models: dict[str, Any], state: dict[str, Any]) -> None:
    """The state's weights into every variant's bare model, before `engine` wraps it (see the docstring)."""
    for v, model in models.items():
        if state:  # fresh: nothing to load
            model.load_state_dict(state["models"][v])


def restore_optimisers(opts: dict[str, Any], state: dict[str, Any], deepspeed: bool) -> None:
    """The state's optimiser moments into every variant's optimiser, after `engine`. A DeepSpeed checkpoint has
    none (ZeRO partitions them across ranks; `report_epoch` saves the weights alone): its optimiser restarts."""
    if not state:
        return
    if deepspeed:
        log("train", f"resumed after epoch {state['epoch']} with fresh optimiser moments (DeepSpeed)")
        return
    for v, opt in opts.items():
        opt.load_state_dict(state["opts"][v])


def report_epoch(
    config: dict[str, Any],
    rank: int,
    metrics: dict[str, float],
    engines: dict[str, Any],
    opts: dict[str, Any],
    deepspeed: bool,
    **extra: Any,
) -> None:
    """Report an epoch: rank 0 writes the checkpoint (every variant's weights and optimiser, the epoch, its
    metrics and `extra`) and the history line; Ray's metrics_dataframe keeps only retained checkpoints."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            state = {
                "epoch": int(metrics["epoch"]),
                "models": {
                    v: {k: t.cpu() for k, t in unwrap(e).state_dict().items()} for v, e in engines.items()
                },
                "opts": {} if deepspeed else {v: o.state_dict() for v, o in opts.items()},
                "metrics": metrics,
                **extra,
            }
            torch.save(state, Path(tmp) / "state.pt")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            with open(config["history_path"], "a") as f:
                f.write(json.dumps(metrics) + "\n")
        ray.train.report(metrics, checkpoint=checkpoint)


def step(eng: Any, opt: Any, loss: Any, deepspeed: bool) -> None:
    """One optimiser step on `loss` (DeepSpeed's engine owns backward and step)."""
    if deepspeed:
        eng.backward(loss)
        eng.step()
    else:
        opt.zero_grad()
        loss.backward()
        opt.step()
