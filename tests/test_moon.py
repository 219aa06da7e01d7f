"""MOON: guided MoE routing, core-region detection, negatives, the Ray Train path (DDP and DeepSpeed ZeRO-2 on
CPU), checkpoint/resume, the Ray Data embedding job, and the full preset's model built without weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adflow.config import load_settings
from adflow.data.views import batches, behaviour_pairs, duplicate_mask, hard_negatives, load_catalog, views
from adflow.models.moon import (
    MODALITIES,
    PACKED_ATTENTION,
    MoonEncoder,
    MoonProcessor,
    aspect_ids,
    box_iou,
    fit_detector,
    modality_ids,
    pack_vision_attention,
    packed_sdpa,
    predict_boxes,
)
from adflow.workspace import MARKER
from tests.conftest import MOON_FAST, small_settings

KEYS = ["category", "colour", "style"]


def _fast(*extra: str) -> list[str]:
    return [*MOON_FAST, *extra]


def test_guided_moe_routes_by_modality(small_world: Path) -> None:
    """Image inputs go to image experts, text to text experts, both to image_text experts; free routing does not."""
    s = small_settings(small_world.parent)
    cat = load_catalog(small_world, KEYS)
    assert cat.images is not None
    proc = MoonProcessor.build(s.moon_model, cat.titles)
    inputs = {
        "image": ([None] * 16, cat.images[:16]),
        "text": (cat.titles[:16], [None] * 16),
        "image_text": (cat.titles[:16], cat.images[:16]),
    }
    for guided in (True, False):
        torch.manual_seed(0)
        model = MoonEncoder(s.moon_model.model_copy(update={"moe_guided": guided}), proc).eval()
        tags = np.array(s.moon_model.moe_experts)
        for kind, (texts, images) in inputs.items():
            with torch.inference_mode():
                emb, _aux, probs = model(
                    proc(texts, images), modality_ids([kind] * 16), aspect_ids([None] * 16)
                )
            assert probs is not None and emb.shape == (16, s.moon_model.embed_dim)
            assert torch.allclose(emb.norm(dim=-1), torch.ones(16), atol=1e-5)
            share = float(probs[:, torch.as_tensor(tags == kind)].sum(-1).mean())
            if guided:
                assert share > 0.8, (kind, share)  # steered to its modality's experts
            else:
                assert share < 0.5, (kind, share)  # left free, nothing favours the modality
    # an aspect adds its expert on top of the modality's
    model = MoonEncoder(s.moon_model, proc).eval()
    with torch.inference_mode():
        _, _, probs = model(
            proc(["red sport"] * 4, [None] * 4), modality_ids(["text"] * 4), aspect_ids(["attributes"] * 4)
        )
    assert probs is not None
    assert float(probs[:, list(s.moon_model.moe_experts).index("attributes")].mean()) > 0.2
    assert set(MODALITIES) <= set(s.moon_model.moe_experts)


def test_packed_vision_attention_is_transformers_per_image_sdpa(small_world: Path) -> None:
    """The vision tower's images attend in one batched call: the same embeddings and gradients, bit for bit, as
    transformers' one SDPA call per image; images of different sizes still attend only within themselves."""
    s = small_settings(small_world.parent)
    cat = load_catalog(small_world, KEYS)
    assert cat.images is not None
    proc = MoonProcessor.build(s.moon_model, cat.titles)
    torch.manual_seed(0)
    model = MoonEncoder(s.moon_model, proc)
    visual = model.backbone.visual
    assert visual.config._attn_implementation == PACKED_ATTENTION  # every build is switched
    batch = proc(cat.titles[:8], cat.images[:8])

    def run(impl: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        visual.config._attn_implementation = impl
        model.zero_grad()
        emb, _, _ = model(batch, modality_ids(["image_text"] * 8), aspect_ids([None] * 8))
        (emb * torch.arange(emb.shape[1])).sum().backward()
        return emb.detach(), [p.grad.clone() for p in visual.parameters() if p.grad is not None]

    (e_ref, g_ref), (e_packed, g_packed) = run("sdpa"), run(PACKED_ATTENTION)
    assert torch.equal(e_ref, e_packed)
    assert len(g_ref) == len(g_packed) > 0 and all(
        torch.equal(a, b) for a, b in zip(g_ref, g_packed, strict=True)
    )
    # unequal images (Qwen2.5-VL's windows): attention stays inside each one
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 30, 8) for _ in range(3))
    cu = torch.tensor([0, 4, 20, 30], dtype=torch.int32)
    out, _ = packed_sdpa(visual.blocks[0].attn, q, k, v, scaling=0.5, cu_seq_lens_q=cu)
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.5
        ).transpose(1, 2)
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
    ]
    assert out.shape == (1, 30, 2, 8) and torch.allclose(out, torch.cat(parts, dim=1), atol=1e-6)
    # a mask handed in is honoured, not dropped: the images' block-diagonal mask gives the same attention
    block = torch.zeros(30, 30, dtype=torch.bool)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        block[a:b, a:b] = True
    masked, _ = packed_sdpa(visual.blocks[0].attn, q, k, v, block, scaling=0.5, cu_seq_lens_q=cu)
    assert torch.allclose(masked, out, atol=1e-6)
    unmasked, _ = packed_sdpa(visual.blocks[0].attn, q, k, v, torch.ones(30, 30, dtype=torch.bool), 0.5)
    assert not torch.allclose(unmasked, out, atol=1e-3)  # a mask that joins the images changes it
    # an implementation asked for on purpose stays
    visual.config._attn_implementation = "eager"
    pack_vision_attention(model.backbone)
    assert visual.config._attn_implementation == "eager"


def test_detector_boxes_overlap_true_boxes(small_world: Path) -> None:
    cat = load_catalog(small_world, KEYS)
    assert cat.images is not None and cat.boxes is not None
    train_imgs, train_boxes = views(cat, 3, seed=0)
    n, v = train_imgs.shape[:2]
    det, curve = fit_detector(
        [train_imgs[i, j] for i in range(n) for j in range(v)],
        train_boxes.reshape(-1, 4),
        [16, 32, 64],
        32,
        250,
        3e-3,
        0,
    )
    held_imgs, held_boxes = views(cat, 1, seed=99, clutter=(1.0, 1.5))  # unseen photos, heavy clutter
    pred = predict_boxes(det, list(held_imgs[:, 0]), 32)
    iou = box_iou(torch.as_tensor(pred), torch.as_tensor(held_boxes[:, 0]))
    # a box placed at random (the mean box) overlaps far less: the detector has learnt where products are
    mean_box = torch.as_tensor(train_boxes.reshape(-1, 4).mean(0)).expand(len(pred), 4)
    chance = box_iou(mean_box, torch.as_tensor(held_boxes[:, 0]))
    print(
        f"detector IoU on held-out cluttered photos {float(iou.mean()):.3f} (mean box: {float(chance.mean()):.3f})"
    )
    assert curve[-1] < curve[0]
    assert float(iou.mean()) > 0.5 and float(iou.mean()) > float(chance.mean()) + 0.15
    assert float((iou > 0.5).float().mean()) > 0.5


def test_hard_negatives_are_same_category_and_never_positives(small_world: Path) -> None:
    cat = load_catalog(small_world, KEYS)
    rng = np.random.default_rng(0)
    for i in range(len(cat)):
        negs = hard_negatives(i, cat, 5, rng)
        assert i not in negs
        assert all(cat.categories[j] == cat.categories[i] for j in negs)
        assert all(cat.dup_keys[j] != cat.dup_keys[i] for j in negs)  # near duplicates are not negatives
    epoch = batches(cat, 32, 0.75, 8, rng)
    flat = np.concatenate(epoch)
    assert len(flat) == len(set(flat.tolist())) == len(cat)  # every item once per epoch
    first = epoch[0][:24]  # the hard part of a batch: groups of 8 from one category
    for g in range(0, 24, 8):
        assert len(set(cat.categories[first[g : g + 8]])) == 1
    m = duplicate_mask(first, first, cat)
    assert not m.diagonal().any()  # the positive is never masked out
    assert all(cat.dup_keys[first[a]] == cat.dup_keys[first[b]] for a, b in zip(*np.nonzero(m), strict=True))
    # spatio-temporal negatives: shown in the same session, not clicked, not the positive
    imps = pd.read_parquet(small_world / "impressions.parquet")
    cutoff = imps["ts"].quantile(0.8)
    pairs = behaviour_pairs(small_world, cat, imps["ts"].max(), 3, 0)
    row_of = {int(x): k for k, x in enumerate(cat.item_ids)}
    sessions = {sid: g for sid, g in imps.groupby("session_id")}
    assert len(pairs) > 0 and {"query", "coclick"} <= set(pairs["kind"])
    clicked_by_session = {
        sid: {row_of[int(x)] for x in g.loc[g["click"] == 1, "item_id"]} for sid, g in sessions.items()
    }
    shown_by_session = {sid: {row_of[int(x)] for x in g["item_id"]} for sid, g in sessions.items()}
    for _, p in pairs.head(200).iterrows():
        assert p["positive"] not in p["negatives"]
        assert any(
            p["positive"] in clicked_by_session[s]
            and set(p["negatives"]) <= shown_by_session[s] - clicked_by_session[s]
            for s in sessions
        )
    # interest pairs: one user's consecutive clicks (different items), none after the cut-off
    interest = behaviour_pairs(small_world, cat, cutoff, 3, 0, interest_per_user=5)
    interest = interest[interest["kind"] == "interest"]
    beh = pd.read_parquet(small_world / "behaviour.parquet")
    beh = beh[(beh["event_type"] == "click") & (beh["ts"] < cutoff)].sort_values(
        ["user_id", "ts"], kind="stable"
    )
    consecutive = {
        (row_of[int(a)], row_of[int(b)])
        for _, g in beh.groupby("user_id")
        for a, b in zip(g["item_id"], g["item_id"].iloc[1:], strict=False)
    }
    assert len(interest) > 0 and (interest["anchor"] != interest["positive"]).all()
    assert all((a, b) in consecutive for a, b in zip(interest["anchor"], interest["positive"], strict=True))
    assert len(interest) <= 5 * beh["user_id"].nunique()  # at most interest_per_user per user


def test_behaviour_mask_removes_the_anchor_s_own_item() -> None:
    """An item-anchored behaviour query (coclick, interest) is the anchor product's embedding: the anchor's own
    item and its near duplicates leave its denominator (in a batch they are often another pair's positive, a
    copy of the query at logit 1/T), a text query's do not, and no positive is ever masked."""
    from components.training.moon.core import behaviour_mask

    keys = np.array(["a", "b", "c", "d", "e", "a"])  # item 5 is a near duplicate of item 0
    positives = np.array([1, 0, 2])  # pair 1's positive is pair 0's anchor
    anchors = np.array([0, 3, -1])  # pair 2: a text query
    candidates = np.array([*positives, 5, 4])  # then explicit negatives: a duplicate of item 0, item 4
    m = behaviour_mask(positives, anchors, candidates, keys)
    assert m.shape == (3, 5) and not m.diagonal().any()
    assert m[0].tolist() == [False, True, False, True, False]  # its anchor (item 0) and its duplicate 5
    assert m[1].tolist() == [False, False, False, True, False]  # its positive's duplicate; item 3 is absent
    assert not m[2].any()  # no anchor, no near duplicate of item 2
    # the positive survives even where it looks like the anchor
    assert not behaviour_mask(np.array([5]), np.array([0]), np.array([5, 0]), keys)[0, 0]
    assert behaviour_mask(np.array([5]), np.array([0]), np.array([5, 0]), keys)[0, 1]


def test_hard_batches_keep_every_item_at_any_hard_share(small_world: Path) -> None:
    """A hard group that overshoots the batch is cut before its rows are taken: with every row hard (groups of
    uneven size) each item still comes once per epoch, and no batch is over size."""
    cat = load_catalog(small_world, KEYS)
    for frac, batch, group in ((1.0, 64, 8), (0.9, 20, 8), (1.0, 32, 5)):
        epoch = batches(cat, batch, frac, group, np.random.default_rng(0))
        flat = np.concatenate(epoch)
        assert len(flat) == len(set(flat.tolist())) == len(cat), (frac, batch, group)
        assert max(len(b) for b in epoch) <= batch


def test_recall_and_expert_usage_in_chunks_equal_one_pass() -> None:
    """Ranks computed a few queries at a time and gate weights averaged over forward passes of a few inputs
    are those of one pass over everything (the full preset cannot afford one pass)."""
    from types import SimpleNamespace

    from components.training.moon.evaluate import expert_usage, recall_at_k

    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 8)).astype(np.float32)
    queries = gallery[rng.integers(0, 50, 37)] + rng.normal(0, 0.8, (37, 8)).astype(np.float32)
    truth = rng.integers(0, 50, 37)
    truth[:20] = [int(np.argmax(gallery @ q)) for q in queries[:20]]
    one = recall_at_k(queries, gallery, truth, [1, 5, 10], chunk=len(queries))
    assert 0 < one[1] < one[10] < 1
    for chunk in (1, 4, 36, None):
        assert recall_at_k(queries, gallery, truth, [1, 5, 10], chunk=chunk) == one

    m = load_settings("tiny", "local").moon_model
    titles = [f"item {i} red sport" for i in range(10)]
    images = list(rng.integers(0, 255, (10, m.image_size, m.image_size, 3), dtype=np.uint8))
    proc = MoonProcessor.build(m, titles)
    torch.manual_seed(0)
    model = MoonEncoder(m, proc).eval()
    seen: list[int] = []

    def forward(b, mod, asp):  # type: ignore[no-untyped-def]
        seen.append(len(b["input_ids"]))
        return model(b, mod, asp)

    enc = SimpleNamespace(
        processor=proc, model=forward, prepare_images=list, cfg=model.cfg, device=torch.device("cpu")
    )
    cat = type("Catalog", (), {"titles": titles, "images": images, "__len__": lambda self: 10})()
    q = {"clean": (np.stack(images[::-1]), None, None)}
    whole = expert_usage(enc, cat, q, batch_size=10)  # type: ignore[arg-type]
    assert seen == [10, 10, 10]
    seen.clear()
    chunked = expert_usage(enc, cat, q, batch_size=4)  # type: ignore[arg-type]
    assert seen == [4, 4, 2] * 3
    assert chunked["tags"] == whole["tags"] and set(chunked) == {"image", "text", "image_text", "tags"}
    for kind in ("image", "text", "image_text"):
        assert np.allclose(chunked[kind], whole[kind], atol=1e-6) and sum(whole[kind]) == pytest.approx(1)


def test_the_served_variant_is_named() -> None:
    """Without "moon" in moon_train.variants the first variant is served: the stage's line names it (the
    metric keeps its name, recall_at_K_moon, which the run summary reads)."""
    from components.training.moon.core import verdict

    m = {"recall_at_10_moon": 0.25, "recall_at_10_baseline": 0.125}
    assert verdict("moon", m, 10) == "image-search recall@10: moon 0.250, baseline 0.125"
    line = verdict("no_moe", m, 10)
    assert line.startswith("image-search recall@10: no_moe 0.250") and "no_moe is served" in line
    m |= {"moon_image_r10_cluttered": 0.2, "no_core_region_image_r10_cluttered": 0.1}
    assert verdict("moon", m, 10).endswith(
        "cluttered queries 0.200 with core-region detection, 0.100 without"
    )


@pytest.mark.slow
def test_moon_trains_embeds_and_resumes(small_world: Path, tmp_path: Path) -> None:
    """The whole stage on Ray: DDP fit of every variant, export, evaluation, Ray Data catalog embeddings; then a
    resumed run continues after the last checkpoint instead of starting over."""
    from components.training.moon.core import fit, train
    from components.training.moon.evaluate import Encoder

    # in a cluster's layout: the step folder and the data set are private to the step's pod, so what Ray's
    # workers and the embedding actors read and write goes to the workspace volume; results come back
    s = small_settings(tmp_path, *_fast(), "placement.workspace_pvc=adflow-workspace")
    out = tmp_path / "moon"
    r = train(s, small_world, out)
    steps = Path(s.placement.workspace) / "steps"
    work = steps / out.resolve().relative_to("/")
    assert (work / "prepared" / "catalog.json").exists() and not (out / "prepared").exists()
    assert (steps / small_world.resolve().relative_to("/") / MARKER).exists()  # the actors' copy of the data
    assert (out / "encoders" / "moon").is_dir() and (out / "history.jsonl").exists()
    table = json.loads((out / "evaluation.json").read_text())["table"]
    assert {"baseline", "moon", "no_moe", "no_core_region", "no_hard_negatives", "moon_pretrain"} <= set(
        table
    )
    assert 0 <= r.metrics["recall_at_10_moon"] <= 1 and r.metrics["detector_iou_cluttered"] > 0.3
    emb = pd.read_parquet(r.embeddings)
    items = pd.read_parquet(small_world / "items.parquet")
    assert sorted(emb["item_id"]) == sorted(items["item_id"])
    vecs = np.stack(emb["moon_embedding"])
    assert vecs.shape[1] == s.moon_model.embed_dim and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    # the Ray Data job and the in-process encoder agree (same crops, same weights)
    cat = load_catalog(small_world, KEYS)
    assert cat.images is not None
    local = Encoder(out / "encoders" / "moon")(cat.titles[:8], cat.images[:8], "image_text")
    assert np.allclose(local, vecs[:8], atol=1e-4)
    assert [h["epoch"] for h in r.history] == [0, 1, 2] and r.history[-1]["posttrain"] == 1
    # resume: one more post-training epoch from the last checkpoint runs epoch 3 only
    assert not (out / "ray").exists()  # checkpoints stay on the volume
    (run_dir,) = (work / "ray").glob("moon-*")  # every fit is a run of its own (adflow/train.py)
    ckpt = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1]
    s2 = small_settings(tmp_path, *_fast("moon_train.posttrain_epochs=2"))
    res = fit(s2, work / "prepared", tmp_path / "ray2", tmp_path / "history2.jsonl", str(ckpt))
    assert res.error is None
    resumed = [json.loads(x) for x in (tmp_path / "history2.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in resumed] == [3]


@pytest.mark.slow
def test_deepspeed_zero2_on_cpu_trains(small_world: Path, tmp_path: Path) -> None:
    """DeepSpeed ZeRO-2 over gloo inside Ray workers, on CPU: a few epochs, the loss goes down."""
    from components.training.moon.core import fit, prepare

    s = small_settings(
        tmp_path,
        *_fast("moon_train.pretrain_epochs=3", "moon_train.posttrain_epochs=0"),
        "moon_train.variants=[moon]",
    )
    s.moon_train.deepspeed = {
        "train_micro_batch_size_per_gpu": 16,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "gradient_clipping": 1.0,
    }
    prepare(s, small_world, tmp_path / "prepared")
    res = fit(s, tmp_path / "prepared", tmp_path / "ray", tmp_path / "history.jsonl")
    assert res.error is None
    losses = [json.loads(x)["moon_loss"] for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    print("ZeRO-2 losses", losses)
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_full_preset_builds_without_weights() -> None:
    """The full preset validates and its Qwen2.5-VL-sized model class builds on the meta device: no weights, no
    download (on a cluster moon_model.backbone_path loads the checkpoint into the same class)."""
    s = load_settings("full", "cluster")
    m = s.moon_model
    assert m.family == "qwen2_5_vl" and m.backbone_path
    with torch.device("meta"):
        model = MoonEncoder(m.model_copy(update={"backbone_path": None}), None)
    n = sum(p.numel() for p in model.parameters())
    assert type(model.backbone).__name__ == "Qwen2_5_VLModel"
    assert 3.0e9 < n < 4.5e9, n  # Qwen2.5-VL-3B's size
    assert all(p.device.type == "meta" for p in model.parameters())
    assert s.moon_train.deepspeed and s.moon_train.deepspeed["zero_optimization"]["stage"] == 2
