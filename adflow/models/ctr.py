"""CTR models: CiUBM (MIM paper; MUSE-style content path) and DIN (its ID-only baseline), one architecture.

Both attend over the user's behaviour sequence from the target item (DIN's target attention: an MLP over
[e_t, e_b, e_t - e_b, e_t * e_b]). CiUBM adds the content path on frozen item content embeddings (text now,
MOON later): the cosine similarity s_b of target and behaviour content is used three ways:
  1. similarity-augmented attention logits  w1 * id_score_b + w2 * s_b / tau + w3 * id_score_b * s_b,
  2. a similarity histogram (SimTier: log(1 + count) per bin) fed to the MLP,
  3. a content-interest vector: softmax(s_b / tau)-weighted behaviour content, through a trainable adapter.
Unseen item ids share one out-of-vocabulary id, so for cold-start items only the content path tells them apart.

`FeatureEncoder` turns a raw feature frame (Feast features + creative factors) into tensors; it is fitted on
the training split and travels with the model inside `CTRPredictor`, so a champion trained on another
world scores new data with its own vocabularies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from adflow.config import CTRModelConfig

PAD, OOV = 0, 1
GAP_EDGES_S = np.array([3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400])
THEMES = ("warm", "cool", "dark", "bright")
MAX_POSITION = 20
DENSE = (
    "prominence", "clutter", "legibility", *(f"theme_{t}" for t in THEMES),
    "log_impressions_to_date", "ctr_smoothed_x10", "log_clicks_to_date",
    "log_clicks_1d", "log_clicks_7d", "log_clicks_total", "target_category_share",
)  # fmt: skip


def _vocab(values: Any, start: int) -> dict[Any, int]:
    return {v: i + start for i, v in enumerate(sorted(set(values)))}


@dataclass
class FeatureEncoder:
    """Vocabularies and the frozen content table, fitted on the training split."""

    seq_len: int
    users: dict[int, int] = field(default_factory=dict)
    items: dict[int, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    content_index: dict[int, int] = field(default_factory=dict)  # item id -> row of `content` (0 = none)
    content: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.float32))
    item_category: dict[int, str] = field(default_factory=dict)
    affinity_order: list[str] = field(default_factory=list)  # category order of the category_affinity feature

    @classmethod
    def fit(cls, train: pd.DataFrame, catalog: pd.DataFrame, seq_len: int) -> FeatureEncoder:
        """`catalog`: item_id, category, embedding (every catalog item, cold ones included)."""
        seen_items = set(train["item_id"].astype(int))
        for seq in train["hist_item_ids"]:
            if seq is not None:
                seen_items.update(int(x) for x in seq)
        emb = np.stack([np.asarray(e, np.float32) for e in catalog["embedding"]])
        content = np.vstack([np.zeros((1, emb.shape[1]), np.float32), emb])
        return cls(
            seq_len=seq_len,
            users=_vocab(train["user_id"].astype(int), 2),
            items=_vocab(seen_items, 2),
            categories=_vocab(catalog["category"], 1),
            segments=_vocab(train["segment"].fillna(""), 2),
            content_index={int(i): k + 1 for k, i in enumerate(catalog["item_id"])},
            content=content,
            item_category=dict(zip(catalog["item_id"].astype(int), catalog["category"], strict=True)),
            affinity_order=sorted(catalog["category"].unique()),
        )

    def sizes(self) -> dict[str, int]:
        return {
            "user": len(self.users) + 2,
            "item": len(self.items) + 2,
            "cat": len(self.categories) + 1,
            "seg": len(self.segments) + 2,
            "gap": len(GAP_EDGES_S) + 2,
            "pos": MAX_POSITION + 1,
            "dense": len(DENSE),
        }

    def transform(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        n, L = len(frame), self.seq_len
        item_ids = frame["item_id"].astype(int).to_numpy()
        seq_item = np.zeros((n, L), np.int64)
        seq_raw = np.zeros((n, L), np.int64)
        seq_cat = np.zeros((n, L), np.int64)
        seq_gap = np.zeros((n, L), np.int64)
        now = frame["event_timestamp"].astype("int64").to_numpy() // 10**9
        for r, (seq, ts) in enumerate(zip(frame["hist_item_ids"], frame["hist_ts"], strict=True)):
            if seq is None or len(seq) == 0:
                continue
            k = min(len(seq), L)
            ids = [int(x) for x in seq[:k]]
            seq_item[r, :k] = [self.items.get(i, OOV) for i in ids]
            seq_raw[r, :k] = [self.content_index.get(i, 0) for i in ids]
            seq_cat[r, :k] = [self.categories.get(self.item_category.get(i, ""), 0) for i in ids]
            gaps = now[r] - np.asarray(ts[:k], np.int64)
            seq_gap[r, :k] = np.searchsorted(GAP_EDGES_S, gaps) + 1
        theme = frame["theme"].fillna("") if "theme" in frame else pd.Series([""] * n)

        def num(col: str) -> np.ndarray:
            return frame[col].astype(float).fillna(0.0).to_numpy() if col in frame else np.zeros(n)

        dense = np.column_stack(
            [
                num("prominence"), num("clutter"), num("legibility"),
                *[(theme == t).to_numpy(float) for t in THEMES],
                np.log1p(num("impressions_to_date")), 10 * num("ctr_smoothed"), np.log1p(num("clicks_to_date")),
                np.log1p(num("clicks_1d")), np.log1p(num("clicks_7d")), np.log1p(num("clicks_total")),
            ]
        ).astype(np.float32)  # fmt: skip
        # the user's share of clicks in the target's category (Feast's category_affinity). Counts come named
        # (affinity_categories); features written before that held one count per category of their catalog,
        # in sorted order, which `affinity_order` (the training catalog's) reads
        names = frame["affinity_categories"] if "affinity_categories" in frame else [None] * n
        pos_of = {c: k for k, c in enumerate(self.affinity_order)}
        share = np.zeros(n, np.float32)
        for r, (aff, cats, item) in enumerate(zip(frame["category_affinity"], names, item_ids, strict=True)):
            if aff is not None and len(aff):
                target = self.item_category.get(int(item), "")
                if cats is not None:
                    k = next((j for j, c in enumerate(cats) if c == target), -1)
                else:  # unnamed counts: only the old layout, one per category of the training catalog, reads
                    k = pos_of.get(target, -1) if len(aff) == len(self.affinity_order) else -1
                total = float(np.sum(aff))
                share[r] = aff[k] / total if 0 <= k < len(aff) and total > 0 else 0.0
        dense = np.column_stack([dense, share]).astype(np.float32)
        hours = (now // 3600) % 24
        return {
            "user": np.array([self.users.get(int(u), OOV) for u in frame["user_id"]], np.int64),
            "item": np.array([self.items.get(int(i), OOV) for i in item_ids], np.int64),
            "item_raw": np.array([self.content_index.get(int(i), 0) for i in item_ids], np.int64),
            "cat": np.array(
                [self.categories.get(self.item_category.get(int(i), ""), 0) for i in item_ids], np.int64
            ),
            "seq_item": seq_item,
            "seq_raw": seq_raw,
            "seq_cat": seq_cat,
            "seq_gap": seq_gap,
            "seq_mask": seq_item != PAD,
            "pos": np.clip(frame["position"].fillna(1).astype(int).to_numpy(), 0, MAX_POSITION),
            "hour": hours.astype(np.int64),
            "seg": np.array([self.segments.get(s, OOV) for s in frame["segment"].fillna("")], np.int64),
            "dense": dense,
            "label": frame["click"].astype(np.float32).to_numpy()
            if "click" in frame
            else np.zeros(n, np.float32),
        }

    def is_cold(self, frame: pd.DataFrame) -> np.ndarray:
        """Items whose id the model never saw in training: only content can describe them."""
        return ~frame["item_id"].astype(int).isin(self.items).to_numpy()


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes[:-1]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = logits.masked_fill(~mask, -1e9)
    w = torch.softmax(logits, dim=-1) * mask  # an empty history gives all-zero weights, not NaN
    return w


class CTRModel(nn.Module):
    content: torch.Tensor  # frozen content table (a buffer), CiUBM only

    def __init__(
        self, cfg: CTRModelConfig, variant: str, sizes: dict[str, int], content: np.ndarray | None
    ) -> None:
        super().__init__()
        # the names are the config's (CTRTrainConfig.variants); the content table is the caller's
        if variant not in ("din", "ciubm") and not variant.startswith("ciubm_"):
            raise ValueError(f"unknown CTR variant {variant}")
        variant = "din" if variant == "din" else "ciubm"  # ciubm_<embedding>: CiUBM on that content table
        d = cfg.id_dim
        self.variant, self.tau, self.buckets = variant, cfg.tau, cfg.sim_buckets
        self.user = nn.Embedding(sizes["user"], d)
        self.item = nn.Embedding(sizes["item"], d, padding_idx=PAD)
        self.cat = nn.Embedding(sizes["cat"], d, padding_idx=PAD)
        self.gap = nn.Embedding(sizes["gap"], d, padding_idx=PAD)
        self.pos = nn.Embedding(sizes["pos"], 4)
        self.hour = nn.Embedding(24, 4)
        self.seg = nn.Embedding(sizes["seg"], 4)
        self.dense = nn.Linear(sizes["dense"], 8)
        self.att = _mlp([4 * d, cfg.att_hidden, 1], 0.0)
        width = 3 * d + 4 + 4 + 4 + 8
        if variant == "ciubm":
            if content is None:
                raise ValueError("CiUBM needs the content embedding table")
            self.register_buffer("content", torch.as_tensor(content, dtype=torch.float32))  # frozen
            self.adapter = nn.Sequential(nn.Linear(content.shape[1], cfg.content_dim), nn.Tanh())
            self.mix = nn.Parameter(
                torch.tensor([1.0, 1.0, 0.0])
            )  # w1 (ID), w2 (similarity), w3 (interaction)
            width += 2 * cfg.content_dim + cfg.sim_buckets
        self.head = _mlp([width, *cfg.mlp, 1], cfg.dropout)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = b["seq_mask"]
        e_t = self.item(b["item"]) + self.cat(b["cat"])
        e_b = self.item(b["seq_item"]) + self.cat(b["seq_cat"]) + self.gap(b["seq_gap"])
        t = e_t.unsqueeze(1).expand_as(e_b)
        id_score = self.att(torch.cat([t, e_b, t - e_b, t * e_b], dim=-1)).squeeze(-1)
        ctx = [
            self.user(b["user"]),
            e_t,
            self.pos(b["pos"]),
            self.hour(b["hour"]),
            self.seg(b["seg"]),
            self.dense(b["dense"]),
        ]
        if self.variant == "din":
            w = _masked_softmax(id_score, mask)
            ctx.append((w.unsqueeze(-1) * e_b).sum(1))
        else:
            dt = next(self.adapter.parameters()).dtype  # DeepSpeed bf16 casts weights, not this frozen buffer
            c_t, c_b = self.content[b["item_raw"]].to(dt), self.content[b["seq_raw"]].to(dt)
            sim = (c_t.unsqueeze(1) * c_b).sum(-1)  # cosine: the content table is L2-normalised
            w1, w2, w3 = self.mix
            w = _masked_softmax(w1 * id_score + w2 * sim / self.tau + w3 * id_score * sim, mask)
            ctx.append((w.unsqueeze(-1) * e_b).sum(1))
            a_b = self.adapter(c_b)
            ctx.append((_masked_softmax(sim / self.tau, mask).unsqueeze(-1) * a_b).sum(1))
            ctx.append(self.adapter(c_t))
            bins = ((sim.float().clamp(-1, 1) + 1) / 2 * self.buckets).long().clamp(max=self.buckets - 1)
            hist = torch.nn.functional.one_hot(bins, self.buckets).to(dt) * mask.unsqueeze(-1)
            ctx.append(torch.log1p(hist.sum(1)))
        return self.head(torch.cat(ctx, dim=-1)).squeeze(-1)


def to_tensors(arrays: dict[str, np.ndarray], idx: Any = slice(None)) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v[idx]) for k, v in arrays.items()}


class CTRPredictor(nn.Module):
    """A trained CTR model with its encoder: scores raw feature frames. This is what the registry holds."""

    def __init__(self, encoder: FeatureEncoder, model: CTRModel) -> None:
        super().__init__()
        self.encoder, self.model = encoder, model

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(b)

    @torch.inference_mode()
    def predict(self, frame: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        self.model.eval()
        arrays = self.encoder.transform(frame)
        device = next(self.model.parameters()).device  # a server on a GPU node moves the model to cuda
        out = [
            torch.sigmoid(
                self.model({k: v.to(device) for k, v in to_tensors(arrays, slice(i, i + batch_size)).items()})
            )
            .float()
            .cpu()
            .numpy()
            for i in range(0, len(frame), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0)
