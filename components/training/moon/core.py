"""MOON stage: pretrain and post-train the product-representation model on Ray Train, embed the catalog with
Ray Data, evaluate (image search, text->image, zero-shot category and attributes) and write the embeddings
the feature stage puts into Feast beside the text baseline.

Locally:   the `moon` step of ads_full (make run): 2 Ray workers, DDP over gloo, 1 thread each.
Cluster:   adflow run --preset full --placement cluster: GPU workers and the preset's DeepSpeed ZeRO config,
           moon_model.backbone_path naming a pretrained Qwen2.5-VL checkpoint.

The ablation variants (no MoE, no core-region detection, no hard negatives) train in the same TorchTrainer
run on the same batches as MOON itself: one Ray start-up and one fit, and no data-order difference between
them. "Pretraining only" is MOON's own weights at the end of pretraining, kept in the checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow import train as T
from adflow.config import Settings
from adflow.progress import follow, log
from adflow.workspace import publish, shared, shared_input

STAGE = "moon"
QUERY_TYPES = ("image", "text", "image_text", "attribute_text", "category_text")


# the guided MoE's aspect for query types that ask about one aspect of a product
ASPECT_OF = {"attribute_text": "attributes", "category_text": "category"}


class MoonUnavailable(RuntimeError):
    """The data set cannot train MOON (no item images); the run goes on with the text embedding."""


@dataclass
class MoonResult:
    out_dir: str
    embeddings: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    note: str | None = None
    seconds: float = 0.0
    served: str | None = None  # the variant whose encoder embedded the catalog ("moon" unless not trained)


def variant_flags(settings: Settings, variant: str, have_boxes: bool) -> dict[str, bool]:
    m = settings.moon_model
    return {
        "moe": m.moe and variant != "no_moe",
        "crop": m.core_region and have_boxes and variant != "no_core_region",
        "hard": variant != "no_hard_negatives",
    }


# ---------------------------------------------------------------- preparation (driver)


def training_cutoff(dataset: str | Path, split_quantile: float) -> pd.Timestamp:
    """Behaviour after this time belongs to the CTR test period: post-training never sees it."""
    ts = pd.read_parquet(Path(dataset) / "impressions.parquet", columns=["ts"])["ts"]
    return pd.Timestamp(ts.quantile(split_quantile))


def prepare(settings: Settings, dataset: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Views, the core-region detector and its crops, the tokenizer, behaviour pairs: what every worker reads."""
    import torch

    from adflow.data.views import behaviour_pairs, load_catalog, views
    from adflow.models.moon import MoonProcessor, box_iou, crop, fit_detector, predict_boxes

    m, t = settings.moon_model, settings.moon_train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cat = load_catalog(dataset, t.duplicate_keys)
    if cat.images is None:
        raise MoonUnavailable("the data set has no item images")
    queries = Path(dataset) / "queries.parquet"
    corpus = [*cat.titles, *cat.attribute_texts]
    if queries.exists():
        corpus += pd.read_parquet(queries, columns=["text"])["text"].dropna().astype(str).tolist()
    processor = MoonProcessor.build(m, corpus)
    processor.save(out / "processor")

    t0 = time.perf_counter()
    view_imgs, view_boxes = views(cat, t.views_per_item, t.seed)
    info: dict[str, Any] = {"views_s": time.perf_counter() - t0, "items": len(cat)}
    size = m.image_size
    arrays: dict[str, np.ndarray] = {}
    n, v = view_imgs.shape[:2]
    flat_views = [view_imgs[i, j] for i in range(n) for j in range(v)]
    arrays["catalog_raw"] = _resize_all(cat.images, size)
    arrays["views_raw"] = _resize_all(flat_views, size).reshape(n, v, size, size, 3)
    have_boxes = cat.boxes is not None and any(variant_flags(settings, x, True)["crop"] for x in t.variants)
    if have_boxes:
        assert cat.boxes is not None
        t0 = time.perf_counter()
        det, curve = fit_detector(
            [*flat_views, *cat.images],
            np.vstack([view_boxes.reshape(-1, 4), cat.boxes]),
            m.detector_channels,
            m.detector_image_size,
            t.detector_steps,
            t.detector_lr,
            t.seed,
        )
        info["detector_s"] = time.perf_counter() - t0
        info["detector_loss_first"], info["detector_loss_last"] = curve[0], float(np.mean(curve[-20:]))
        torch.save({"state": det.state_dict(), "channels": m.detector_channels}, out / "detector.pt")
        cat_boxes = predict_boxes(det, cat.images, m.detector_image_size)
        view_pred = predict_boxes(det, flat_views, m.detector_image_size)
        info["detector_iou_catalog"] = float(
            box_iou(torch.as_tensor(cat_boxes), torch.as_tensor(cat.boxes)).mean()
        )
        arrays["catalog_crop"] = np.stack(
            [crop(im, b, m.crop_margin, size) for im, b in zip(cat.images, cat_boxes, strict=True)]
        )
        arrays["views_crop"] = np.stack(
            [crop(im, b, m.crop_margin, size) for im, b in zip(flat_views, view_pred, strict=True)]
        ).reshape(n, v, size, size, 3)
    np.savez(out / "images.npz", allow_pickle=False, **arrays)
    cutoff = training_cutoff(dataset, settings.features.split_quantile)
    pairs = behaviour_pairs(
        dataset, cat, cutoff, t.spatiotemporal_negatives, t.seed, t.interest_pairs_per_user
    )
    pairs.to_parquet(out / "pairs.parquet", index=False)
    meta = {
        "item_ids": cat.item_ids.tolist(),
        "titles": cat.titles,
        "attribute_texts": cat.attribute_texts,
        "categories": cat.categories.tolist(),
        "dup_keys": cat.dup_keys.tolist(),
        "have_boxes": have_boxes,
        "cutoff": str(cutoff),
    }
    (out / "catalog.json").write_text(json.dumps(meta))
    info |= {
        "pairs_query": int((pairs["kind"] == "query").sum()),
        "pairs_coclick": int((pairs["kind"] == "coclick").sum()),
        "pairs_interest": int((pairs["kind"] == "interest").sum()),
    }
    log(STAGE, f"prepared {len(cat)} items x {v} views, {len(pairs)} behaviour pairs (before {cutoff})")
    return info


def _resize_all(images: list[np.ndarray], size: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [
            im
            if im.shape[:2] == (size, size)
            else np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
            for im in images
        ]
    )


# ---------------------------------------------------------------- the loss


def info_nce(q: Any, p: Any, temperature: float, mask: Any, symmetric: bool) -> Any:
    """Cross-entropy of each query against all candidates (its positive at column i); `mask` [Q, C] True
    removes near duplicates of the positive from the denominator (never a negative)."""
    import torch

    logits = (q @ p.T) / temperature
    logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(len(q), device=q.device)
    loss = torch.nn.functional.cross_entropy(logits, target)
    if symmetric:
        sq = logits[:, : len(q)].T  # products -> queries over the square part
        loss = (loss + torch.nn.functional.cross_entropy(sq, target)) / 2
    return loss


def behaviour_mask(
    positives: np.ndarray, anchors: np.ndarray, candidates: np.ndarray, dup_keys: np.ndarray
) -> np.ndarray:
    """[Q, C] True: what leaves behaviour query q's denominator. Near duplicates of its positive (column q);
    for an item-anchored query (anchor >= 0: coclick, interest) also the anchor's own item and its near
    duplicates: the query is that product's embedding, so its copy among the candidates (often another pair's
    positive) scored 1/T, above any true positive. The positive at column q is never masked."""
    keys = dup_keys[candidates]
    m = dup_keys[positives][:, None] == keys[None, :]
    anchored = anchors >= 0
    anchor_keys = dup_keys[np.where(anchored, anchors, 0)]
    m |= anchored[:, None] & (
        (anchor_keys[:, None] == keys[None, :]) | (anchors[:, None] == candidates[None, :])
    )
    m[np.arange(len(positives)), np.arange(len(positives))] = False
    return m


# ---------------------------------------------------------------- Ray Train worker


def _epoch_plan(config: dict[str, Any], cat: Any, pairs: pd.DataFrame, epoch: int) -> dict[str, Any]:
    """The same batches and query types on every worker and for every variant (seeded by the epoch)."""
    from adflow.data.views import batches

    t = config["train"]
    rng = np.random.default_rng(t["seed"] * 1000 + epoch)
    hard = batches(cat, t["batch_size"], t["hard_negative_frac"], t["hard_group_size"], rng)
    easy = batches(cat, t["batch_size"], 0.0, t["hard_group_size"], rng)
    k = min(len(hard), len(easy))
    mix = np.array([t["query_mix"].get(q, 0.0) for q in QUERY_TYPES])
    qtype = rng.choice(len(QUERY_TYPES), size=len(cat), p=mix / mix.sum())
    view = rng.integers(0, config["views_per_item"], size=len(cat))
    plan = {
        "phase": "pretrain",
        "hard": hard[:k],
        "easy": easy[:k],
        "qtype": qtype,
        "view": view,
        "behaviour": [],
    }
    if epoch >= t["pretrain_epochs"] and len(pairs):
        # post-training keeps the pretraining batches and adds behaviour batches between them: behaviour
        # alone pulled the image-search recall of the pretrained model down from 0.27 to 0.03 in one epoch
        order = rng.permutation(len(pairs))
        b = t["batch_size"]
        steps = [order[i : i + b] for i in range(0, len(order) - b + 1, b)] or [order]
        plan |= {"phase": "posttrain", "behaviour": steps[: t["posttrain_steps_per_epoch"]]}
    return plan


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: every variant on this worker's share of each batch; a checkpoint per epoch."""
    import ray.train
    import torch

    from adflow.config import MoonModelConfig, MoonTrainConfig
    from adflow.data.views import Catalog
    from adflow.models.moon import MoonEncoder, MoonProcessor, aspect_ids, modality_ids

    torch.set_num_threads(config["threads"])
    mcfg, tcfg = MoonModelConfig(**config["model"]), MoonTrainConfig(**config["train"])
    data = Path(config["data_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    processor = MoonProcessor.load(data / "processor", mcfg)
    meta = json.loads((data / "catalog.json").read_text())
    with np.load(data / "images.npz") as z:
        imgs = {k: z[k] for k in z.files}
    cat = Catalog(
        item_ids=np.array(meta["item_ids"]),
        titles=meta["titles"],
        attribute_texts=meta["attribute_texts"],
        categories=np.array(meta["categories"]),
        attributes=[],
        images=None,
        boxes=None,
        dup_keys=np.array(meta["dup_keys"]),
    )
    pairs = pd.read_parquet(data / "pairs.parquet")
    config = {**config, "views_per_item": imgs["views_raw"].shape[1]}
    device = ray.train.torch.get_device()
    flags: dict[str, dict[str, bool]] = {v: config["flags"][v] for v in tcfg.variants}
    models: dict[str, Any] = {}
    engines: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    for v in tcfg.variants:
        # every variant from the same seed: an ablation differs from MOON by its switch, not by its init
        torch.manual_seed(tcfg.seed)
        models[v] = MoonEncoder(mcfg, processor, moe=flags[v]["moe"])
        opts[v] = torch.optim.AdamW(models[v].parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    state = T.load_state(config)
    T.load_weights(models, state)  # before the engines: ZeRO would copy its initial weights back
    for v in tcfg.variants:
        # unused experts' parameters get no gradient on some batches
        engines[v], opts[v] = T.engine(models[v], opts[v], tcfg.deepspeed, find_unused_parameters=True)
    T.restore_optimisers(opts, state, bool(tcfg.deepspeed))
    start = state["epoch"] + 1 if state else 0
    pretrained = state.get("pretrained", {})
    half = T.half_dtype(tcfg.deepspeed)

    def run(
        v: str, texts: list[str | None], images: list[Any], kinds: list[str], aspects: list[str | None]
    ) -> tuple[Any, Any, Any]:
        b = processor(texts, images)
        b = {k: t.to(device) for k, t in b.items()}
        if half is not None and "pixel_values" in b:
            b["pixel_values"] = b["pixel_values"].to(half)
        return engines[v](b, modality_ids(kinds, device), aspect_ids(aspects, device))

    def product_image(v: str, row: int) -> np.ndarray:
        return imgs["catalog_crop" if flags[v]["crop"] else "catalog_raw"][row]

    def step(v: str, loss: Any) -> None:
        T.step(engines[v], opts[v], loss, bool(tcfg.deepspeed))

    total = tcfg.pretrain_epochs + tcfg.posttrain_epochs
    for epoch in range(start, total):
        t_epoch = time.perf_counter()
        plan = _epoch_plan(config, cat, pairs, epoch)
        # post-training fine-tunes at a lower rate: at the full rate behaviour pulled image-search recall
        # of the pretrained model from 0.39 down to 0.17 in two epochs (tiny world)
        scale = tcfg.posttrain_lr_scale if plan["phase"] == "posttrain" else 1.0
        for v in tcfg.variants:
            for group in opts[v].param_groups:
                group["lr"] = tcfg.lr * scale
        losses: dict[str, list[float]] = {v: [] for v in tcfg.variants}
        usage: dict[str, np.ndarray] = {}
        for v in tcfg.variants:
            engines[v].train()
            pre = plan["hard"] if flags[v]["hard"] else plan["easy"]
            steps: list[tuple[str, np.ndarray]] = [("pretrain", r) for r in pre]
            for j, rows_b in enumerate(plan["behaviour"]):  # interleaved
                steps.insert(min(len(steps), 2 * j + 1), ("behaviour", rows_b))
            u = np.zeros((3, len(mcfg.moe_experts)))
            for step_kind, rows_all in steps:
                # this worker's contiguous share (same-category groups stay together); every worker runs
                # the same number of steps, as DDP needs
                share = int(np.ceil(len(rows_all) / world))
                rows = rows_all[rank * share : (rank + 1) * share]
                if len(rows) < 2:
                    rows = rows_all[:2]
                if step_kind == "pretrain":
                    texts, images, kinds, aspects = [], [], [], []
                    for r in rows:
                        qt = QUERY_TYPES[plan["qtype"][r]]
                        view = imgs["views_crop" if flags[v]["crop"] else "views_raw"][r, plan["view"][r]]
                        texts.append(
                            {
                                "attribute_text": cat.attribute_texts[r],
                                "category_text": f"category: {cat.categories[r]}",
                                "text": cat.titles[r],
                                "image_text": cat.titles[r],
                            }.get(qt)
                        )
                        images.append(view if qt in ("image", "image_text") else None)
                        kinds.append("text" if qt.endswith("_text") and qt != "image_text" else qt)
                        aspects.append(ASPECT_OF.get(qt))
                    q, aux_q, probs = run(v, texts, images, kinds, aspects)
                    p, aux_p, _ = run(
                        v,
                        [cat.titles[r] for r in rows],
                        [product_image(v, r) for r in rows],
                        ["image_text"] * len(rows),
                        [None] * len(rows),
                    )
                    # a category query has every product of its category as a positive: none is its negative
                    by_category = np.array([QUERY_TYPES[plan["qtype"][r]] == "category_text" for r in rows])
                    same = np.where(
                        by_category[:, None],
                        cat.categories[rows][:, None] == cat.categories[rows][None, :],
                        cat.dup_keys[rows][:, None] == cat.dup_keys[rows][None, :],
                    )
                    mask = torch.as_tensor(same) & ~torch.eye(len(rows), dtype=torch.bool)
                    loss = info_nce(q, p, tcfg.temperature, mask.to(q.device), symmetric=True) + aux_q + aux_p
                else:
                    sel = pairs.iloc[rows]
                    texts, images, kinds = [], [], []
                    for kind, text, anchor in zip(sel["kind"], sel["text"], sel["anchor"], strict=True):
                        if kind == "query":
                            texts.append(str(text))
                            images.append(None)
                            kinds.append("text")
                        else:
                            texts.append(cat.titles[anchor])
                            images.append(product_image(v, anchor))
                            kinds.append("image_text")
                    q, aux_q, probs = run(v, texts, images, kinds, [None] * len(kinds))
                    cand = sel["positive"].astype(int).tolist()
                    if flags[v]["hard"]:  # spatio-temporal negatives: shown in the session, not clicked
                        cand += [int(j) for negs in sel["negatives"] for j in negs]
                    cand_rows = np.array(cand)
                    p, aux_p, _ = run(
                        v,
                        [cat.titles[r] for r in cand_rows],
                        [product_image(v, r) for r in cand_rows],
                        ["image_text"] * len(cand_rows),
                        [None] * len(cand_rows),
                    )
                    m = behaviour_mask(
                        cand_rows[: len(sel)], sel["anchor"].to_numpy(int), cand_rows, cat.dup_keys
                    )
                    loss = (
                        info_nce(q, p, tcfg.temperature, torch.as_tensor(m).to(q.device), symmetric=False)
                        + aux_q
                        + aux_p
                    )
                step(v, loss)
                losses[v].append(float(loss.detach()))
                if probs is not None:
                    for k_mod, pr in zip(kinds, probs.detach().float().cpu().numpy(), strict=True):
                        u[("image", "text", "image_text").index(k_mod)] += pr
            usage[v] = u
        metrics: dict[str, float] = {
            "epoch": float(epoch),
            "epoch_train_s": time.perf_counter() - t_epoch,
            "posttrain": float(plan["phase"] == "posttrain"),
        }
        for v in tcfg.variants:
            metrics[f"{v}_loss"] = float(np.mean(losses[v])) if losses[v] else float("nan")
        if epoch == tcfg.pretrain_epochs - 1:
            pretrained = {
                v: {
                    k: t.detach().float().cpu().clone() if t.is_floating_point() else t.cpu().clone()
                    for k, t in T.unwrap(engines[v]).state_dict().items()
                }
                for v in tcfg.variants
            }
        T.report_epoch(
            config,
            rank,
            metrics,
            engines,
            opts,
            bool(tcfg.deepspeed),
            pretrained=pretrained,
            usage={v: u.tolist() for v, u in usage.items()},
        )


def fit(
    settings: Settings,
    data_dir: str | Path,
    storage: str | Path,
    history_path: str | Path,
    resume_from: str | None = None,
) -> Any:
    """One TorchTrainer run of every variant; returns Ray's Result."""
    have_boxes = json.loads((Path(data_dir) / "catalog.json").read_text())["have_boxes"]
    config = {
        "model": settings.moon_model.model_dump(),
        "train": settings.moon_train.model_dump(),
        "flags": {v: variant_flags(settings, v, have_boxes) for v in settings.moon_train.variants},
        "data_dir": str(Path(data_dir).resolve()),
        "threads": 1,
        "history_path": str(Path(history_path).resolve()),
        "resume_from": str(resume_from) if resume_from else None,
    }
    t = settings.moon_train
    return T.fit(settings, train_loop, config, storage, "moon", t.pretrain_epochs + t.posttrain_epochs)


def export(
    settings: Settings, data_dir: str | Path, checkpoint_dir: str | Path, out_dir: str | Path
) -> dict[str, str]:
    """One saved encoder per variant, plus "moon_pretrain" (MOON's weights when pretraining ended)."""
    import torch

    from adflow.models.moon import MoonEncoder, MoonProcessor, save_encoder

    data = Path(data_dir)
    meta = json.loads((data / "catalog.json").read_text())
    processor = MoonProcessor.load(data / "processor", settings.moon_model)
    state = torch.load(Path(checkpoint_dir) / "state.pt", weights_only=False)
    paths = {}
    weights = dict(state["models"])
    if "moon" in state.get("pretrained", {}) and settings.moon_train.posttrain_epochs > 0:
        weights["moon_pretrain"] = state["pretrained"]["moon"]
    for name, sd in weights.items():
        base = "moon" if name == "moon_pretrain" else name
        flags = variant_flags(settings, base, meta["have_boxes"])
        model = MoonEncoder(settings.moon_model, processor, moe=flags["moe"], weights=False)
        model.load_state_dict(sd)
        path = Path(out_dir) / "encoders" / name
        save_encoder(model, processor, path, {"variant": name, "crop": flags["crop"]})
        if flags["crop"]:  # the encoder travels with the detector whose crops it was trained on
            (path / "detector.pt").write_bytes((data / "detector.pt").read_bytes())
        paths[name] = str(path)
    return paths


def _progress_line(row: dict[str, Any]) -> str:
    """An epoch's history line as progress: each variant's InfoNCE loss."""
    phase = " (post-training)" if row.get("posttrain") else ""
    losses = ", ".join(f"{k.removesuffix('_loss')} {v:.3f}" for k, v in row.items() if k.endswith("_loss"))
    return f"epoch {int(row['epoch'])}{phase}: {losses}"


def train(
    settings: Settings, dataset: str | Path, out_dir: str | Path, resume_from: str | None = None
) -> MoonResult:
    """prepare -> one Ray Train fit (every variant) -> export -> evaluate -> embed the catalog (Ray Data)."""
    from components.training.moon.evaluate import embed_catalog, evaluate, write_report

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = settings.moon_train
    # what Ray's workers and the embedding actors read and write: on a cluster, on the workspace volume
    work = shared(settings.placement, out)
    dataset = shared_input(settings.placement, dataset)  # the actors read the catalog's images
    info = prepare(settings, dataset, work / "prepared")
    history_path = work / "history.jsonl"
    done_before = len(history_path.read_text().splitlines()) if history_path.exists() else 0
    t_fit = time.perf_counter()
    with follow(history_path, STAGE, _progress_line, start=done_before):
        result = fit(settings, work / "prepared", work / "ray", history_path, resume_from)
    ckpt = T.final_checkpoint(result, resume_from, "MOON")
    fit_s = time.perf_counter() - t_fit
    history = (
        [json.loads(line) for line in history_path.read_text().splitlines()[done_before:]]
        if history_path.exists()
        else []
    )
    with ckpt.as_directory() as d:
        encoders = export(settings, work / "prepared", d, work)
    t_eval = time.perf_counter()
    ev = evaluate(
        dataset, encoders, t.duplicate_keys, t.recall_k, t.eval_queries_per_item, t.seed, t.embed_batch_size
    )
    eval_s = time.perf_counter() - t_eval
    write_report(out, ev, t.recall_k)  # report.md and its plots, beside the encoders; run() logs them
    (out / "evaluation.json").write_text(json.dumps(ev, indent=2))
    t_embed = time.perf_counter()
    served = "moon" if "moon" in encoders else next(iter(encoders))
    embed_catalog(
        dataset,
        encoders[served],
        out / "embeddings.parquet",
        t.embed_batch_size,
        settings.placement.num_workers,
        settings.placement.gpus_per_worker if settings.placement.use_gpu else 0.0,
    )
    embed_s = time.perf_counter() - t_embed
    publish(work, out, ["encoders", "history.jsonl"])
    k = max(t.recall_k)
    metrics: dict[str, float] = {f"{n}_{m}": v for n, row in ev["table"].items() for m, v in row.items()}
    metrics |= {f"detector_iou_{s}": v for s, v in ev["iou"].items()}
    metrics |= {
        f"recall_at_{k}_moon": ev["table"][served][f"image_r{k}"],
        f"recall_at_{k}_baseline": ev["table"]["baseline"][f"image_r{k}"],
        "prepare_s": info.get("views_s", 0.0) + info.get("detector_s", 0.0),
        "fit_s": fit_s,
        "eval_s": eval_s,
        "embed_s": embed_s,
    }
    metrics |= {k2: float(v) for k2, v in info.items() if isinstance(v, int | float)}
    summary = {
        "served": served,
        # relative: on a cluster the next step gets this folder under another path
        "embeddings": "embeddings.parquet",
        "recall_k": k,
        "image_recall": {n: row[f"image_r{k}"] for n, row in ev["table"].items()},
    }
    (out / "moon.json").write_text(json.dumps(summary, indent=2))
    seconds = time.perf_counter() - t0
    log(STAGE, f"{verdict(served, metrics, k)} ({seconds:.0f}s)")
    return MoonResult(str(out), str(out / "embeddings.parquet"), metrics, history, None, seconds, served)


def verdict(served: str, metrics: dict[str, float], k: int) -> str:
    """The stage's result in a line, naming the variant served: the first one trained when
    moon_train.variants has no "moon" (its recall is still the recall_at_K_moon metric the summary reads)."""
    line = f"image-search recall@{k}: {served} {metrics[f'recall_at_{k}_moon']:.3f}, baseline {metrics[f'recall_at_{k}_baseline']:.3f}"
    if served != "moon":
        line += f" (moon_train.variants has no moon: {served} is served)"
    if f"no_core_region_image_r{k}_cluttered" in metrics and f"moon_image_r{k}_cluttered" in metrics:
        line += f"; cluttered queries {metrics[f'moon_image_r{k}_cluttered']:.3f} with core-region detection, {metrics[f'no_core_region_image_r{k}_cluttered']:.3f} without"
    return line


def _curves(history: list[dict[str, float]], out: Path, variants: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    epochs = [int(h["epoch"]) for h in history]
    for v in variants:
        ax.plot(epochs, [h[f"{v}_loss"] for h in history], marker="o", label=v)
    post = [int(h["epoch"]) for h in history if h.get("posttrain")]
    if post:
        ax.axvline(min(post) - 0.5, color="grey", ls=":", label="post-training starts")
    ax.set(title="MOON InfoNCE loss", xlabel="epoch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(
    settings_json: str, tracking_uri: str, parent_run_id: str, dataset: str | Path, out_dir: str | Path
) -> MoonResult:
    from adflow.config import settings_from_json
    from adflow.tracking import NOTE_TAG, stage_run

    s = settings_from_json(settings_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        sr.params(
            {
                "moon_model": s.moon_model.model_dump(),
                "moon_train": s.moon_train.model_dump(),
                "workers": s.placement.num_workers,
            }
        )
        if not s.moon_train.enabled:
            note = "moon_train.enabled is false: CiUBM reads the text embedding"
        else:
            try:
                result = train(s, dataset, out)
            except MoonUnavailable as e:
                note = f"skipped: {e}; CiUBM reads the text embedding"
            else:
                for h in result.history:
                    sr.metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))
                sr.metrics(result.metrics | {"train_s": result.seconds})
                sr.log_file(_curves(result.history, out, list(s.moon_train.variants)))
                for name in ("report.md", "recall.png", "expert_usage.png", "evaluation.json"):
                    if (out / name).exists():
                        sr.log_file(out / name)
                sr.artifact("moon", out)
                assert result.served is not None
                sr.params({"served": result.served})
                sr.tag(NOTE_TAG, verdict(result.served, result.metrics, max(s.moon_train.recall_k)))
                return result
        log(STAGE, note)
        sr.tag(NOTE_TAG, note)
        (out / "moon.json").write_text(json.dumps({"served": None, "note": note}))
        return MoonResult(str(out), None, note=note)
