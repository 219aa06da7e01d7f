"""Building blocks the Ray Train stages share (CTR, MOON): the trainer, engines, checkpoints. Not a loop.

Each stage keeps its own training loop, readable top to bottom; these are the parts that must behave the same
in every stage: DDP or DeepSpeed from one config, the global batch across workers, a checkpoint per epoch that
a retried worker group or an explicit `resume_from` continues after, and one history line per epoch.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adflow.config import Settings


def fit(
    settings: Settings,
    loop: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    storage: str | Path,
    name: str,
) -> Any:
    """One TorchTrainer run of `loop` on the placement's workers (gloo on CPU, nccl on GPUs); Ray's Result."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from adflow.ray_cluster import connect

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
            name=name,
            storage_path=str(Path(storage).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit()


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


def restore(
    config: dict[str, Any], engines: dict[str, Any], opts: dict[str, Any], deepspeed: bool
) -> dict[str, Any]:
    """Load the last checkpoint into every variant: Ray's own (a retried worker group) first, else the
    config's `resume_from` (Ray Train v2 dropped TorchTrainer(resume_from_checkpoint=...)). Returns the saved
    state ({} when starting fresh); training continues at state["epoch"] + 1."""
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint.from_directory(config["resume_from"])
    if not ckpt:
        return {}
    with ckpt.as_directory() as d:
        state: dict[str, Any] = torch.load(Path(d) / "state.pt", weights_only=False)
    for v, eng in engines.items():
        unwrap(eng).load_state_dict(state["models"][v])
        if not deepspeed:
            opts[v].load_state_dict(state["opts"][v])
    return state


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
