"""MOON: a Qwen2-VL-family multimodal LLM turned into a product-representation model.

Input: `<|vision_start|><|image_pad|>...<|vision_end|> title ... <|endoftext|>` (image, text or both); the
embedding is the hidden state of the last token, through a guided mixture-of-experts head, L2-normalised.

- Backbone: transformers' Qwen2-VL (or Qwen2.5-VL) model. `MoonModelConfig.backbone_path` None builds it from
  the config's sizes with random weights and a byte-level BPE trained on the catalog (offline, tiny); a path
  loads a pretrained checkpoint with its own tokenizer and image processor (full). One code path.
- Guided MoE (`GuidedMoE`): a shared projection plus one routed expert per tag (a modality: image / text /
  image_text, or an aspect: category / attributes). The gate's logits get a fixed bonus for every tag
  matching the input's modality and aspect, so routing is steered by what the input is rather than left
  free; a load-balancing loss keeps experts in use. Off (`moe=False`): the shared linear projection alone.
- Core-region detection (`CoreRegionDetector`): a small CNN regresses the product's box (trained on the
  world's boxes); the encoder then sees the predicted region with a margin instead of the cluttered photo.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from adflow.config import MoonModelConfig, VLBackboneConfig

MODALITIES = ("image", "text", "image_text")
ASPECTS = ("category", "attributes")
PAD, EOS = "<|pad|>", "<|endoftext|>"
VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
MERGE = 2  # Qwen2-VL merges 2x2 patches into one LLM token


# ---------------------------------------------------------------- tokenizer, image processor


def train_tokenizer(
    texts: Sequence[str],
    vocab_size: int,
    *,
    lowercase: bool = True,
    phrases: bool = False,
    extra_special: Sequence[str] = (),
    eos: str = EOS,
    max_token_length: int | None = None,
) -> Any:
    """A byte-level BPE over the world's own text, with Qwen2-VL's special tokens (tiny preset, offline).

    `phrases`: merges may cross spaces, so a phrase the corpus repeats becomes one token. Generated answers
    (Creative4U's rationales) are then a few dozen tokens, not a hundred: generation on CPU costs per token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not phrases)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, *VISION, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=max_token_length,
    )
    tok.train_from_iterator([t.lower() if lowercase else t for t in texts], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=eos)


def image_processor(cfg: VLBackboneConfig) -> Any:
    """Qwen2-VL's PIL image processor at the preset's fixed resolution (the fast one needs torchvision), or the
    pretrained checkpoint's own."""
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    if cfg.backbone_path:
        return Qwen2VLImageProcessorPil.from_pretrained(cfg.backbone_path)
    pixels = cfg.image_size * cfg.image_size
    return Qwen2VLImageProcessorPil(
        patch_size=cfg.patch_size,
        merge_size=MERGE,
        temporal_patch_size=2,
        min_pixels=pixels,
        max_pixels=pixels,
    )


class MoonProcessor:
    """Texts and images -> Qwen2-VL inputs (ids with image placeholders, pixel patches, M-RoPE token types)."""

    def __init__(self, tokenizer: Any, image_processor: Any, cfg: MoonModelConfig) -> None:
        self.tok, self.images, self.cfg = tokenizer, image_processor, cfg
        ids = tokenizer.convert_tokens_to_ids
        self.vision_start, self.vision_end, self.image_pad, self.video_pad = (ids(t) for t in VISION)
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else ids(EOS)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    @classmethod
    def build(cls, cfg: MoonModelConfig, corpus: Sequence[str]) -> MoonProcessor:

        if cfg.backbone_path:
            from transformers import AutoTokenizer

            # the PIL image processor: the fast one needs torchvision, which this platform does not ship
            return cls(AutoTokenizer.from_pretrained(cfg.backbone_path), image_processor(cfg), cfg)
        return cls(train_tokenizer(corpus, cfg.vocab_size), image_processor(cfg), cfg)

    def save(self, path: str | Path) -> None:
        # saved apart: Qwen2VLProcessor would want a video processor, which needs torchvision (FIELD-NOTES)
        out = Path(path)
        self.tok.save_pretrained(out / "tokenizer")
        self.images.save_pretrained(out / "image_processor")

    @classmethod
    def load(cls, path: str | Path, cfg: MoonModelConfig) -> MoonProcessor:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

        return cls(
            AutoTokenizer.from_pretrained(Path(path) / "tokenizer"),
            Qwen2VLImageProcessorPil.from_pretrained(Path(path) / "image_processor"),
            cfg,
        )

    def __call__(
        self, texts: Sequence[str | None], images: Sequence[Image.Image | np.ndarray | None]
    ) -> dict[str, torch.Tensor]:
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        pil = [_as_pil(im, self.cfg.image_size) if im is not None else None for im in images]
        present = [im for im in pil if im is not None]
        pixel: dict[str, torch.Tensor] = {}
        n_tokens: list[int] = []
        if present:
            pixel = dict(self.images(images=present, return_tensors="pt"))
            n_tokens = [int(g.prod()) // (MERGE * MERGE) for g in pixel["image_grid_thw"]]
        encoded = self.tok(
            [(t or "").lower() for t in texts],
            add_special_tokens=False,
            truncation=True,
            max_length=self.cfg.max_text_tokens,
        )["input_ids"]
        rows, k = [], 0
        for text, im, ids in zip(texts, pil, encoded, strict=True):
            if im is None and not text:
                raise ValueError("an input needs an image, a text or both")
            row: list[int] = []
            if im is not None:
                row = [self.vision_start, *[self.image_pad] * n_tokens[k], self.vision_end]
                k += 1
            rows.append([*row, *ids, self.eos])
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: the embedding token is the last unmasked one
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        out = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "mm_token_type_ids": (input_ids == self.image_pad).long(),  # M-RoPE needs to know image tokens
        }
        if pixel:
            out["pixel_values"] = pixel["pixel_values"]
            out["image_grid_thw"] = pixel["image_grid_thw"]
        return out


def _as_pil(im: Image.Image | np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(im) if isinstance(im, np.ndarray) else im.convert("RGB")
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR)


# ---------------------------------------------------------------- backbone


class VisionTokens(Protocol):
    """What a backbone config needs from a processor: its tokenizer and the ids of its special tokens."""

    tok: Any
    eos: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int


def backbone_config(
    cfg: VLBackboneConfig, processor: VisionTokens | None = None, vocab_size: int | None = None
) -> Any:
    """The Qwen2-VL / Qwen2.5-VL config for the preset's sizes (M-RoPE sections sum to head_dim / 2)."""
    head_dim = cfg.hidden_size // cfg.heads
    half = head_dim // 2
    t = half // 4
    section = [t, (half - t) // 2, half - t - (half - t) // 2]
    eos = processor.eos if processor else 1
    text: dict[str, Any] = {
        "vocab_size": vocab_size or (len(processor.tok) if processor else cfg.vocab_size),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "bos_token_id": None,  # the text config's own defaults are Qwen's ids, outside a tiny vocabulary
        "eos_token_id": eos,
    }
    special: dict[str, Any] = {
        "vision_start_token_id": processor.vision_start if processor else 2,
        "vision_end_token_id": processor.vision_end if processor else 3,
        "image_token_id": processor.image_pad if processor else 4,
        "video_token_id": processor.video_pad if processor else 5,
        "bos_token_id": None,
        "eos_token_id": eos,
    }
    if cfg.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision: dict[str, Any] = {
            "depth": cfg.vision_depth,
            "hidden_size": cfg.vision_dim,
            "intermediate_size": cfg.vision_intermediate_size or 4 * cfg.vision_dim,
            "num_heads": cfg.vision_heads,
            "out_hidden_size": cfg.hidden_size,
            "patch_size": cfg.patch_size,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
        }
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special)
    from transformers import Qwen2VLConfig

    vision_cfg: dict[str, Any] = {
        "depth": cfg.vision_depth,
        "embed_dim": cfg.vision_dim,
        "hidden_size": cfg.hidden_size,  # the merger's output feeds the LLM
        "num_heads": cfg.vision_heads,
        "patch_size": cfg.patch_size,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "mlp_ratio": 2
        if cfg.vision_intermediate_size is None
        else cfg.vision_intermediate_size / cfg.vision_dim,
    }
    return Qwen2VLConfig(text_config=text, vision_config=vision_cfg, **special)


def build_backbone(cfg: MoonModelConfig, processor: MoonProcessor | None, weights: bool = True) -> nn.Module:
    """From the preset's sizes (random init), or a pretrained path (its weights, or only its config when
    `weights` is False: a trained MOON's own state dict is loaded on top)."""
    if cfg.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLModel as Backbone
    else:
        from transformers import Qwen2VLModel as Backbone  # type: ignore[assignment]
    if cfg.backbone_path:
        if weights:
            return pack_vision_attention(Backbone.from_pretrained(cfg.backbone_path))
        from transformers import AutoConfig

        return pack_vision_attention(Backbone(AutoConfig.from_pretrained(cfg.backbone_path)))
    return pack_vision_attention(Backbone(backbone_config(cfg, processor)))


# ---------------------------------------------------------------- vision attention: one call for a batch of images

# transformers' Qwen2-VL vision towers take the packed (varlen) path only for an attention implementation
# whose name contains "flash" (`is_flash_attention_requested`); every other name runs one attention call per
# image. This name routes the tower to the packed path, served by `packed_sdpa` below.
PACKED_ATTENTION = "flash_packed_sdpa"


def packed_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Self-attention within each image of a packed sequence ([1, heads, tokens, dim], images back to back,
    bounded by `cu_seq_lens_q`), as transformers' sdpa path computes it: images of one size are one batched
    SDPA call (the same numbers bit for bit: tests/test_moon.py), others one call each. Returns
    [1, tokens, heads, dim] as a flash kernel does. An explicit `attention_mask` (transformers passes none to
    a flash-named kernel; a caller may) is applied over the whole packed sequence, as given."""
    import torch.nn.functional as F

    if attention_mask is not None:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
        )
        return out.transpose(1, 2), None
    if cu_seq_lens_q is None:
        raise ValueError("packed vision attention needs the images' boundaries (cu_seq_lens_q)")
    _, heads, tokens, dim = query.shape
    lengths = cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]
    first = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and first > 0 and bool((lengths == first).all()):
        images = len(lengths)

        def batch(t: torch.Tensor) -> torch.Tensor:  # [1, H, images * L, D] -> [images, H, L, D]
            return t[0].reshape(heads, images, first, dim).transpose(0, 1)

        out = F.scaled_dot_product_attention(
            batch(query), batch(key), batch(value), dropout_p=dropout, scale=scaling
        )
        return out.transpose(1, 2).reshape(1, tokens, heads, dim), None
    split = lengths.tolist()
    outs = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling).transpose(1, 2)
        for q, k, v in zip(*(torch.split(t, split, dim=2) for t in (query, key, value)), strict=True)
    ]
    return torch.cat(outs, dim=1), None


def pack_vision_attention(model: nn.Module) -> nn.Module:
    """Point a Qwen2-VL-family model's vision tower at `packed_sdpa` when it runs plain "sdpa" (flash or eager,
    when asked for, stay). A tiny Creative4U SFT step made ~50 per-image attention calls; batched, the step is
    a few percent faster. The choice is not saved with the model: every build or load of one calls this."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
    inner = getattr(model, "model", model)
    visual = getattr(inner, "visual", None)
    if visual is not None and visual.config._attn_implementation == "sdpa":
        visual.config._attn_implementation = PACKED_ATTENTION
    return model


# ---------------------------------------------------------------- guided mixture of experts


class GuidedMoE(nn.Module):
    """Experts tagged by modality or aspect; the gate is steered by the input's side information."""

    guide: torch.Tensor

    def __init__(self, width: int, cfg: MoonModelConfig) -> None:
        super().__init__()
        unknown = sorted(set(cfg.moe_experts) - set(MODALITIES) - set(ASPECTS))
        if unknown:
            raise ValueError(f"moe_experts: unknown tags {unknown}; use {MODALITIES + ASPECTS}")
        self.tags = list(cfg.moe_experts)
        self.guided, self.balance = cfg.moe_guided, cfg.moe_balance_weight
        self.gate = nn.Linear(width, len(self.tags))
        # a shared projection every input goes through, the routed experts added on top of it (shared
        # experts as in DeepSeekMoE): routed-only experts left queries and products in different experts'
        # spaces, and the product embedding lost its category (prompt accuracy 0.32 vs 0.96 without MoE)
        self.shared = nn.Linear(width, cfg.embed_dim)
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(width, cfg.moe_hidden), nn.GELU(), nn.Linear(cfg.moe_hidden, cfg.embed_dim)
            )
            for _ in self.tags
        )
        # guide[side, expert] = strength where the expert's tag names that modality / aspect
        sides = MODALITIES + ASPECTS
        guide = torch.tensor([[float(t == s) for t in self.tags] for s in sides]) * cfg.moe_guide_strength
        self.register_buffer("guide", guide, persistent=False)

    def forward(
        self, h: torch.Tensor, modality: torch.Tensor, aspect: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.gate(h)
        if self.guided:
            bias = self.guide[modality]
            has_aspect = aspect >= 0
            bias = bias + self.guide[len(MODALITIES) + aspect.clamp(min=0)] * has_aspect.unsqueeze(-1).to(
                bias.dtype
            )
            logits = logits + bias.to(logits.dtype)
        probs = torch.softmax(logits, dim=-1)
        out = torch.stack([e(h) for e in self.experts], dim=1)  # [B, E, D]
        y = self.shared(h) + (probs.unsqueeze(-1) * out).sum(1)
        # Switch-style balance on the batch's mean routing: guided routing is uneven per modality by design,
        # the loss only keeps any expert from going unused overall
        usage = probs.float().mean(0)
        aux = self.balance * len(self.tags) * (usage * usage).sum()
        return y, aux, probs


class MoonEncoder(nn.Module):
    """Backbone + pooling + (guided MoE | linear) head -> L2-normalised product/query embeddings."""

    def __init__(
        self,
        cfg: MoonModelConfig,
        processor: MoonProcessor | None,
        moe: bool | None = None,
        weights: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg, processor, weights)
        config: Any = self.backbone.config
        width = int(config.text_config.hidden_size if hasattr(config, "text_config") else cfg.hidden_size)
        self.use_moe = cfg.moe if moe is None else moe
        self.head: nn.Module = GuidedMoE(width, cfg) if self.use_moe else nn.Linear(width, cfg.embed_dim)

    def forward(
        self, batch: dict[str, torch.Tensor], modality: torch.Tensor, aspect: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        hidden = self.backbone(**batch).last_hidden_state
        last = batch["attention_mask"].sum(1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if aspect is None:
            aspect = torch.full_like(modality, -1)
        if self.use_moe:
            y, aux, probs = self.head(pooled, modality, aspect)
        else:
            y, aux, probs = self.head(pooled), pooled.new_zeros(()), None
        return nn.functional.normalize(y.float(), dim=-1), aux, probs


def modality_ids(kinds: Sequence[str], device: Any = None) -> torch.Tensor:
    return torch.tensor([MODALITIES.index(k) for k in kinds], dtype=torch.long, device=device)


def aspect_ids(kinds: Sequence[str | None], device: Any = None) -> torch.Tensor:
    return torch.tensor([ASPECTS.index(k) if k else -1 for k in kinds], dtype=torch.long, device=device)


# ---------------------------------------------------------------- core-region detection


class CoreRegionDetector(nn.Module):
    """A small CNN: image -> the product's box (x0, y0, x1, y1 as fractions of the image)."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cx, cy, w, h = torch.sigmoid(self.head(self.features(x))).unbind(-1)
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0, 1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise IoU of [N, 4] boxes (x0, y0, x1, y1)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1) + (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area - inter).clamp(min=1e-9)


def to_tensor_images(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 HxWx3 arrays -> a float batch [N, 3, size, size] in [0, 1]."""
    arr = np.stack([np.asarray(_as_pil(im, size)) for im in images]).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def fit_detector(
    images: Sequence[np.ndarray],
    boxes: np.ndarray,
    channels: Sequence[int],
    size: int,
    steps: int,
    lr: float,
    seed: int,
) -> tuple[CoreRegionDetector, list[float]]:
    """Train the box regressor (L1 + 1 - IoU) on images with known boxes; returns it and its loss curve."""
    torch.manual_seed(seed)
    x = to_tensor_images(images, size)
    y = torch.as_tensor(boxes, dtype=torch.float32)
    det = CoreRegionDetector(channels)
    det(x[:2])  # materialise the lazy layer before the optimiser sees the parameters
    opt = torch.optim.AdamW(det.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    curve = []
    det.train()
    for _ in range(steps):
        idx = torch.as_tensor(rng.choice(len(x), size=min(32, len(x)), replace=False))
        pred = det(x[idx])
        loss = (pred - y[idx]).abs().sum(-1).mean() + (1 - box_iou(pred, y[idx])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    return det.eval(), curve


@torch.inference_mode()
def predict_boxes(
    det: CoreRegionDetector, images: Sequence[np.ndarray], size: int, batch: int = 256
) -> np.ndarray:
    det.eval()
    out = [det(to_tensor_images(images[i : i + batch], size)).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 4), np.float32)


def crop(image: np.ndarray, box: Sequence[float], margin: float, size: int) -> np.ndarray:
    """The box grown by `margin` of its size on each side, cut out and resized to size x size."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    left, top = max(0, int((x0 - mx) * w)), max(0, int((y0 - my) * h))
    right, bottom = min(w, int(np.ceil((x1 + mx) * w))), min(h, int(np.ceil((y1 + my) * h)))
    if right - left < 2 or bottom - top < 2:  # a degenerate prediction: keep the whole image
        left, top, right, bottom = 0, 0, w, h
    region = Image.fromarray(image).crop((left, top, right, bottom))
    return np.asarray(region.resize((size, size), Image.Resampling.BILINEAR))


def pixel_baseline(images: Sequence[np.ndarray], grid: int = 8) -> np.ndarray:
    """The no-model image baseline: a grid x grid colour thumbnail, centred and L2-normalised."""
    thumbs = np.stack([np.asarray(_as_pil(im, grid), np.float32).reshape(-1) / 255.0 for im in images])
    thumbs -= thumbs.mean(1, keepdims=True)
    return thumbs / np.maximum(np.linalg.norm(thumbs, axis=1, keepdims=True), 1e-9)


@torch.inference_mode()
def embed(
    model: MoonEncoder,
    processor: MoonProcessor,
    texts: Sequence[str | None],
    images: Sequence[np.ndarray | None],
    modality: str,
    aspect: str | None = None,
    batch: int = 64,
) -> np.ndarray:
    """Embeddings [N, D] (float32, unit length) of inputs that share one modality."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch):
        b = processor(texts[i : i + batch], images[i : i + batch])
        n = len(b["input_ids"])
        y, _, _ = model(
            {k: v.to(device) for k, v in b.items()},
            modality_ids([modality] * n, device),
            aspect_ids([aspect] * n, device),
        )
        out.append(y.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.embed_dim), np.float32)


def save_encoder(
    model: MoonEncoder, processor: MoonProcessor, path: str | Path, extra: dict[str, Any] | None = None
) -> None:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    processor.save(out)
    torch.save(model.state_dict(), out / "weights.pt")
    meta = {"config": model.cfg.model_dump(), "moe": model.use_moe, **(extra or {})}
    (out / "moon.json").write_text(json.dumps(meta, indent=2))


def load_encoder(path: str | Path) -> tuple[MoonEncoder, MoonProcessor, dict[str, Any]]:
    src = Path(path)
    meta = json.loads((src / "moon.json").read_text())
    cfg = MoonModelConfig(**meta["config"])
    processor = MoonProcessor.load(src, cfg)
    model = MoonEncoder(cfg, processor, moe=meta["moe"], weights=False)  # the trained weights come next
    model.load_state_dict(torch.load(src / "weights.pt", weights_only=True))
    return model.eval(), processor, meta


def load_detector(path: str | Path) -> CoreRegionDetector:
    saved = torch.load(Path(path), weights_only=False)
    det = CoreRegionDetector(saved["channels"])
    det.head[1] = nn.Linear(saved["state"]["head.1.weight"].shape[1], 64)  # the lazy layer's size, known now
    det.load_state_dict(saved["state"])
    return det.eval()
