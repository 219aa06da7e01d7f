"""Train the CTR models (CiUBM and its DIN baseline, side by side) with Ray Train.

Locally:   the `train_ctr` step of ads_full (make run): 2 Ray workers, DDP over gloo, 1 thread each.
Cluster:   adflow run --preset full --placement cluster: GPU workers (placement.use_gpu) and, when
           ctr_train.deepspeed is set, DeepSpeed (ZeRO) instead of DDP.

Both variants train in one TorchTrainer run on the same batches: one Ray start-up and one fit instead of
two, and the comparison cannot be skewed by different data order. Every epoch is checkpointed; a run
given `resume_from` continues after the last completed epoch.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow import train as T
from adflow.config import Settings
from adflow.progress import follow, log
from adflow.workspace import publish, shared

STAGE = "train_ctr"
SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    model_dir: str
    epochs_run: list[int]
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str | None = None
    seconds: float = 0.0
    content: str = ""  # the embedding the candidate read (features.content_embedding, "auto" resolved)


# what CiUBM can read: an item_content column <name>_embedding, "text_moon" (both side by side), or
# "attributes": the catalog's own structured attributes one-hot, the yardstick for a learnt embedding
EMBEDDINGS = ("text", "moon", "text_moon", "attributes")


def attribute_catalog(features_dir: str | Path) -> pd.DataFrame:
    """item_id, category, embedding: one block per catalog attribute (the category and every key of the
    items' attributes), each a one-hot of the item's value, the blocks weighed alike and the whole unit
    length. Two items' cosine is then the share of attributes they share. Not a served embedding: a study
    variant (`ciubm_attributes`) that shows what a content embedding carrying exactly the catalog's
    attributes is worth to CiUBM, to read a learnt embedding's gap against."""
    from adflow.models.reference import attribute_codes

    path = Path(features_dir) / "catalog.parquet"
    if not path.exists():
        raise ValueError(f"the feature set has no catalog ({path}) to read the items' attributes from")
    cat = pd.read_parquet(path)
    blocks = []
    for codes, n in attribute_codes(cat).values():  # the category first, then every attribute key
        level = codes.reindex(cat["item_id"].to_numpy()).to_numpy() + 1  # 0: no value, a level of its own
        blocks.append(np.eye(n + 1, dtype=np.float32)[level])
    emb = np.hstack(blocks) / np.sqrt(len(blocks))
    return pd.DataFrame({"item_id": cat["item_id"], "category": cat["category"], "embedding": list(emb)})


def content_catalog(features_dir: str | Path, embedding: str, whitening: float | None = None) -> pd.DataFrame:
    """item_id, category, embedding: the catalog's `embedding` vectors from the feature tables (unit length;
    "text_moon" joins MiniLM's and MOON's, each unit length, scaled so the whole is; "attributes" is
    `attribute_catalog`). `whitening` (ctr_model.content_whitening): each learnt embedding is whitened on
    the catalog with that eps first (adflow/models/content.py); the attributes' one-hot never is (its cosine
    is the share of attributes shared, which is what makes it a yardstick)."""
    from adflow.models.content import whiten

    if embedding == "attributes":
        return attribute_catalog(features_dir)
    cat = pd.read_parquet(Path(features_dir) / "tables" / "item_content.parquet")
    parts = []
    for name in embedding.split("_"):
        col = f"{name}_embedding"
        if col not in cat or any(len(e) == 0 for e in cat[col]):
            raise ValueError(
                f"the feature set has no {name} embedding for every item ({col}); "
                "was the MOON stage skipped? (features.content_embedding / ctr_train.variants)"
            )
        emb = np.stack([np.asarray(e, np.float32) for e in cat[col]])
        if whitening is not None:
            emb = whiten(emb, whitening)
        parts.append(emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9))
    joined = np.hstack(parts) / np.sqrt(len(parts))
    return pd.DataFrame({"item_id": cat["item_id"], "category": cat["category"], "embedding": list(joined)})


def candidate_content(features_dir: str | Path, configured: str) -> str:
    """The embedding the candidate ("ciubm") reads on this feature set: `configured` unless it is "auto",
    which is MOON's when every catalog item has a MOON vector (the MOON stage embedded the catalog from its
    images) and MiniLM's text embedding otherwise (a data set without item images: MOON stepped aside)."""
    if configured != "auto":
        return configured
    cat = pd.read_parquet(Path(features_dir) / "tables" / "item_content.parquet", columns=["moon_embedding"])
    has_moon = len(cat) > 0 and all(len(e) > 0 for e in cat["moon_embedding"])
    return "moon" if has_moon else "text"


def resolve_content(settings: Settings, features_dir: str | Path) -> Settings:
    """`settings` with features.content_embedding made concrete for this feature set (`candidate_content`):
    training, the gate, studies and benches then read one name, and "ciubm" means the same table in each."""
    name = candidate_content(features_dir, settings.features.content_embedding)
    if name == settings.features.content_embedding:
        return settings
    out = settings.model_copy(deep=True)
    out.features.content_embedding = name  # type: ignore[assignment]
    return out


def content_tables(
    features_dir: str | Path, enc: Any, whitening: float | None = None
) -> dict[str, np.ndarray]:
    """{embedding: [1 + items, D] table in the encoder's row order} for every embedding the catalog has."""
    out = {}
    for name in EMBEDDINGS:
        try:
            cat = content_catalog(features_dir, name, whitening)
        except ValueError:
            continue
        emb = np.stack([np.asarray(e, np.float32) for e in cat["embedding"]])
        table = np.zeros((len(enc.content_index) + 1, emb.shape[1]), np.float32)
        table[[enc.content_index[int(i)] for i in cat["item_id"]]] = emb
        out[name] = table
    return out


def variant_content(variant: str, default: str, tables: dict[str, np.ndarray]) -> np.ndarray | None:
    """The content table a variant reads: none for DIN, the configured one for "ciubm", else its suffix's."""
    if variant == "din":
        return None
    name = default if variant == "ciubm" else variant.removeprefix("ciubm_")
    if name not in tables:
        raise ValueError(f"variant {variant} reads the {name} embedding, which this feature set lacks")
    return tables[name]


def prepare(
    features_dir: str | Path,
    out_dir: str | Path,
    seq_len: int,
    shuffle_labels: bool = False,
    seed: int = 0,
    content: str = "text",
    whitening: float | None = None,
) -> Path:
    """Fit the encoder on the training split and write the tensors every worker reads (npz per split);
    `whitening`: ctr_model.content_whitening."""
    from adflow.models.ctr import FeatureEncoder

    src, out = Path(features_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = {s: pd.read_parquet(src / f"{s}.parquet") for s in SPLITS}
    enc = FeatureEncoder.fit(
        frames["train"], content_catalog(src, candidate_content(src, content), whitening), seq_len
    )
    # every embedding the catalog has, as content tables aligned with the encoder's rows: a variant that
    # reads another embedding than the default swaps its table in (the exchange rate's comparison)
    np.savez(out / "content_tables.npz", allow_pickle=False, **content_tables(src, enc, whitening))
    for s, df in frames.items():
        arrays = enc.transform(df)
        if shuffle_labels and s == "train":
            arrays["label"] = np.random.default_rng(seed).permutation(arrays["label"])
        np.savez(out / f"{s}.npz", allow_pickle=False, **arrays)
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
    tables = _load(data, "content_tables")
    device = ray.train.torch.get_device()
    models: dict[str, Any] = {}
    engines: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    # Each variant has its own random stream (initial weights, dropout masks), all from the same seed: a
    # variant trains the same whichever others train beside it (adding ciubm_moon leaves ciubm unchanged,
    # so a rerun stays comparable), and ciubm vs ciubm_moon differ only in their content table.
    streams: dict[str, Any] = {}
    for v in tcfg.variants:
        torch.manual_seed(tcfg.seed)
        models[v] = CTRModel(mcfg, v, enc.sizes(), variant_content(v, config["content"], tables))
        streams[v] = _rng_state(device)
        opts[v] = torch.optim.AdamW(models[v].parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    state = T.load_state(config)
    T.load_weights(models, state)  # before the engines: ZeRO would copy its initial weights back
    for v in tcfg.variants:
        engines[v], opts[v] = T.engine(models[v], opts[v], tcfg.deepspeed)
    T.restore_optimisers(opts, state, bool(tcfg.deepspeed))
    start = state["epoch"] + 1 if state else 0
    # per variant: the epoch with the best validation AUC and its weights
    best: dict[str, dict[str, Any]] = state.get("best", {})
    # With DeepSpeed bf16 the engine holds bf16 weights and buffers: float inputs must match them.
    half = T.half_dtype(tcfg.deepspeed)

    def on_device(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        return t.to(half) if half is not None and t.is_floating_point() else t

    n = len(train["label"]) - len(train["label"]) % world  # equal shards: DDP needs equal step counts
    batch = max(1, tcfg.batch_size // world)  # batch_size is the global batch: the same updates at any scale
    for epoch in range(start, tcfg.epochs):
        t_epoch = time.perf_counter()
        perm = np.random.default_rng(tcfg.seed + epoch).permutation(len(train["label"]))[:n]
        shard = perm[rank::world]
        losses: dict[str, list[float]] = {v: [] for v in tcfg.variants}
        for v in tcfg.variants:
            engines[v].train()
        for i in range(0, len(shard), batch):
            b = {k: on_device(t) for k, t in to_tensors(train, shard[i : i + batch]).items()}
            for v in tcfg.variants:
                _set_rng_state(device, streams[v])
                logits = engines[v](b).float()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, b["label"].float())
                T.step(engines[v], opts[v], loss, bool(tcfg.deepspeed))
                losses[v].append(float(loss.detach()))
                streams[v] = _rng_state(device)
        metrics: dict[str, float] = {"epoch": float(epoch), "epoch_train_s": time.perf_counter() - t_epoch}
        for v in tcfg.variants:
            m = T.unwrap(engines[v]).eval()
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
                    for k, t in T.unwrap(engines[v]).state_dict().items()
                }
                best[v] = {"epoch": epoch, "val_auc": metrics[f"{v}_val_auc"], "weights": weights}
        T.report_epoch(config, rank, metrics, engines, opts, bool(tcfg.deepspeed), best=best)


def _rng_state(device: Any) -> Any:
    import torch

    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: Any, state: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _progress_line(row: dict[str, Any]) -> str:
    """An epoch's history line as progress: each variant's validation AUC."""
    aucs = ", ".join(
        f"{k.removesuffix('_val_auc')} {v:.4f}" for k, v in row.items() if k.endswith("_val_auc")
    )
    return f"epoch {int(row['epoch'])} ({row.get('epoch_train_s', 0):.0f}s): validation AUC {aucs}"


def fit(
    settings: Settings,
    data_dir: str | Path,
    storage: str | Path,
    name: str,
    history_path: str | Path,
    resume_from: str | None = None,
) -> Any:
    """One TorchTrainer run; returns Ray's Result (metrics history, last checkpoint)."""
    config = {
        "model": settings.ctr_model.model_dump(),
        "train": settings.ctr_train.model_dump(),
        "data_dir": str(Path(data_dir).resolve()),
        "content": settings.features.content_embedding,
        "threads": 1,  # tiny models: one thread per worker beats two (FIELD-NOTES)
        "history_path": str(Path(history_path).resolve()),
        "resume_from": str(resume_from) if resume_from else None,
    }
    return T.fit(settings, train_loop, config, storage, name, settings.ctr_train.epochs)


def export(
    settings: Settings, data_dir: str | Path, checkpoint_dir: str | Path, out_dir: str | Path
) -> dict[str, str]:
    """Predictors (encoder + weights of the best validation epoch) per variant, for evaluation and registration."""
    import torch

    from adflow.models.ctr import CTRModel, CTRPredictor

    with (Path(data_dir) / "encoder.pkl").open("rb") as f:
        enc = pickle.load(f)
    state = torch.load(Path(checkpoint_dir) / "state.pt", weights_only=False)
    tables = _load(Path(data_dir), "content_tables")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for v in settings.ctr_train.variants:
        content = variant_content(v, settings.features.content_embedding, tables)
        model = CTRModel(settings.ctr_model, v, enc.sizes(), content)
        chosen = state.get("best", {}).get(v)
        model.load_state_dict(chosen["weights"] if chosen else state["models"][v])
        path = out / f"{v}.pt"
        own = enc if content is None else dataclasses.replace(enc, content=content)
        torch.save(CTRPredictor(own, model.eval()), path)
        paths[v] = str(path)
    return paths


def model_paths(model_dir: str | Path) -> dict[str, Path]:
    """The trained predictors in a CTR stage's output folder, by variant."""
    names = json.loads((Path(model_dir) / "models.json").read_text())
    return {v: Path(model_dir) / name for v, name in names.items()}  # an absolute name stays as it is


def train(
    settings: Settings, features_dir: str | Path, model_dir: str | Path, resume_from: str | None = None
) -> TrainResult:
    t0 = time.perf_counter()
    configured = settings.features.content_embedding
    settings = resolve_content(settings, features_dir)
    cand = settings.features.content_embedding
    log(STAGE, f"the candidate (ciubm) reads the {cand} embedding (features.content_embedding: {configured})")
    if {"ciubm", f"ciubm_{cand}"} <= set(settings.ctr_train.variants):
        # the same model on the same table and batches as the candidate: trained once, as "ciubm"
        settings = settings.model_copy(deep=True)
        settings.ctr_train.variants = [v for v in settings.ctr_train.variants if v != f"ciubm_{cand}"]
        log(STAGE, f"ciubm_{cand} is the candidate itself here: trained once, as ciubm")
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = shared(settings.placement, out)  # what the Ray workers read and write (adflow/workspace.py)
    t = settings.ctr_train
    data = prepare(
        features_dir,
        work / "tensors",
        settings.features.seq_len,
        t.shuffle_labels,
        t.seed,
        settings.features.content_embedding,
        settings.ctr_model.content_whitening,
    )
    with np.load(data / "content_tables.npz") as z:
        have = set(z.files)
    usable = [v for v in t.variants if v in ("din", "ciubm") or v.removeprefix("ciubm_") in have]
    if usable != t.variants:
        # e.g. ciubm_moon on a data set without images (no MOON): the comparison is dropped, not the run
        log(STAGE, f"skipping {sorted(set(t.variants) - set(usable))}: the feature set has no such embedding")
        settings = settings.model_copy(deep=True)
        settings.ctr_train.variants = usable
    history_path = work / "history.jsonl"
    done_before = len(history_path.read_text().splitlines()) if history_path.exists() else 0
    with follow(history_path, STAGE, _progress_line, start=done_before):
        result = fit(settings, data, work / "ray", "ctr", history_path, resume_from)
    ckpt = T.final_checkpoint(result, resume_from, "CTR")
    history = (
        [json.loads(line) for line in history_path.read_text().splitlines()[done_before:]]
        if history_path.exists()
        else []
    )
    with ckpt.as_directory() as d:
        paths = export(settings, data, d, out)
        ckpt_path = str(ckpt.path)
    # relative: the next steps get this folder under another path on a cluster (model_paths reads it)
    (out / "models.json").write_text(json.dumps({v: Path(p).name for v, p in paths.items()}, indent=2))
    publish(work, out, ["history.jsonl"])
    epochs = sorted({int(h["epoch"]) for h in history})
    log(STAGE, f"trained {', '.join(paths)} for epochs {epochs} in {time.perf_counter() - t0:.1f}s")
    return TrainResult(str(out), epochs, history, ckpt_path, time.perf_counter() - t0, cand)


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
        sr.params({"candidate_content": result.content})  # what "auto" resolved to on this feature set
        for h in result.history:
            sr.metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))
        last = result.history[-1] if result.history else {}
        sr.metrics(
            {f"final_{k}": v for k, v in last.items() if k.endswith("val_auc")} | {"train_s": result.seconds}
        )
        trained: list[str] = [
            v for v in s.ctr_train.variants if result.history and f"{v}_train_loss" in result.history[0]
        ]
        sr.log_file(_curves(result.history, Path(model_dir), trained))
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
    settings = resolve_content(settings, src)
    torch.manual_seed(settings.ctr_train.seed)
    train = pd.read_parquet(src / "train.parquet")
    whitening = settings.ctr_model.content_whitening
    enc = FeatureEncoder.fit(
        train, content_catalog(src, settings.features.content_embedding, whitening), settings.features.seq_len
    )
    content = variant_content(
        variant, settings.features.content_embedding, content_tables(src, enc, whitening)
    )
    model = CTRModel(settings.ctr_model, variant, enc.sizes(), content)
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
