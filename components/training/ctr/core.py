"""Train the CTR models (CiUBM and its DIN baseline, side by side) with Ray Train.

Locally:   the `train_ctr` step of ads_full (make run): 2 Ray workers, DDP over gloo, 1 thread each.
Cluster:   adflow run --preset full --placement cluster: GPU workers (placement.use_gpu) and, when
           ctr_train.deepspeed is set, DeepSpeed (ZeRO) instead of DDP.

Both variants train in one TorchTrainer run on the same batches: one Ray start-up and one fit instead of
two, and the comparison cannot be skewed by different data order. Every epoch is checkpointed; a run
given `resume_from` continues after the last completed epoch.
"""

from __future__ import annotations

import json
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow.config import Settings
from adflow.progress import log

STAGE = "train_ctr"
SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    model_dir: str
    epochs_run: list[int]
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str | None = None
    seconds: float = 0.0


def prepare(
    features_dir: str | Path, out_dir: str | Path, seq_len: int, shuffle_labels: bool = False, seed: int = 0
) -> Path:
    """Fit the encoder on the training split and write the tensors every worker reads (npz per split)."""
    from adflow.models.ctr import FeatureEncoder

    src, out = Path(features_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = {s: pd.read_parquet(src / f"{s}.parquet") for s in SPLITS}
    catalog = pd.read_parquet(src / "tables" / "item_content.parquet").rename(
        columns={"text_embedding": "embedding"}
    )
    enc = FeatureEncoder.fit(frames["train"], catalog, seq_len)
    for s, df in frames.items():
        arrays = enc.transform(df)
        if shuffle_labels and s == "train":
            arrays["label"] = np.random.default_rng(seed).permutation(arrays["label"])
        np.savez(out / f"{s}.npz", **arrays)
    with (out / "encoder.pkl").open("wb") as f:
        pickle.dump(enc, f)
    return out


def _load(path: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(path / f"{split}.npz") as z:
        return {k: z[k] for k in z.files}


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: every variant trained on this worker's shard; metrics and a checkpoint per epoch."""
    import ray.train
    import torch

    from adflow.config import CTRModelConfig, CTRTrainConfig
    from adflow.metrics import auc, logloss
    from adflow.models.ctr import CTRModel, to_tensors

    torch.set_num_threads(config["threads"])
    mcfg, tcfg = CTRModelConfig(**config["model"]), CTRTrainConfig(**config["train"])
    data = Path(config["data_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    with (data / "encoder.pkl").open("rb") as f:
        enc = pickle.load(f)
    train, val = _load(data, "train"), _load(data, "val")
    torch.manual_seed(tcfg.seed)
    device = ray.train.torch.get_device()
    engines: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    for v in tcfg.variants:
        model = CTRModel(mcfg, v, enc.sizes(), enc.content if v == "ciubm" else None)
        opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        if tcfg.deepspeed:
            import deepspeed

            engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=tcfg.deepspeed)
            engines[v] = engine
        else:
            engines[v] = ray.train.torch.prepare_model(model)
        opts[v] = opt

    def inner(v: str) -> Any:
        e = engines[v]
        return e.module if hasattr(e, "module") else e

    start = 0
    best: dict[
        str, dict[str, Any]
    ] = {}  # per variant: the epoch with the best validation AUC and its weights
    # Ray's own restore (a retried worker group) comes first; else an explicit resume point: Ray Train v2
    # dropped TorchTrainer(resume_from_checkpoint=...), so the loop reads it from its config.
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint.from_directory(config["resume_from"])
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        for v in tcfg.variants:
            inner(v).load_state_dict(state["models"][v])
            if not tcfg.deepspeed:
                opts[v].load_state_dict(state["opts"][v])
        start = state["epoch"] + 1
        best = state.get("best", {})

    # With DeepSpeed bf16 the engine holds bf16 weights and buffers: float inputs must match them.
    half = torch.bfloat16 if ((tcfg.deepspeed or {}).get("bf16") or {}).get("enabled") else None

    def on_device(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        return t.to(half) if half is not None and t.is_floating_point() else t

    n = len(train["label"]) - len(train["label"]) % world  # equal shards: DDP needs equal step counts
    batch = max(1, tcfg.batch_size // world)  # batch_size is the global batch: the same updates at any scale
    for epoch in range(start, tcfg.epochs):
        t_epoch = time.perf_counter()
        perm = np.random.default_rng(tcfg.seed + epoch).permutation(len(train["label"]))[:n]
        shard = perm[rank::world]
        losses = {v: [] for v in tcfg.variants}
        for v in tcfg.variants:
            engines[v].train()
        for i in range(0, len(shard), batch):
            b = {k: on_device(t) for k, t in to_tensors(train, shard[i : i + batch]).items()}
            for v in tcfg.variants:
                logits = engines[v](b).float()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, b["label"].float())
                if tcfg.deepspeed:
                    engines[v].backward(loss)
                    engines[v].step()
                else:
                    opts[v].zero_grad()
                    loss.backward()
                    opts[v].step()
                losses[v].append(float(loss.detach()))
        metrics: dict[str, float] = {"epoch": float(epoch), "epoch_train_s": time.perf_counter() - t_epoch}
        for v in tcfg.variants:
            m = inner(v).eval()
            with torch.inference_mode():
                p = (
                    torch.sigmoid(m({k: on_device(t) for k, t in to_tensors(val).items()}).float())
                    .cpu()
                    .numpy()
                )
            metrics[f"{v}_train_loss"] = float(np.mean(losses[v]))
            metrics[f"{v}_val_auc"] = auc(val["label"], p)
            metrics[f"{v}_val_logloss"] = logloss(val["label"], p)
            if rank == 0 and metrics[f"{v}_val_auc"] > best.get(v, {}).get("val_auc", -1.0):
                weights = {
                    k: (t.float() if t.is_floating_point() else t).detach().cpu().clone()
                    for k, t in inner(v).state_dict().items()
                }
                best[v] = {"epoch": epoch, "val_auc": metrics[f"{v}_val_auc"], "weights": weights}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                state = {
                    "epoch": epoch,
                    "models": {
                        v: {k: t.cpu() for k, t in inner(v).state_dict().items()} for v in tcfg.variants
                    },
                    "opts": {} if tcfg.deepspeed else {v: opts[v].state_dict() for v in tcfg.variants},
                    "metrics": metrics,
                    "best": best,
                }
                torch.save(state, Path(tmp) / "state.pt")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                with open(
                    config["history_path"], "a"
                ) as f:  # Ray's metrics_dataframe keeps only retained checkpoints
                    f.write(json.dumps(metrics) + "\n")
            ray.train.report(metrics, checkpoint=checkpoint)


def fit(
    settings: Settings,
    data_dir: str | Path,
    storage: str | Path,
    name: str,
    history_path: str | Path,
    resume_from: str | None = None,
) -> Any:
    """One TorchTrainer run; returns Ray's Result (metrics history, last checkpoint)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from adflow.ray_cluster import connect

    p = settings.placement
    connect(p.ray_address, num_cpus=p.num_workers)
    config = {
        "model": settings.ctr_model.model_dump(),
        "train": settings.ctr_train.model_dump(),
        "data_dir": str(Path(data_dir).resolve()),
        "threads": 1,  # tiny models: one thread per worker beats two (FIELD-NOTES)
        "history_path": str(Path(history_path).resolve()),
        "resume_from": str(resume_from) if resume_from else None,
    }
    trainer = TorchTrainer(
        train_loop,
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


def export(
    settings: Settings, data_dir: str | Path, checkpoint_dir: str | Path, out_dir: str | Path
) -> dict[str, str]:
    """Predictors (encoder + weights of the best validation epoch) per variant, for evaluation and registration."""
    import torch

    from adflow.models.ctr import CTRModel, CTRPredictor

    with (Path(data_dir) / "encoder.pkl").open("rb") as f:
        enc = pickle.load(f)
    state = torch.load(Path(checkpoint_dir) / "state.pt", weights_only=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for v in settings.ctr_train.variants:
        model = CTRModel(settings.ctr_model, v, enc.sizes(), enc.content if v == "ciubm" else None)
        chosen = state.get("best", {}).get(v)
        model.load_state_dict(chosen["weights"] if chosen else state["models"][v])
        path = out / f"{v}.pt"
        torch.save(CTRPredictor(enc, model.eval()), path)
        paths[v] = str(path)
    return paths


def train(
    settings: Settings, features_dir: str | Path, model_dir: str | Path, resume_from: str | None = None
) -> TrainResult:
    t0 = time.perf_counter()
    out = Path(model_dir)
    t = settings.ctr_train
    data = prepare(features_dir, out / "tensors", settings.features.seq_len, t.shuffle_labels, t.seed)
    history_path = out / "history.jsonl"
    done_before = len(history_path.read_text().splitlines()) if history_path.exists() else 0
    result = fit(settings, data, out / "ray", "ctr", history_path, resume_from)
    if result.error:
        raise RuntimeError(f"CTR training failed: {result.error}")
    history = [json.loads(line) for line in history_path.read_text().splitlines()[done_before:]]
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError("CTR training reported no checkpoint")
    with ckpt.as_directory() as d:
        paths = export(settings, data, d, out)
        ckpt_path = str(ckpt.path)
    (out / "models.json").write_text(json.dumps(paths, indent=2))
    epochs = sorted({int(h["epoch"]) for h in history})
    log(STAGE, f"trained {', '.join(paths)} for epochs {epochs} in {time.perf_counter() - t0:.1f}s")
    return TrainResult(str(out), epochs, history, ckpt_path, time.perf_counter() - t0)


def _curves(history: list[dict[str, float]], out: Path, variants: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    epochs = [int(h["epoch"]) for h in history]
    for v in variants:
        ax[0].plot(epochs, [h[f"{v}_train_loss"] for h in history], marker="o", label=f"{v} train")
        ax[0].plot(epochs, [h[f"{v}_val_logloss"] for h in history], marker="x", ls="--", label=f"{v} val")
        ax[1].plot(epochs, [h[f"{v}_val_auc"] for h in history], marker="o", label=v)
    ax[0].set(title="loss", xlabel="epoch")
    ax[1].set(title="validation AUC", xlabel="epoch")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(
    settings_json: str, tracking_uri: str, parent_run_id: str, features_dir: str | Path, model_dir: str | Path
) -> TrainResult:
    from adflow.config import settings_from_json
    from adflow.tracking import stage_run

    s = settings_from_json(settings_json)
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        sr.params(
            {
                "ctr_model": s.ctr_model.model_dump(),
                "ctr_train": s.ctr_train.model_dump(),
                "workers": s.placement.num_workers,
            }
        )
        result = train(s, features_dir, model_dir)
        for h in result.history:
            sr.metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))
        last = result.history[-1] if result.history else {}
        sr.metrics(
            {f"final_{k}": v for k, v in last.items() if k.endswith("val_auc")} | {"train_s": result.seconds}
        )
        sr.log_file(_curves(result.history, Path(model_dir), list(s.ctr_train.variants)))
        sr.artifact("models", model_dir)
        sr.artifact("curves", Path(model_dir) / "curves.png")
    return result


def fit_in_process(
    settings: Settings,
    features_dir: str | Path,
    variant: str = "ciubm",
    epochs: int = 5,
    flip_labels: bool = False,
) -> Any:
    """The same model trained in one process without Ray (for serving tests and benchmarks, where a quick
    registered model is needed, not the distributed path). `flip_labels` trains it on 1 - click: a model that
    ranks what users want least first, truly worse in the world's ground truth (an A/B test's known loser)."""
    import torch

    from adflow.models.ctr import CTRModel, CTRPredictor, FeatureEncoder

    src = Path(features_dir)
    torch.manual_seed(settings.ctr_train.seed)
    train = pd.read_parquet(src / "train.parquet")
    catalog = pd.read_parquet(src / "tables" / "item_content.parquet").rename(
        columns={"text_embedding": "embedding"}
    )
    enc = FeatureEncoder.fit(train, catalog, settings.features.seq_len)
    model = CTRModel(settings.ctr_model, variant, enc.sizes(), enc.content if variant == "ciubm" else None)
    arrays = enc.transform(train)
    if flip_labels:
        arrays["label"] = 1.0 - arrays["label"]
    opt = torch.optim.AdamW(
        model.parameters(), lr=settings.ctr_train.lr, weight_decay=settings.ctr_train.weight_decay
    )
    for epoch in range(epochs):
        plain_epoch(model, opt, arrays, settings.ctr_train.batch_size, settings.ctr_train.seed + epoch)
    return CTRPredictor(enc, model.eval())


def plain_epoch(model: Any, opt: Any, arrays: dict[str, np.ndarray], batch_size: int, seed: int) -> None:
    """One epoch of minibatch BCE in this process (no Ray, no DDP)."""
    import torch

    from adflow.models.ctr import to_tensors

    model.train()
    n = len(arrays["label"])
    perm = np.random.default_rng(seed).permutation(n)
    for i in range(0, n, batch_size):
        b = to_tensors(arrays, perm[i : i + batch_size])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
