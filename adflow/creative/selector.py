"""The Creative4U selector: a Qwen2-VL-family MLLM that reads two creatives and a user, reasons, then answers.

- Backbone: transformers' `Qwen2VLForConditionalGeneration` (or Qwen2.5-VL) built by the same code as MOON's
  (`adflow.models.moon.backbone_config`): the tiny preset builds it from sizes with random weights and a
  byte-level BPE trained on the world's prompts and rationales; `full` loads a pretrained checkpoint, with its
  tokenizer, image processor and chat template, from `creative_model.backbone_path`.
- `SelectorProcessor`: a real `Qwen2VLProcessor` (TRL's SFT collator and GRPO generation call it with
  conversations and images) without the video processor, which needs torchvision (FIELD-NOTES).
- The answer tags are plain text; `check_tags_are_text` guards it (adflow/creative/rewards.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import Qwen2VLProcessor

from adflow.config import CreativeModelConfig
from adflow.creative.rewards import check_tags_are_text, parse
from adflow.models.moon import (
    VISION,
    backbone_config,
    image_processor,
    pack_vision_attention,
    train_tokenizer,
)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Phrase tokens of at most this many characters: a rationale is ~45 tokens (not ~110 word pieces, nor a
# handful of whole-sentence tokens that would bake each verdict into a memorised phrase).
PHRASE_CHARS = 12
# Qwen's chat layout with the image placeholder the processor expands; the tiny tokenizer holds these tokens
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- else -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


class SelectorProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor with images and text only: its video processor needs torchvision."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any
    ):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)
        # the ids a backbone config reads (adflow.models.moon.VisionTokens)
        ids = tokenizer.convert_tokens_to_ids
        self.tok = tokenizer
        self.vision_start, self.vision_end, self.image_pad, self.video_pad = (ids(t) for t in VISION)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    @classmethod
    def build(cls, cfg: CreativeModelConfig, corpus: Sequence[str]) -> SelectorProcessor:
        if cfg.backbone_path:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(cfg.backbone_path)
            return cls(image_processor(cfg), tok, chat_template=tok.chat_template or CHAT_TEMPLATE)
        tok = train_tokenizer(
            corpus,
            cfg.vocab_size,
            lowercase=False,
            phrases=True,
            extra_special=(IM_START, IM_END),
            eos=IM_END,
            max_token_length=PHRASE_CHARS,
        )
        return cls(image_processor(cfg), tok, chat_template=CHAT_TEMPLATE)

    def save(self, path: str | Path) -> None:
        # apart, as MOON's: loading a whole processor would reach for the fast (torchvision) image processor
        out = Path(path)
        self.tokenizer.save_pretrained(out / "tokenizer")
        self.image_processor.save_pretrained(out / "image_processor")
        template = self.chat_template if isinstance(self.chat_template, str) else CHAT_TEMPLATE
        (out / "chat_template.jinja").write_text(template)

    @classmethod
    def load(cls, path: str | Path) -> SelectorProcessor:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

        src = Path(path)
        return cls(
            Qwen2VLImageProcessorPil.from_pretrained(src / "image_processor"),
            AutoTokenizer.from_pretrained(src / "tokenizer"),
            chat_template=(src / "chat_template.jinja").read_text(),
        )


def build_selector(cfg: CreativeModelConfig, processor: SelectorProcessor) -> Any:
    """The generative selector: random init from the preset's sizes, or the pretrained checkpoint."""
    if cfg.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as Model
    else:
        from transformers import Qwen2VLForConditionalGeneration as Model  # type: ignore[assignment]
    check_tags_are_text(processor.tokenizer)
    if cfg.backbone_path:
        model = Model.from_pretrained(cfg.backbone_path)
    else:
        model = Model(backbone_config(cfg, processor))
    model.generation_config.eos_token_id = processor.eos
    model.generation_config.pad_token_id = processor.pad
    model.generation_config.bos_token_id = None
    return pack_vision_attention(model)


def load_model(path: str | Path) -> Any:
    """A saved selector (transformers' directory), its vision tower on packed attention (not saved with it)."""
    from transformers import AutoModelForImageTextToText

    return pack_vision_attention(AutoModelForImageTextToText.from_pretrained(path))


# ---------------------------------------------------------------- perception warm-up (tiny only)


def warm_up_vision(
    model: Any,
    processor: SelectorProcessor,
    images: Sequence[Image.Image],
    factors: np.ndarray,
    themes: np.ndarray,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
) -> list[float]:
    """Teach a from-scratch vision tower to see what the protocol asks about, before CoT-SFT.

    A pretrained MLLM (the `full` preset) already perceives size, clutter, text contrast and colour; a tiny
    one built from random weights does not, and learning it through the answer tokens alone takes many
    epochs (measured: 8 SFT epochs learn the colour theme, but not prominence, clutter or legibility). So the
    tower and its merger are first fitted on single creatives to their design factors (the creatives table's
    annotations: `factors` n x 3 in [0, 1], `themes` n class ids), through a throw-away head on the mean of
    each image's tokens. Returns the loss per step.
    """
    gen = torch.Generator().manual_seed(seed)
    width = model.config.text_config.hidden_size
    n_themes = int(themes.max()) + 1
    head = torch.nn.Linear(width, factors.shape[1] + n_themes)
    params = [*model.model.visual.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    pixels = processor.image_processor(images=list(images), return_tensors="pt")
    per_image = int(pixels["image_grid_thw"][0].prod())
    pv = pixels["pixel_values"].view(len(images), per_image, -1)
    grid = pixels["image_grid_thw"]
    y_f = torch.as_tensor(factors, dtype=torch.float32)
    y_t = torch.as_tensor(themes, dtype=torch.long)
    model.train()
    curve = []
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        feats = model.model.get_image_features(pv[idx].flatten(0, 1), grid[idx]).pooler_output
        pooled = torch.stack([f.mean(0) for f in feats])
        out = head(pooled)
        loss = torch.nn.functional.mse_loss(torch.sigmoid(out[:, : factors.shape[1]]), y_f[idx]) * 10
        loss = loss + torch.nn.functional.cross_entropy(out[:, factors.shape[1] :], y_t[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.detach().item())
    return curve


# ---------------------------------------------------------------- data in TRL's conversational format


def user_message(prompt_text: str) -> list[dict[str, Any]]:
    """The prompt string with `<image>` slots -> one user message of text and image parts (images filled later)."""
    parts: list[dict[str, Any]] = []
    for k, piece in enumerate(prompt_text.split("<image>")):
        if k:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return [{"role": "user", "content": parts}]


def load_image(path: str, size: int) -> Image.Image:
    img = Image.open(path).convert("RGB")
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR)


def to_records(examples: pd.DataFrame, image_size: int, with_completion: bool = True) -> list[dict[str, Any]]:
    """pair_examples rows -> TRL prompt-completion records (conversational, two images each)."""
    cache: dict[str, Image.Image] = {}

    def img(p: str) -> Image.Image:
        if p not in cache:
            cache[p] = load_image(p, image_size)
        return cache[p]

    out = []
    for r in examples.itertuples(index=False):
        rec: dict[str, Any] = {
            "prompt": user_message(r.prompt),
            "images": [img(p) for p in r.images],
            "label": r.label,
            "deciding_factor": r.deciding_factor,
            "pair_key": int(r.pair_key),
            "swapped": bool(r.swapped),
            "gold": r.completion,  # the gold answer: TRL withholds `completion` from reward functions
        }
        if with_completion:
            rec["completion"] = [{"role": "assistant", "content": [{"type": "text", "text": r.completion}]}]
        out.append(rec)
    return out


def corpus(examples: pd.DataFrame) -> list[str]:
    """What the tiny tokenizer is trained on: the text it will tokenize, as the chat template renders it
    between special tokens: the user's turn (role word and prompt, images cut out), the assistant's role word
    (else "assistant" costs 8 tokens in every example), the target answers."""
    texts = ["user\n" + p.replace("<image>", " ") for p in examples["prompt"].unique()]
    return [*texts, *["assistant\n"] * len(examples), *examples["completion"].tolist()]


# ---------------------------------------------------------------- generation


def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


@torch.no_grad()
def generate(
    model: Any,
    processor: SelectorProcessor,
    prompts: Sequence[list[dict[str, Any]]],
    images: Sequence[Sequence[Image.Image]],
    max_new_tokens: int,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> list[str]:
    """Answers to conversational prompts, greedy by default (evaluation, the tournament, serving)."""
    from trl.data_utils import prepare_multimodal_messages

    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for sl in _batches(len(prompts), batch_size):
        convs = [
            prepare_multimodal_messages(p, images=list(im))
            for p, im in zip(prompts[sl], images[sl], strict=True)
        ]
        text = processor.apply_chat_template(convs, add_generation_prompt=True, tokenize=False)
        batch = processor(
            text=text,
            images=[list(im) for im in images[sl]],
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=False,
        ).to(device)
        ids = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=None,
            top_k=None,
        )
        new = ids[:, batch["input_ids"].shape[1] :]
        out.extend(processor.batch_decode(new, skip_special_tokens=True))
    return out


def verdicts(completions: Sequence[str]) -> list[str | None]:
    return [v.answer if (v := parse(c)) else None for c in completions]


def save_selector(model: Any, processor: SelectorProcessor, path: str | Path, meta: dict[str, Any]) -> None:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "model")
    processor.save(out)
    (out / "selector.json").write_text(json.dumps(meta, indent=2, default=str))


def load_selector(path: str | Path) -> tuple[Any, SelectorProcessor, dict[str, Any]]:
    src = Path(path)
    model = load_model(src / "model")
    return model.eval(), SelectorProcessor.load(src), json.loads((src / "selector.json").read_text())


def random_verdicts(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(["A", "B"]), size=n)
