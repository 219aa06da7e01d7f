"""MOON evaluation and the catalog embedding job.

- Image search (MOON Embedding's key intermediate metric): the query is another photo of a product (its
  region on a new background; `clean` little clutter, `cluttered` a lot), the gallery is every catalog
  product (image + title); a hit is the same product within the top K.
- Text -> image: the title finds the product's image among all images.
- Category classification: "category: lamp" prompts (the category aspect, trained in pretraining) against
  the product (image + title) and against its photo alone; zero-shot attribute prediction from the photo:
  "red" / "sport" prompts, never a training query on their own.
- Baseline: what a team has without MOON. Images: an 8x8 colour thumbnail (no pretrained vision model can be
  installed offline); text: the MiniLM embedding in Feast (it cannot read images, so it has no image search).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow.progress import log

STAGE = "moon"


def recall_at_k(
    queries: np.ndarray, gallery: np.ndarray, truth: np.ndarray, ks: list[int], chunk: int | None = None
) -> dict[int, float]:
    """Share of queries whose true gallery row is among the K most similar (cosine; rows are unit length).
    Ranked `chunk` queries at a time (default: ~16M similarities a chunk): the full preset's 400k query
    photos against 100k products would be a 160 GB similarity matrix in one piece."""
    step = chunk or max(1, (1 << 24) // max(1, len(gallery)))
    rank = np.empty(len(queries), np.int64)
    for i in range(0, len(queries), step):
        sims = queries[i : i + step] @ gallery.T
        true = sims[np.arange(len(sims)), truth[i : i + step]]
        rank[i : i + step] = (sims > true[:, None]).sum(1)  # ties count in the query's favour
    return {k: float((rank < k).mean()) for k in ks}


def prompt_accuracy(images: np.ndarray, prompts: np.ndarray, labels: np.ndarray) -> float:
    return float(((images @ prompts.T).argmax(1) == labels).mean())


class Encoder:
    """A saved MOON variant ready to embed raw catalog images and texts (its detector crops when it has one)."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        import torch

        from adflow.models.moon import load_detector, load_encoder

        self.model, self.processor, self.meta = load_encoder(path)
        # on the GPU where there is one (a cluster's step pod or a GPU actor: a 3B model over the catalog);
        # `embed` feeds the model on its own device. The detector is a small CNN and stays on the CPU.
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device)
        self.cfg = self.model.cfg
        det = Path(path) / "detector.pt"
        self.detector = load_detector(det) if self.meta.get("crop") and det.exists() else None

    def prepare_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        from adflow.models.moon import crop, predict_boxes

        if self.detector is None:
            return images
        boxes = predict_boxes(self.detector, images, self.cfg.detector_image_size)
        return [
            crop(im, b, self.cfg.crop_margin, self.cfg.image_size)
            for im, b in zip(images, boxes, strict=True)
        ]

    def __call__(
        self,
        texts: Sequence[str | None],
        images: list[np.ndarray] | None,
        modality: str,
        aspect: str | None = None,
    ) -> np.ndarray:
        from adflow.models.moon import embed

        imgs: list[Any] = self.prepare_images(images) if images is not None else [None] * len(texts)
        return embed(self.model, self.processor, texts, imgs, modality, aspect)


def eval_queries(
    catalog: Any, per_item: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Held-out query photos: {"clean"|"cluttered": (images [M,S,S,3], true rows [M], true boxes [M,4])}."""
    from adflow.data.views import views

    out = {}
    for k, (name, clutter) in enumerate((("clean", (0.0, 0.3)), ("cluttered", (1.0, 1.6)))):
        imgs, boxes = views(catalog, per_item, seed + 10_000 + k, clutter)
        n, v = imgs.shape[:2]
        out[name] = (
            imgs.reshape(n * v, *imgs.shape[2:]),
            np.repeat(np.arange(n), v),
            boxes.reshape(n * v, 4),
        )
    return out


def evaluate(
    dataset: str | Path,
    encoders: dict[str, str],
    duplicate_keys: list[str],
    ks: list[int],
    per_item: int,
    seed: int,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Every variant and the baseline on the same held-out queries: {"table": {name: {metric: value}}, ...}.
    `batch_size`: inputs per forward pass where the expert usage is measured (moon_train.embed_batch_size)."""
    import torch

    from adflow.data.views import load_catalog
    from adflow.models.moon import box_iou, pixel_baseline, predict_boxes

    cat = load_catalog(dataset, duplicate_keys)
    assert cat.images is not None
    queries = eval_queries(cat, per_item, seed)
    truth_all = np.concatenate([queries[s][1] for s in ("clean", "cluttered")])
    table: dict[str, dict[str, float]] = {}

    def image_search(name: str, q: dict[str, np.ndarray], gallery: np.ndarray) -> None:
        row = table.setdefault(name, {})
        for s in ("clean", "cluttered"):
            for k, r in recall_at_k(q[s], gallery, queries[s][1], ks).items():
                row[f"image_r{k}_{s}"] = r
        for k, r in recall_at_k(np.vstack([q["clean"], q["cluttered"]]), gallery, truth_all, ks).items():
            row[f"image_r{k}"] = r

    image_search(
        "baseline",
        {s: pixel_baseline(list(queries[s][0])) for s in queries},
        pixel_baseline(cat.images),
    )
    usage: dict[str, Any] = {}
    ious: dict[str, float] = {}
    cats = sorted(set(cat.categories))
    for name, path in encoders.items():
        enc = Encoder(path)
        gallery = enc(cat.titles, cat.images, "image_text")
        image_search(
            name,
            {s: enc([None] * len(queries[s][0]), list(queries[s][0]), "image") for s in queries},
            gallery,
        )
        row = table[name]
        img_only = enc([None] * len(cat), cat.images, "image")
        for k, r in recall_at_k(enc(cat.titles, None, "text"), img_only, np.arange(len(cat)), ks).items():
            row[f"text_image_r{k}"] = r
        prompts = enc([f"category: {c}" for c in cats], None, "text", "category")
        cat_labels = np.array([cats.index(c) for c in cat.categories])
        # the product (image + title, as MOON embeds it for search) and the photo alone
        row["category_acc_product"] = prompt_accuracy(gallery, prompts, cat_labels)
        row["category_acc_image"] = prompt_accuracy(img_only, prompts, cat_labels)
        for key in duplicate_keys:
            if key == "category":
                continue
            have = np.array([key in a for a in cat.attributes])
            if not have.any():
                continue
            values = sorted({a[key] for a in cat.attributes if key in a})
            labels = np.array([values.index(a[key]) for a in cat.attributes if key in a])
            p = enc(values, None, "text", "attributes")
            row[f"zero_shot_{key}_acc"] = prompt_accuracy(img_only[have], p, labels)
        if enc.detector is not None and "detector" not in ious:
            for s in ("clean", "cluttered"):
                pred = predict_boxes(enc.detector, list(queries[s][0]), enc.cfg.detector_image_size)
                ious[s] = float(box_iou(torch.as_tensor(pred), torch.as_tensor(queries[s][2])).mean())
            ious["detector"] = 1.0
        if enc.model.use_moe:
            usage[name] = expert_usage(enc, cat, queries, batch_size)
    ious.pop("detector", None)
    return {"table": table, "iou": ious, "usage": usage, "queries": {s: len(queries[s][1]) for s in queries}}


def expert_usage(
    enc: Encoder, cat: Any, queries: dict[str, Any], batch_size: int = 64
) -> dict[str, list[float]]:
    """Mean gate weight of every expert per input modality (the guided MoE's routing, measured), over
    `batch_size` inputs per forward pass: the whole catalog in one pass does not fit at the full preset."""
    import torch

    from adflow.models.moon import aspect_ids, modality_ids

    photos = queries["clean"][0][: len(cat)]
    inputs: dict[str, tuple[list[Any], Any]] = {
        "image": ([None] * len(photos), photos),
        "text": (cat.titles, None),
        "image_text": (cat.titles, cat.images),
    }
    out = {}
    with torch.inference_mode():
        for kind, (texts, images) in inputs.items():
            total: Any = 0.0
            for i in range(0, len(texts), batch_size):
                t = texts[i : i + batch_size]
                im = (
                    [None] * len(t)
                    if images is None
                    else enc.prepare_images(list(images[i : i + batch_size]))
                )
                b = enc.processor(t, im)
                n = len(b["input_ids"])
                device = enc.device
                b = {k: v.to(device) for k, v in b.items()}
                _, _, probs = enc.model(b, modality_ids([kind] * n, device), aspect_ids([None] * n, device))
                total = total + probs.float().sum(0)
            out[kind] = (total / len(texts)).tolist()
    out["tags"] = list(enc.cfg.moe_experts)
    return out


# ---------------------------------------------------------------- application: the catalog through Ray Data


class _EmbedBatch:
    """Ray Data actor: one encoder per worker, images read from the data set inside the worker."""

    def __init__(self, encoder_dir: str, dataset: str) -> None:
        import torch

        torch.set_num_threads(1)
        self.enc, self.root = Encoder(encoder_dir), Path(dataset)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from PIL import Image

        images = [np.asarray(Image.open(self.root / p).convert("RGB")) for p in batch["image_path"]]
        texts = [f"{t}. category: {c}" for t, c in zip(batch["title"], batch["category"], strict=True)]
        emb = self.enc(texts, images, "image_text")
        return {"item_id": batch["item_id"], "moon_embedding": list(emb)}


def embed_catalog(
    dataset: str | Path,
    encoder_dir: str | Path,
    out_path: str | Path,
    batch_size: int,
    workers: int,
    gpus_per_worker: float = 0.0,
) -> pd.DataFrame:
    """Batch inference over the whole catalog with Ray Data -> parquet (item_id, moon_embedding). With
    `gpus_per_worker` (a GPU placement) each actor asks Ray for its share of a GPU and embeds on it."""
    import ray.data

    items = pd.read_parquet(
        Path(dataset) / "items.parquet", columns=["item_id", "title", "category", "image_path"]
    )
    items["title"] = items["title"].fillna("")
    items["category"] = items["category"].fillna("")
    # one block per worker: a single block would feed a single actor
    ds = ray.data.from_pandas(
        [b for k in range(max(1, workers)) if len(b := items.iloc[k :: max(1, workers)])]
    ).map_batches(
        _EmbedBatch,
        fn_constructor_kwargs={
            "encoder_dir": str(Path(encoder_dir).resolve()),
            "dataset": str(Path(dataset).resolve()),
        },
        batch_size=batch_size,
        concurrency=workers,
        num_cpus=1,
        num_gpus=gpus_per_worker or None,
        batch_format="numpy",
    )
    out = ds.to_pandas().sort_values("item_id").reset_index(drop=True)
    out["moon_embedding"] = [np.asarray(e, np.float32) for e in out["moon_embedding"]]
    if len(out) != len(items) or set(out["item_id"]) != set(items["item_id"]):
        raise RuntimeError(f"embedding job returned {len(out)} rows for {len(items)} catalog items")
    out.to_parquet(out_path, index=False)
    log(STAGE, f"embedded {len(out)} catalog items with Ray Data -> {out_path}")
    return out


def write_report(out: Path, result: dict[str, Any], ks: list[int]) -> list[Path]:
    """report.md + plots: recall per variant (clean vs cluttered queries) and expert usage by modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["table"]
    names = list(table)
    k = max(ks)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(names))
    for j, s in enumerate(("clean", "cluttered")):
        ax.bar(
            x + (j - 0.5) * 0.38,
            [table[n].get(f"image_r{k}_{s}", 0) for n in names],
            0.38,
            label=f"{s} queries",
        )
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax.set(title=f"image search recall@{k}", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots = [out / "recall.png"]
    fig.savefig(plots[0], dpi=110)
    plt.close(fig)
    if result["usage"]:
        name = "moon" if "moon" in result["usage"] else next(iter(result["usage"]))
        u = result["usage"][name]
        kinds = [m for m in ("image", "text", "image_text") if m in u]
        fig, ax = plt.subplots(figsize=(6.5, 2.6))
        im = ax.imshow(np.array([u[m] for m in kinds]), cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(kinds)), kinds)
        ax.set_xticks(range(len(u["tags"])), u["tags"], rotation=30, fontsize=8)
        ax.set_title(f"{name}: mean gate weight per expert, by input modality")
        fig.colorbar(im)
        fig.tight_layout()
        plots.append(out / "expert_usage.png")
        fig.savefig(plots[-1], dpi=110)
        plt.close(fig)
    cols = sorted({c for row in table.values() for c in row})
    lines = [
        "# MOON evaluation",
        "",
        f"Held-out query photos: {result['queries']}. Detector IoU on them: {json.dumps({s: round(v, 3) for s, v in result['iou'].items()})}.",
        "",
        "| variant | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for n in names:
        lines.append(
            f"| {n} | " + " | ".join(f"{table[n][c]:.3f}" if c in table[n] else "-" for c in cols) + " |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return plots
