"""Creative4U CoT-SFT step benchmark, as ratios against baselines measured in the same process.

    make bench            # tiny world; writes bench/results/creative.json and bench/results/creative.md

The stage's time is mostly SFT (issue 5, acceptance 4: the stage should add ~2 minutes to make run). Measured
here on the tiny preset's selector, prepared as the stage prepares it (tokenizer, model, vision warm-up), one
process with the stage's thread count, steps of the preset's batch:
1. TRL's SFTTrainer with its own loss (`creative_train.sft_loss: fused`, the full preset's: the LM head over
   every position on CPU) against the same trainer with `completion` (the tiny preset's: the head on the
   labelled positions only, components/training/creative/core.py `completion_loss`): what the option buys.
2. `completion` with `creative_train.sft_collate_cache` (the tiny preset's; `CollationCache`): each example
   collated once, later epochs pad the cached pieces. Timed once the cache holds every example, as in SFT's
   epochs after the first (the first epoch collates as TRL does).
3. All against a plain loop over the same records and TRL's own collator (forward with the model's loss,
   backward, AdamW): what the trainer's loop costs above the arithmetic. The collator's own time per batch is
   reported apart: the processor and the chat template run on every batch.
Runs alternate (fused, completion, cached, plain, then again) so that a drift in this machine's speed, which moves
single runs by up to ~1.5x here, falls on every variant alike; medians over the rounds are reported.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from adflow.config import load_settings
from adflow.data.world import generate
from components.training.creative.core import SFT_SPLITS, CollationCache, _records, completion_loss, prepare

OUT = Path(__file__).parent / "results"
WARM, STEPS, ROUNDS = 10, 60, 2  # steps not timed (allocator, first batches), timed steps, alternations


def _trainer(prepared: Path, records: Any, settings: Any, max_steps: int, loss: str) -> Any:
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from adflow.creative.selector import SelectorProcessor, load_model

    t = settings.creative_train

    class Clock(TrainerCallback):  # wall time at each step's end: the timed window skips the warm-up steps
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.ends.append(time.perf_counter())

    clock = Clock()
    trainer = SFTTrainer(
        model=load_model(prepared / "init"),
        args=SFTConfig(
            output_dir=str(prepared / "bench_trainer"),
            max_steps=max_steps,
            per_device_train_batch_size=t.sft_batch_size,
            learning_rate=t.sft_lr,
            max_length=None,
            use_cpu=True,
            bf16=False,  # SFTConfig defaults to bf16, a CPU autocast that is slower here (docs/field-notes.md)
            gradient_checkpointing=False,
            remove_unused_columns=False,
            report_to=[],
            disable_tqdm=True,
            save_strategy="no",
            logging_steps=10,
            seed=t.seed,
        ),
        train_dataset=records,
        processing_class=SelectorProcessor.load(prepared / "processor"),
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)  # the bench prints its own table, not a dict every 10 steps
    if loss == "completion":
        trainer.compute_loss = types.MethodType(completion_loss, trainer)  # as the stage binds it
    return trainer, clock


def trl_step_s(prepared: Path, records: Any, settings: Any, loss: str, cache: bool = False) -> float:
    trainer, clock = _trainer(prepared, records, settings, WARM + STEPS, loss)
    if cache:  # as the stage installs it, then filled: the steps of SFT's later epochs
        c = CollationCache.install(trainer)
        bs = settings.creative_train.sft_batch_size
        for start in range(0, len(records), bs):
            c([{"row": r} for r in range(start, min(start + bs, len(records)))])
    trainer.train()
    return (clock.ends[-1] - clock.ends[WARM - 1]) / STEPS


def plain_step_s(prepared: Path, records: Any, settings: Any) -> tuple[float, float]:
    """A bare loop over TRL's collator: (seconds a step, of which the collator's)."""
    trainer, _ = _trainer(prepared, records, settings, 1, "fused")
    model, collate = trainer.model, trainer.data_collator
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.creative_train.sft_lr)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
    bs = settings.creative_train.sft_batch_size
    t_collate, start = 0.0, 0.0
    for step in range(WARM + STEPS):
        if step == WARM:
            t_collate, start = 0.0, time.perf_counter()
        t = time.perf_counter()
        idx = order[(step * bs) % len(order) :][:bs] or order[:bs]
        batch = collate([records[i] for i in idx])
        t_collate += time.perf_counter() - t
        # the collator's labels already mask the prompt; the model's own loss reads them
        inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - start) / STEPS, t_collate / STEPS


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        s = load_settings("tiny", "local", [f"placement.workspace={tmp / 'ws'}"]).resolved()
        torch.set_num_threads(s.creative_train.threads)
        generate(s.world, tmp / "world")
        t0 = time.perf_counter()
        info = prepare(s, tmp / "world", tmp / "prepared")
        print(
            f"prepared in {time.perf_counter() - t0:.0f}s ({info['pairs_train']} training pairs)", flush=True
        )
        examples = pd.read_parquet(tmp / "prepared" / "examples.parquet")
        records = _records(examples[examples["split"].isin(SFT_SPLITS)], s.creative_model.image_size, None)
        runs: dict[str, list[float]] = {
            "fused": [],
            "completion": [],
            "cached": [],
            "plain": [],
            "collate": [],
        }
        for r in range(ROUNDS):
            for loss in ("fused", "completion"):
                runs[loss].append(trl_step_s(tmp / "prepared", records, s, loss))
            runs["cached"].append(trl_step_s(tmp / "prepared", records, s, "completion", cache=True))
            plain, collate = plain_step_s(tmp / "prepared", records, s)
            runs["plain"].append(plain)
            runs["collate"].append(collate)
            print(
                f"round {r + 1}/{ROUNDS}: "
                + ", ".join(f"{k} {1000 * v[-1]:.0f} ms/step" for k, v in runs.items()),
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in runs.items()}
    bs = s.creative_train.sft_batch_size
    steps_epoch = len(records) / bs
    steps_total = s.creative_train.sft_epochs * steps_epoch
    res = {
        "batch_size": bs,
        "threads": s.creative_train.threads,
        "timed_steps": STEPS,
        "rounds": ROUNDS,
        **{f"{k}_ms_per_step": 1000 * v for k, v in med.items()},
        **{f"{k}_examples_per_s": bs / med[k] for k in ("fused", "completion", "cached", "plain")},
        "completion_vs_fused_speedup": med["fused"] / med["completion"],
        "cached_vs_completion_speedup": med["completion"] / med["cached"],
        "fused_vs_plain_ratio": med["fused"] / med["plain"],
        "completion_vs_plain_ratio": med["completion"] / med["plain"],
        "collate_share_of_plain": med["collate"] / med["plain"],
        # the preset's SFT (epochs x records) at each measured rate: what the stage's SFT would take
        **{f"sft_projected_s_{k}": steps_total * med[k] for k in ("fused", "completion", "plain")},
        # the cache's first epoch collates as TRL does (measured: the same step time as without it)
        "sft_projected_s_cached": steps_epoch * med["completion"]
        + (steps_total - steps_epoch) * med["cached"],
        "all_runs_ms": {k: [1000 * x for x in v] for k, v in runs.items()},
    }
    (OUT / "creative.json").write_text(json.dumps(res, indent=2))
    md = [
        f"| Creative4U CoT-SFT step (batch {bs}, {res['threads']} threads) | ms/step | examples/s | ratio |"
        " preset's SFT |",
        "|---|---|---|---|---|",
        f"| TRL SFTTrainer, fused loss (TRL's own; full preset) | {res['fused_ms_per_step']:.0f} | "
        f"{res['fused_examples_per_s']:.0f} | {res['fused_vs_plain_ratio']:.2f} x plain | "
        f"{res['sft_projected_s_fused']:.0f} s |",
        f"| TRL SFTTrainer, completion loss (the tiny preset's loss) | {res['completion_ms_per_step']:.0f} | "
        f"{res['completion_examples_per_s']:.0f} | {res['completion_vs_plain_ratio']:.2f} x plain; "
        f"{res['completion_vs_fused_speedup']:.2f}x faster than fused | {res['sft_projected_s_completion']:.0f} s |",
        f"| TRL SFTTrainer, completion loss, collation cache (tiny preset; epochs after the first) | "
        f"{res['cached_ms_per_step']:.0f} | {res['cached_examples_per_s']:.0f} | "
        f"{res['cached_ms_per_step'] / res['plain_ms_per_step']:.2f} x plain; "
        f"{res['cached_vs_completion_speedup']:.2f}x faster than completion | {res['sft_projected_s_cached']:.0f} s |",
        f"| plain loop, TRL's collator (baseline) | {res['plain_ms_per_step']:.0f} | "
        f"{res['plain_examples_per_s']:.0f} | 1.00 | {res['sft_projected_s_plain']:.0f} s |",
        f"| of which the collator | {res['collate_ms_per_step']:.0f} | - | "
        f"{res['collate_share_of_plain']:.0%} of plain | - |",
    ]
    (OUT / "creative.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
