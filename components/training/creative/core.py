"""Creative4U stage: CoT-SFT then GRPO of the creative selector, evaluation, tournament, distilled fast scorer.

Locally:   the `creative` step of ads_full (make run): TRL's SFTTrainer then GRPOTrainer inside one Ray Train
           run (`creative_train.num_workers` workers; the tiny preset uses one: on two cores, two DDP workers
           were slower, 80 vs 107 examples/s).
Cluster:   adflow run --preset full --placement cluster: GPU workers, the preset's DeepSpeed config handed to
           both trainers, `creative_model.backbone_path` naming a pretrained Qwen2.5-VL checkpoint.

Steps: prepare (pairs in both orders, the tokenizer, the model; on the tiny preset the vision tower's
perception warm-up) -> fit (SFT -> save -> GRPO from the saved SFT weights -> save) -> evaluate on held-out
pairs (random, SFT-only, SFT+GRPO: accuracy, swap consistency, format validity, deciding factor named) ->
tournament over each held-out (user, item)'s creatives vs the ground-truth best -> fast scorer distilled from
the selector's verdicts (agreement, latency) -> report.
"""

from __future__ import annotations

import json
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow import train as T
from adflow.config import Settings
from adflow.metrics import clustered_mean
from adflow.progress import follow, log
from adflow.workspace import publish, shared, shared_input

STAGE = "creative"
HELD_OUT = ("test", "test_unseen")
# the tournament table: one row per held-out (user, item); `best` is missing where no ground truth exists
TOUR_COLUMNS = ("user_id", "item_id", "segment", "split", "n", "chosen", "best", "seconds")
SFT_SPLITS = ("train", "describe")  # CoT-SFT: the training pairs and the single creatives described


class CreativeUnavailable(RuntimeError):
    """The data set has no labelled creative pairs: the run goes on without the selector."""


@dataclass
class CreativeResult:
    out_dir: str
    selector: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------- preparation (driver)


def prepare(settings: Settings, dataset: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Examples in both orders, the processor, the initial model (perception warm-up on the tiny preset)."""
    import torch

    from adflow.contract import read_table
    from adflow.creative import selector as S
    from adflow.creative.data import describe_examples, pair_examples
    from adflow.data.world import THEME_NAMES

    m, t = settings.creative_model, settings.creative_train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (Path(dataset) / "creative_pairs.parquet").exists():
        raise CreativeUnavailable("the data set has no creative_pairs table")
    examples = pair_examples(dataset, ("train", *HELD_OUT), m.instructions)
    train = examples[examples["split"] == "train"]
    if train.empty or examples["split"].isin(HELD_OUT).sum() == 0:
        raise CreativeUnavailable("the creative pairs need both training and held-out pairs")
    # held-out products stay unseen: neither the vision warm-up nor the described creatives show them
    unseen = set(examples.loc[examples["split"] == "test_unseen", "item_id"])
    if t.describe_creatives:
        examples = pd.concat(
            [examples, describe_examples(dataset, unseen, m.instructions)], ignore_index=True
        )
    examples.to_parquet(out / "examples.parquet", index=False)
    processor = S.SelectorProcessor.build(m, S.corpus(examples[examples["split"].isin(SFT_SPLITS)]))
    processor.save(out / "processor")
    torch.manual_seed(t.seed)
    model = S.build_selector(m, processor)
    info: dict[str, Any] = {
        "pairs_train": int(train["pair_key"].nunique()),
        "pairs_held_out": int(examples.loc[examples["split"].isin(HELD_OUT), "pair_key"].nunique()),
        "creatives_described": int((examples["split"] == "describe").sum()),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if t.vision_warmup_steps > 0 and not m.backbone_path:
        creatives = read_table(Path(dataset), "creatives")
        creatives = creatives[~creatives["item_id"].isin(unseen)]
        images = [S.load_image(str(Path(dataset) / p), m.image_size) for p in creatives["image_path"]]
        t0 = time.perf_counter()
        curve = S.warm_up_vision(
            model,
            processor,
            images,
            creatives[["prominence", "clutter", "legibility"]].to_numpy(np.float32),
            creatives["theme"].map({n: i for i, n in enumerate(THEME_NAMES)}).to_numpy(),
            t.vision_warmup_steps,
            t.vision_warmup_lr,
            t.seed,
        )
        info |= {
            "warmup_s": time.perf_counter() - t0,
            "warmup_loss_first": float(np.mean(curve[:10])),
            "warmup_loss_last": float(np.mean(curve[-20:])),
        }
    model.save_pretrained(out / "init")
    (out / "prepared.json").write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------- training (Ray workers)


def _records(examples: pd.DataFrame, image_size: int, order_seed: int | None) -> Any:
    """A datasets.Dataset of TRL records. With `order_seed`, pairs are shuffled but each pair's two orders
    stay side by side (GRPO then sees both in one batch, which its consistency reward needs)."""
    from datasets import Dataset

    from adflow.creative.selector import to_records

    if order_seed is not None:
        keys = np.random.default_rng(order_seed).permutation(examples["pair_key"].unique())
        rank = pd.Series(np.arange(len(keys)), index=keys)
        examples = examples.assign(_o=examples["pair_key"].map(rank)).sort_values(["_o", "swapped"])
    return Dataset.from_list(to_records(examples, image_size))


# what CollationCache batches: sequences and their padding (None: the tokenizer's pad id), and patches, which are
# concatenated. Anything else stops the batch: an unknown key from another TRL or processor would otherwise be
# dropped or mispadded without a word
SEQ_PAD: dict[str, int | None] = {
    "input_ids": None,
    "attention_mask": 0,
    "labels": -100,
    "mm_token_type_ids": 0,
    "token_type_ids": 0,
}
PATCH_KEYS = ("pixel_values", "image_grid_thw")


class CollationCache:
    """TRL's vision collator run once per example; every later batch of it is padded from the cached pieces
    (`creative_train.sft_collate_cache`).

    The collator renders the chat template, tokenizes, and turns each example's images into patches on every
    batch of every epoch, ~17 ms of a ~80 ms tiny SFT step, for the same result each epoch. With the cache the
    trainer's data set is only row numbers (the records are read once, on a row's first batch), and a batch
    is the pieces' sequences right-padded as TRL pads them (its `flush_left`) and their patches concatenated:
    the same tensors as TRL's collator on the same examples (tests/test_creative.py), so the same training.
    It holds every example's patches in memory: ~50 MB per thousand two-image examples at the tiny 32 px, not
    something for a data set of full-size images (off by default and in the full preset)."""

    def __init__(self, collate: Any, records: Any, pad_token_id: int) -> None:
        self.collate, self.records, self.pad_token_id = collate, records, pad_token_id
        self.pieces: dict[int, dict[str, Any]] = {}

    @classmethod
    def install(cls, trainer: Any) -> CollationCache:
        """Put the cache under a built SFTTrainer: TRL has set itself up on the records (vision data, its own
        collator); from here it iterates row numbers of the same length, so its sampler draws the same
        batches, each example collated once by TRL's collator and padded from the cache after that."""
        cache = cls(
            trainer.data_collator, trainer.train_dataset, trainer.processing_class.tokenizer.pad_token_id
        )
        trainer.data_collator, trainer.train_dataset = cache, cache.rows()
        return cache

    def rows(self) -> Any:
        """The data set the trainer iterates: one row number per record, in the records' order."""
        from datasets import Dataset

        return Dataset.from_dict({"row": list(range(len(self.records)))})

    def _fill(self, rows: list[int]) -> None:
        """Collate the rows not seen yet in one call (per example, the processor costs ~3x more) and cut the
        batch into per-row pieces: a row's tokens are a prefix of its line (TRL flushes them left), its
        patches the next `images` grids' worth in order."""
        records = [self.records[r] for r in rows]  # fresh records: TRL's collator edits them in place
        counts = [len(r.get("images") or []) for r in records]
        out = dict(self.collate(records))
        if unknown := set(out) - set(SEQ_PAD) - set(PATCH_KEYS):
            raise ValueError(f"CollationCache cannot batch the collator's {sorted(unknown)}")
        lengths = out["attention_mask"].sum(1).tolist()
        grids = out.get("image_grid_thw")
        patches = grids.prod(1).tolist() if grids is not None else []
        image = patch = 0
        for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            piece = {k: v[i : i + 1, : int(n)] for k, v in out.items() if k in SEQ_PAD}
            if grids is not None:
                k = int(sum(patches[image : image + counts[i]]))
                piece["image_grid_thw"] = grids[image : image + counts[i]]
                piece["pixel_values"] = out["pixel_values"][patch : patch + k]
                image, patch = image + counts[i], patch + k
            self.pieces[row] = piece
        if grids is not None and image != len(grids):  # records whose images are not under "images"
            raise ValueError(f"CollationCache: {len(grids)} images collated, {image} found in the records")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [int(f["row"]) for f in features]
        if missing := list(dict.fromkeys(r for r in rows if r not in self.pieces)):
            self._fill(missing)
        pieces = [self.pieces[r] for r in rows]
        length = max(p["input_ids"].shape[1] for p in pieces)
        batch: dict[str, Any] = {}
        for key in pieces[0]:
            if key in PATCH_KEYS:
                batch[key] = torch.cat([p[key] for p in pieces])
                continue
            pad = SEQ_PAD[key]
            fill = self.pad_token_id if pad is None else pad
            padded = torch.full((len(pieces), length), fill, dtype=pieces[0][key].dtype)
            for i, p in enumerate(pieces):
                padded[i, : p[key].shape[1]] = p[key][0]
            batch[key] = padded
        return batch


def _history_callback(path: str, phase: str, rank: int) -> Any:
    from transformers import TrainerCallback

    class History(TrainerCallback):  # one JSON line per logging step (rank 0); the driver prints them
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            if rank != 0 or not logs:
                return
            row = {"phase": phase, "step": int(state.global_step), "max_steps": int(state.max_steps), **logs}
            with open(path, "a") as f:
                f.write(json.dumps(row, default=float) + "\n")

    return History()


def _progress_line(row: dict[str, Any]) -> str | None:
    """A history line as progress: phase, step of max, loss (SFT) or mean reward and accuracy (GRPO)."""
    if "train_runtime" in row:
        return f"{row['phase']} done in {row['train_runtime']:.0f}s"
    where = f"{row['phase']} step {row['step']}/{row.get('max_steps', '?')}"
    if "reward" in row:
        acc = row.get("rewards/accuracy_reward/mean", float("nan"))
        return f"{where}: reward {row['reward']:.3f}, sampled accuracy {acc:.3f}"
    return f"{where}: loss {row['loss']:.3f}" if "loss" in row else None


def completion_loss(
    trainer: Any,
    model: Any,
    inputs: dict[str, Any],
    return_outputs: bool = False,
    num_items_in_batch: Any = None,
) -> Any:
    """SFT's loss with the LM head applied to the completion's positions only (`creative_train.sft_loss:
    completion`), bound over SFTTrainer's `compute_loss`. TRL's fused path runs the head over every position,
    prompt included, on CPU (~72% of the tiny selector's tokens; on Triton GPUs, the labelled positions only),
    and adds its own per-token bookkeeping; this one takes the final hidden states from the (possibly DDP- or
    DeepSpeed-wrapped) model's own forward, asking it for the logits of one position only, and projects just
    the positions that carry a label. The same loss and gradients per batch, scaled as TRL scales them
    (tests/test_creative.py; checked along a whole SFT run too), with TRL's entropy and top-1 token accuracy
    logged over the completion, and `completion_tokens`, the labelled tokens a step. Measured in the tiny
    stage: SFT 95-98 s against fused's 114-125 s."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    fwd = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask")}
    inner = trainer.accelerator.unwrap_model(model)
    # the decoder's final norm gives the last hidden state, caught by a hook so that the forward still runs
    # through the DDP/DeepSpeed wrapper (and its autocast, when the trainer runs in bf16)
    caught: dict[str, Any] = {}
    hook = inner.get_decoder().norm.register_forward_hook(lambda _m, _a, out: caught.update(h=out))
    try:
        model(**fwd, use_cache=False, logits_to_keep=1)  # the model's own head runs on one position only
    finally:
        hook.remove()
    target = labels[:, 1:]
    keep = target != -100
    logits = inner.get_output_embeddings()(caught["h"][:, :-1][keep]).float()  # the head, as TRL finds it
    token_loss = F.cross_entropy(logits, target[keep], reduction="none")
    count = keep.sum() if num_items_in_batch is None else num_items_in_batch
    loss = token_loss.sum() / torch.as_tensor(count).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes  # DDP averages the gradients; the count is global
    with torch.no_grad():
        logp = logits.log_softmax(-1)
        mode = "train" if model.training else "eval"
        gather = trainer.accelerator.gather_for_metrics
        n = gather(keep.sum()).sum().clamp(min=1)
        trainer._metrics[mode]["entropy"].append((gather(-(logp.exp() * logp).sum()).sum() / n).item())
        right = (logits.argmax(-1) == target[keep]).sum()
        trainer._metrics[mode]["mean_token_accuracy"].append((gather(right).sum() / n).item())
        # the head's rows per step (all ranks): what this path saves against scoring every position
        trainer._metrics[mode]["completion_tokens"].append(n.item())
    return (loss, None) if return_outputs else loss  # no logits are built: there are none to return


def train_loop(config: dict[str, Any]) -> None:
    """CoT-SFT then GRPO with TRL, in one Ray Train worker group (HF Trainer picks up Ray's process group)."""
    import ray.train
    import torch
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    from adflow.config import CreativeModelConfig, CreativeTrainConfig
    from adflow.creative import selector as S
    from adflow.creative.rewards import REWARDS

    torch.set_num_threads(config["threads"])
    m, t = CreativeModelConfig(**config["model"]), CreativeTrainConfig(**config["train"])
    rank = ray.train.get_context().get_world_rank()
    out = Path(config["out_dir"])
    cuda = torch.cuda.is_available()
    common: dict[str, Any] = {
        "use_cpu": not cuda,
        "bf16": bool(((t.deepspeed or {}).get("bf16") or {}).get("enabled")),
        "deepspeed": t.deepspeed,
        "report_to": [],
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_steps": 10,
        "seed": t.seed,
        "gradient_checkpointing": False,
        "remove_unused_columns": False,
    }
    examples = pd.read_parquet(out / "examples.parquet")
    train = examples[examples["split"] == "train"]
    processor = S.SelectorProcessor.load(out / "processor")

    model = S.load_model(out / "init")
    sft = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out / "trainer" / "sft"),
            num_train_epochs=t.sft_epochs,
            per_device_train_batch_size=t.sft_batch_size,
            learning_rate=t.sft_lr,
            lr_scheduler_type="cosine",
            warmup_steps=t.sft_warmup_steps,
            max_length=None,
            **common,
        ),
        # the pairs' rationales, plus single creatives described by the protocol (split "describe")
        train_dataset=_records(examples[examples["split"].isin(SFT_SPLITS)], m.image_size, None),
        processing_class=processor,
        callbacks=[_history_callback(config["history_path"], "sft", rank)],
    )
    if t.sft_loss == "completion":
        sft.compute_loss = types.MethodType(completion_loss, sft)  # type: ignore[method-assign]
    if t.sft_collate_cache:
        CollationCache.install(sft)
    sft.train()
    if rank == 0:
        sft.save_model(str(out / "sft"))
    sft.accelerator.wait_for_everyone()
    if t.grpo_steps == 0:
        return
    # from the saved SFT weights: with beta > 0 TRL rebuilds the reference model from this path (FIELD-NOTES)
    policy = S.load_model(out / "sft")
    weights = dict(t.reward_weights)
    # TRL types reward functions as returning list[float | None]; ours return list[float]
    rewards: list[Any] = [r for r in REWARDS if r.__name__.removesuffix("_reward") in weights]
    grpo = GRPOTrainer(
        model=policy,
        args=GRPOConfig(
            output_dir=str(out / "trainer" / "grpo"),
            max_steps=t.grpo_steps,
            per_device_train_batch_size=t.grpo_prompts_per_step * t.num_generations,
            num_generations=t.num_generations,
            learning_rate=t.grpo_lr,
            beta=t.beta,
            temperature=t.temperature,
            max_completion_length=m.max_new_tokens,
            shuffle_dataset=False,  # the records keep each pair's two orders side by side
            reward_weights=[weights[r.__name__.removesuffix("_reward")] for r in rewards],
            use_vllm=False,
            **common,
        ),
        train_dataset=_records(train, m.image_size, t.seed),
        processing_class=processor,
        reward_funcs=rewards,
        callbacks=[_history_callback(config["history_path"], "grpo", rank)],
    )
    grpo.train()
    if rank == 0:
        grpo.save_model(str(out / "grpo"))
    grpo.accelerator.wait_for_everyone()


def fit(settings: Settings, out_dir: str | Path, history_path: str | Path) -> Any:
    t = settings.creative_train
    config = {
        "model": settings.creative_model.model_dump(),
        "train": t.model_dump(),
        "out_dir": str(Path(out_dir).resolve()),
        "history_path": str(Path(history_path).resolve()),
        "threads": t.threads,
    }
    workers = t.num_workers or settings.placement.num_workers
    placed = settings.model_copy(
        update={"placement": settings.placement.model_copy(update={"num_workers": workers})}
    )
    return T.fit(placed, train_loop, config, Path(out_dir) / "ray", "creative")


# ---------------------------------------------------------------- evaluation (driver)


def judge(
    model: Any,
    processor: Any,
    examples: pd.DataFrame,
    image_size: int,
    max_new: int,
    batch: int,
    sample: bool = False,
) -> pd.DataFrame:
    """Greedy answers to every example, parsed: answer, well-formed, deciding factor named, right."""
    from adflow.creative import selector as S
    from adflow.creative.rewards import names_factor, parse

    recs = S.to_records(examples, image_size, with_completion=False)
    outs = S.generate(
        model, processor, [r["prompt"] for r in recs], [r["images"] for r in recs], max_new, batch, sample
    )
    v = [parse(o) for o in outs]
    return examples.assign(
        output=outs,
        answer=[x.answer if x else None for x in v],
        well_formed=[x is not None for x in v],
        names_factor=[
            x is not None and names_factor(x.think, f)
            for x, f in zip(v, examples["deciding_factor"], strict=True)
        ],
    ).assign(correct=lambda d: d["answer"] == d["label"])


NA = float("nan")  # a measure with nothing to measure: not 0, which reads as "always wrong"


def _mean(x: pd.Series) -> float:
    return float(x.mean()) if len(x) else NA  # an empty split: NaN (MLflow keeps it), "n/a" in the report


def na(v: float, spec: str = ".3f") -> str:
    """A metric in the report's text: "n/a" where nothing was there to measure (NaN)."""
    return "n/a" if np.isnan(v) else format(v, spec)


def scores(judged: pd.DataFrame) -> dict[str, float]:
    """Accuracy (all held-out / seen products / unseen products), swap consistency, format, factor named."""
    # a pair is consistent when its two orders got mirrored verdicts; a missing or malformed one is not
    by_pair = judged.groupby("pair_key")
    consistent = by_pair.apply(lambda g: len(g) == 2 and set(g["answer"]) == {"A", "B"}, include_groups=False)
    out = {
        "accuracy": float(judged["correct"].mean()),
        "accuracy_seen_products": _mean(judged.loc[judged["split"] == "test", "correct"]),
        "accuracy_unseen_products": _mean(judged.loc[judged["split"] == "test_unseen", "correct"]),
        "swap_consistency": float(consistent.mean()),
        "format_validity": float(judged["well_formed"].mean()),
        "factor_named": float(judged["names_factor"].mean()),
        # among right verdicts: did the reasoning name what actually decided the ground truth?
        "factor_named_when_right": _mean(judged.loc[judged["correct"], "names_factor"]),
    }
    out |= fact_scores(judged)
    # products, not answers, are the independent draws: both orders of a pair and every pair of one product
    # are right or wrong together (the textbook p(1-p)/n interval was too narrow)
    out["accuracy_ci95"] = clustered_mean(judged["correct"].to_numpy(float), judged["item_id"].to_numpy())[
        "ci95"
    ]
    return out


def paired_gain(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, float]:
    """Accuracy of `after` less `before` on the same held-out answers, with a 95% half-width clustered by
    product: far tighter than two separate intervals, since both are scored on the same pairs."""
    keys = [k for k in ("pair_key", "swapped") if k in before and k in after]
    if len(before) != len(after) or not before[keys].reset_index(drop=True).equals(
        after[keys].reset_index(drop=True)
    ):
        raise ValueError("paired_gain needs both judged on the same held-out examples in the same order")
    d = after["correct"].to_numpy(float) - before["correct"].to_numpy(float)
    r = clustered_mean(d, before["item_id"].to_numpy())
    # how many answers turned right / wrong: a gain of 0 can hide both
    return {
        "gain": r["mean"],
        "gain_ci95": r["ci95"],
        "fixed": float((d > 0).sum()),
        "broken": float((d < 0).sum()),
    }


VARIANT_NAMES = {"sft": "SFT", "sft_grpo": "SFT+GRPO"}


def choose_served(table: dict[str, dict[str, float]], floor: float) -> tuple[str | None, str]:
    """Which trained variant serving gets, and why: the most accurate on the held-out pairs among those whose
    accuracy less its 95% interval reaches `floor` (a tie goes to SFT+GRPO, the later stage); None when
    neither does, so a selector no better than a coin never explains a choice to anyone."""
    trained = [n for n in ("sft_grpo", "sft") if n in table]

    def figure(n: str) -> str:
        return f"{table[n]['accuracy']:.3f} ± {table[n]['accuracy_ci95']:.3f}"

    passing = [n for n in trained if table[n]["accuracy"] - table[n]["accuracy_ci95"] >= floor]
    if not passing:
        return None, (
            f"no selector is served: held-out accuracy {', '.join(f'{VARIANT_NAMES[n]} {figure(n)}' for n in trained)}"
            f" does not clear creative_train.serve_min_accuracy {floor:.2f}; /explain stays with the fast scorer"
        )
    served = max(passing, key=lambda n: table[n]["accuracy"])  # max keeps the first of equals: SFT+GRPO
    return served, f"{VARIANT_NAMES[served]} is served (held-out accuracy {figure(served)})"


def fact_scores(judged: pd.DataFrame) -> dict[str, float]:
    """How often the reasoning describes each creative's design factors as the gold rationale does
    (`facts_<factor>`, over both creatives of every held-out answer), and `facts_all`: every fact right.

    The verdict can only be as good as what the selector sees: this says which factor it misreads."""
    from adflow.creative.rewards import facts_right
    from adflow.data.world import LEVELS

    right: dict[str, list[bool]] = {f: [] for f in [*LEVELS, "theme"]}
    whole = []
    for output, gold in zip(judged["output"], judged["completion"], strict=True):
        facts = facts_right(output, gold)
        for f, hit in facts:
            right[f].append(hit)
        whole.append(bool(facts) and all(hit for _, hit in facts))
    # a factor no gold rationale states (a data set's own rationales) is not measured: NaN
    out = {f"facts_{f}": float(np.mean(v)) if v else NA for f, v in right.items()}
    out["facts_all"] = float(np.mean(whole)) if whole else NA
    return out


def random_baseline(held: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A coin per example (no reasoning): the chance line every selector is read against."""
    from adflow.creative.selector import random_verdicts

    answers = random_verdicts(len(held), seed)
    return held.assign(answer=answers, well_formed=True, names_factor=False, output="").assign(
        correct=lambda d: d["answer"] == d["label"]
    )


def truth_best(creatives: pd.DataFrame, segment: str) -> int | None:
    """The ground truth's best of an item's creatives for a segment (the synthetic world's appeal), or None
    where it has none: a segment the world has no weights for, or a creative without its design factors (a
    data set labelled by people)."""
    from adflow.contract import FACTORS as DESIGN_FACTORS
    from adflow.data.world import SEGMENT_WEIGHTS, appeal

    if segment not in SEGMENT_WEIGHTS or not set(DESIGN_FACTORS) <= set(creatives.columns):
        return None
    if creatives[list(DESIGN_FACTORS)].isna().any(axis=None):
        return None
    prominence, clutter, legibility, theme = (creatives[f].to_numpy() for f in DESIGN_FACTORS)
    app = appeal(prominence, clutter, legibility, theme, segment)
    return int(creatives["creative_id"].iloc[int(np.argmax(app))])


def tournaments(
    settings: Settings, dataset: str | Path, model: Any, processor: Any, limit: int
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Best-of-N for held-out (user, item)s vs the ground truth's best creative for the user's segment
    (`best`: missing where there is no ground truth, see `truth_best`; the tournament still runs)."""
    from adflow.contract import read_table
    from adflow.creative.choose import tournament
    from adflow.creative.selector import load_image
    from adflow.data.world import SEGMENT_WEIGHTS

    root = Path(dataset)
    pairs = read_table(root, "creative_pairs")
    held = pairs[pairs["split"].isin(HELD_OUT)].drop_duplicates(["user_id", "item_id"]).head(limit)
    creatives = read_table(root, "creatives")
    titles = read_table(root, "items").set_index("item_id")["title"]
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for p in held.itertuples(index=False):
        cr = creatives[creatives["item_id"] == p.item_id]
        best = truth_best(cr, str(p.user_segment))
        imgs = [
            (int(c), load_image(str(root / path), settings.creative_model.image_size))
            for c, path in zip(cr["creative_id"], cr["image_path"], strict=True)
        ]
        t0 = time.perf_counter()
        choice = tournament(
            model,
            processor,
            str(titles.get(p.item_id, "")),
            str(p.user_interests),
            imgs,
            settings.creative_model.max_new_tokens,
            seed=int(p.user_id) * 100_003 + int(p.item_id),
            instructions=settings.creative_model.instructions,
        )
        rows.append(
            {
                "user_id": int(p.user_id),
                "item_id": int(p.item_id),
                "segment": p.user_segment,
                "split": p.split,
                "n": len(cr),
                "chosen": choice.creative_id,
                "best": best,
                "seconds": time.perf_counter() - t0,
            }
        )
        if len(examples) < 3:
            examples.append(
                {
                    **rows[-1],
                    "points": choice.points,
                    "explanation": choice.explanation,
                    "explained_slots": {"A": choice.explained_a, "B": choice.explained_b},
                }
            )
    tour = pd.DataFrame(rows, columns=[*TOUR_COLUMNS]).astype({"best": "Int64"})
    unscored = tour[tour["best"].isna()]
    if len(unscored):
        unknown = sorted(set(unscored["segment"]) - set(SEGMENT_WEIGHTS))
        why = [f"segments the synthetic world has no weights for: {unknown}"] if unknown else []
        if unscored["segment"].isin(list(SEGMENT_WEIGHTS)).any():
            why.append("creatives without design factors")
        log(
            STAGE,
            f"tournament: {len(unscored)} of {len(tour)} (user, item)s have no ground truth to score the pick "
            f"against ({'; '.join(why)}): the tournament ran, its best-creative hit is not measured for them",
        )
    return tour, examples


def tournament_metrics(tour: pd.DataFrame, scorer_pick: Sequence[int]) -> dict[str, float]:
    """The tournament's and the fast scorer's best-of-N against the ground truth, over the (user, item)s that
    have one (`best`); agreement and time over every tournament."""
    known = tour["best"].notna().to_numpy()
    scored = tour[known]
    hit = (scored["chosen"].to_numpy() == scored["best"].to_numpy(dtype=np.int64)).astype(float)
    unseen = (scored["split"] == "test_unseen").to_numpy()
    picks = np.asarray(scorer_pick, dtype=np.int64)
    return {
        "tournament_n": float(len(tour)),
        "tournament_scored_n": float(len(scored)),
        "tournament_best_hit": float(hit.mean()) if len(scored) else NA,
        # (user, item)s of one product share its creatives: the product is the independent draw
        "tournament_best_hit_ci95": clustered_mean(hit, scored["item_id"].to_numpy())["ci95"]
        if len(scored)
        else NA,
        "tournament_chance": float((1.0 / scored["n"]).mean()) if len(scored) else NA,
        # on products whose pairs never reached training
        "tournament_best_hit_unseen": float(hit[unseen].mean()) if unseen.any() else NA,
        "tournament_ms": float(tour["seconds"].mean() * 1e3) if len(tour) else NA,
        "scorer_best_hit": float(np.mean(picks[known] == scored["best"].to_numpy(dtype=np.int64)))
        if len(scored)
        else NA,
        "scorer_agrees_with_tournament": float(np.mean(picks == tour["chosen"].to_numpy()))
        if len(tour)
        else NA,
    }


def distil(
    settings: Settings, dataset: str | Path, model: Any, processor: Any, judged: pd.DataFrame
) -> tuple[Any, dict[str, float]]:
    """The fast scorer from the selector's verdicts on unlabelled creative pairs, and how well it agrees.

    Distillation pairs: two creatives of a product whose pairs are trained on, shown to a user from the
    training pairs, asked in both orders; only order-consistent verdicts become labels (the selector's own
    noise stays out). No ground-truth label is used. Agreement is measured on the held-out pairs, against
    the selector's greedy verdicts (`judged`) and against the ground truth; latency per best-of-N choice.
    """
    from adflow.contract import read_table
    from adflow.creative.choose import fit_scorer
    from adflow.creative.data import prompt
    from adflow.creative.selector import generate, load_image, user_message, verdicts

    t, m = settings.creative_train, settings.creative_model
    root = Path(dataset)
    rng = np.random.default_rng(t.seed + 1)
    pairs = read_table(root, "creative_pairs")
    creatives = read_table(root, "creatives").set_index("creative_id", drop=False)
    titles = read_table(root, "items").set_index("item_id")["title"]
    users = pairs[pairs["split"] == "train"].drop_duplicates("user_id")[
        ["user_id", "user_segment", "user_interests"]
    ]
    unseen = set(pairs.loc[pairs["split"] == "test_unseen", "item_id"])
    by_item = {
        i: g.index.to_numpy() for i, g in creatives.groupby("item_id") if i not in unseen and len(g) >= 2
    }
    items = np.array(sorted(by_item))
    draws = []
    for _ in range(t.distill_pairs):
        item = int(rng.choice(items))
        a, b = rng.choice(by_item[item], 2, replace=False)
        u = users.iloc[int(rng.integers(0, len(users)))]
        draws.append((item, int(a), int(b), u.user_segment, u.user_interests))
    cache: dict[int, Any] = {}

    def img(c: int) -> Any:
        if c not in cache:
            cache[c] = load_image(str(root / creatives.loc[c, "image_path"]), m.image_size)
        return cache[c]

    prompts, images = [], []
    for item, a, b, _, interests in draws:
        msg = user_message(prompt(str(titles.get(item, "")), str(interests), m.instructions))
        prompts += [msg, msg]
        images += [[img(a), img(b)], [img(b), img(a)]]
    t0 = time.perf_counter()
    answers = verdicts(generate(model, processor, prompts, images, m.max_new_tokens, t.eval_batch_size))
    label_s = time.perf_counter() - t0
    keep = [k for k in range(len(draws)) if {answers[2 * k], answers[2 * k + 1]} == {"A", "B"}]
    a_df = creatives.loc[[draws[k][1] for k in keep]].reset_index(drop=True)
    b_df = creatives.loc[[draws[k][2] for k in keep]].reset_index(drop=True)
    first = np.array([answers[2 * k] == "A" for k in keep], dtype=np.float32)
    scorer = fit_scorer(a_df, b_df, [draws[k][3] for k in keep], first, t.scorer_epochs)

    # agreement on the held-out examples (each order is its own example, as the selector saw it)
    seg = pairs.set_index("pair_id")["user_segment"]
    held = judged.copy()
    first_ids = [int(ids[0]) for ids in held["creative_ids"]]
    second_ids = [int(ids[1]) for ids in held["creative_ids"]]
    p = scorer.p_first(
        creatives.loc[first_ids], creatives.loc[second_ids], seg.loc[held["pair_key"]].tolist()
    )
    scorer_answer = np.where(p >= 0.5, "A", "B")
    answered = held["answer"].notna().to_numpy()
    # latency: one best-of-N choice for a (user, item) by the scorer
    sample = creatives[creatives["item_id"] == items[0]]
    t1 = time.perf_counter()
    reps = 200
    for _ in range(reps):
        scorer.best(sample, "practical")
    scorer_ms = (time.perf_counter() - t1) / reps * 1e3
    metrics = {
        "scorer_distill_pairs": float(len(draws)),
        "scorer_distill_consistent": float(len(keep) / max(len(draws), 1)),
        "scorer_agreement_with_selector": float(
            np.mean(scorer_answer[answered] == held["answer"].to_numpy()[answered])
        ),
        "scorer_accuracy": float(np.mean(scorer_answer == held["label"].to_numpy())),
        "scorer_best_of_n_ms": float(scorer_ms),
        "selector_ms_per_verdict": float(label_s / max(len(prompts), 1) * 1e3),
    }
    return scorer, metrics


# ---------------------------------------------------------------- the stage


def train(settings: Settings, dataset: str | Path, out_dir: str | Path) -> CreativeResult:
    """prepare -> fit (SFT, GRPO) -> evaluate -> tournament -> distil -> report."""
    import torch

    from adflow.creative.selector import SelectorProcessor, load_model, load_selector, save_selector

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t, m = settings.creative_train, settings.creative_model
    # what Ray's workers read (the examples and their images) and write (the trained models): on a cluster,
    # on the workspace volume (adflow/workspace.py)
    work = shared(settings.placement, out)
    dataset = shared_input(settings.placement, dataset)
    prepared = work / "prepared"
    info = prepare(settings, dataset, prepared)
    history_path = work / "history.jsonl"
    history_path.unlink(missing_ok=True)
    t_fit = time.perf_counter()
    with follow(history_path, STAGE, _progress_line):
        result = fit(settings, prepared, history_path)
    if result.error:
        raise RuntimeError(f"Creative4U training failed: {result.error}")
    fit_s = time.perf_counter() - t_fit
    history = (
        [json.loads(line) for line in history_path.read_text().splitlines()] if history_path.exists() else []
    )

    publish(work, out, ["history.jsonl"])
    processor = SelectorProcessor.load(prepared / "processor")
    examples = pd.read_parquet(prepared / "examples.parquet")
    held = examples[examples["split"].isin(HELD_OUT)].reset_index(drop=True)
    t_eval = time.perf_counter()
    judged = {"random": random_baseline(held, t.seed)}
    models = {"sft": prepared / "sft"} | ({"sft_grpo": prepared / "grpo"} if t.grpo_steps else {})
    loaded = {}
    device = (
        "cuda" if torch.cuda.is_available() else "cpu"
    )  # the driver's GPU, on a cluster step that has one
    for name, path in models.items():
        loaded[name] = load_model(path).to(device).eval()
        judged[name] = judge(loaded[name], processor, held, m.image_size, m.max_new_tokens, t.eval_batch_size)
    # one sample per example at temperature 1: what the policy GRPO trains does, beside its greedy answer
    torch.manual_seed(t.seed)
    sampled = {
        name: judge(model, processor, held, m.image_size, m.max_new_tokens, t.eval_batch_size, sample=True)
        for name, model in loaded.items()
    }
    eval_s = time.perf_counter() - t_eval
    table = {name: scores(j) for name, j in judged.items()}
    for name, j in sampled.items():
        table[name]["sampled_accuracy"] = float(j["correct"].mean())
    served, serving_note = choose_served(table, t.serve_min_accuracy)
    log(STAGE, serving_note)
    # the tournament and the scorer are measured on the served selector, else on the last trained one: what
    # it would have done (its files are kept for a look, but creative.json serves nothing)
    measured = served or ("sft_grpo" if "sft_grpo" in loaded else "sft")
    selector = loaded[measured]
    save_selector(selector, processor, out / "selector", {"variant": measured, "config": m.model_dump()})
    selector, processor, _ = load_selector(out / "selector")  # what serving loads, checked to load
    selector.to(device)

    t_tour = time.perf_counter()
    tour, tour_examples = tournaments(settings, dataset, selector, processor, t.tournament_limit)
    tour_s = time.perf_counter() - t_tour
    n_mean = float(tour["n"].mean()) if len(tour) else 0.0
    scorer, distil_metrics = distil(settings, dataset, selector, processor, judged[measured])
    scorer.save(out / "scorer.json")
    # the scorer's best-of-N on the tournament's (user, item)s, against the ground truth and the tournament
    from adflow.contract import read_table

    creatives = read_table(dataset, "creatives")
    scorer_pick = [
        scorer.best(creatives[creatives["item_id"] == r.item_id], r.segment)
        for r in tour.itertuples(index=False)
    ]
    metrics: dict[str, float] = {f"{name}_{k}": v for name, row in table.items() for k, v in row.items()}
    metrics |= tournament_metrics(tour, scorer_pick)
    metrics |= {
        "creatives_per_item": n_mean,
        "fit_s": fit_s,
        "eval_s": eval_s,
        "tournament_s": tour_s,
        "selector_served": float(served is not None),
        **distil_metrics,
    }
    metrics |= {k: float(v) for k, v in info.items() if isinstance(v, int | float)}
    if "sft_grpo" in judged:
        gain = paired_gain(judged["sft"], judged["sft_grpo"])
        metrics |= {
            "grpo_gain": gain["gain"],
            "grpo_gain_ci95": gain["gain_ci95"],
            "grpo_fixed": gain["fixed"],
            "grpo_broken": gain["broken"],
        }
    else:
        metrics["grpo_gain"] = 0.0
    tour.to_parquet(out / "tournament.parquet", index=False)
    evaluation = {
        "table": table,
        "tournament_examples": tour_examples,
        "served": served,
        "measured": measured,
        "serving_note": serving_note,
        "metrics": metrics,
    }
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=str))
    write_report(out, evaluation, history)
    (out / "creative.json").write_text(
        json.dumps(
            {"served": served, "selector": "selector", "scorer": "scorer.json", "note": serving_note},
            indent=2,
        )
    )
    seconds = time.perf_counter() - t0
    log(
        STAGE,
        f"held-out accuracy: random {metrics['random_accuracy']:.3f}, SFT {metrics['sft_accuracy']:.3f}"
        + (
            f", SFT+GRPO {metrics['sft_grpo_accuracy']:.3f} (paired gain {metrics['grpo_gain']:+.3f}"
            f" ± {metrics['grpo_gain_ci95']:.3f})"
            if "sft_grpo_accuracy" in metrics
            else ""
        )
        + f"; tournament picks the best {na(metrics['tournament_best_hit'], '.2f')}"
        + f" ± {na(metrics['tournament_best_hit_ci95'], '.2f')} (chance {na(metrics['tournament_chance'], '.2f')})"
        + f" ({seconds:.0f}s)",
    )
    selector_dir = str(out / "selector") if served else None
    return CreativeResult(str(out), selector_dir, metrics, history, serving_note, seconds)


def grpo_gain_line(m: dict[str, float]) -> str:
    """What GRPO did to SFT's held-out answers, paired: the gain, its interval, and whether it is one."""
    g, ci = m["grpo_gain"], m["grpo_gain_ci95"]
    if g - ci > 0:
        reading = "GRPO beats SFT"
    elif g + ci < 0:
        reading = "GRPO is worse than SFT"
    else:
        reading = "no measurable difference"
    return (
        f"SFT+GRPO less SFT on the same held-out answers: {g:+.3f} ± {ci:.3f} (95%, clustered by product; "
        f"{int(m['grpo_fixed'])} answers turned right, {int(m['grpo_broken'])} turned wrong): {reading}"
    )


def write_report(out: Path, evaluation: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """report.md, accuracy.png (held-out metrics per selector) and curves.png (SFT loss, GRPO rewards)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, met = evaluation["table"], evaluation["metrics"]
    names = list(table)
    keys = ["accuracy", "swap_consistency", "format_validity", "factor_named"]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        vals = [table[name][key] for key in keys]
        err = [table[name]["accuracy_ci95"], 0, 0, 0]
        ax.bar(np.arange(len(keys)) + k * width, vals, width, yerr=err, label=name, capsize=3)
    ax.set_xticks(np.arange(len(keys)) + width * (len(names) - 1) / 2, keys)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set(ylim=(0, 1.05), title="Creative4U on held-out pairs (both orders)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    sft = [h for h in history if h["phase"] == "sft" and "loss" in h]
    grpo = [h for h in history if h["phase"] == "grpo" and "reward" in h]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].plot([h["step"] for h in sft], [h["loss"] for h in sft], marker=".")
    axes[0].set(title="CoT-SFT loss", xlabel="step")
    for key in (
        "rewards/accuracy_reward/mean",
        "rewards/consistency_reward/mean",
        "rewards/format_reward/mean",
    ):
        axes[1].plot(
            [h["step"] for h in grpo], [h.get(key, np.nan) for h in grpo], marker=".", label=key.split("/")[1]
        )
    axes[1].set(title="GRPO rewards (sampled)", xlabel="step")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    lines = [
        "# Creative4U: creative selection",
        "",
        "Held-out pairs, each asked in both orders (greedy decoding):",
        "",
    ]
    lines += [
        "| selector | accuracy (±95%) | seen products | unseen products | swap consistency | format | factor named "
        "| sampled accuracy (T=1) |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        lines.append(
            f"| {name} | {r['accuracy']:.3f} ± {r['accuracy_ci95']:.3f} | {na(r['accuracy_seen_products'])} | "
            f"{na(r['accuracy_unseen_products'])} | {r['swap_consistency']:.3f} | {r['format_validity']:.3f} | "
            f"{r['factor_named']:.3f} | {r.get('sampled_accuracy', r['accuracy']):.3f} |"
        )
    if "grpo_gain_ci95" in met:
        lines += ["", grpo_gain_line(met) + "."]
    described = [name for name in table if name != "random"]
    if described and "facts_all" in table[described[0]]:
        lines += [
            "",
            "What the reasoning sees: the share of held-out answers describing each creative's factor at the "
            "gold rationale's level (both creatives), and every fact right:",
            "",
            "| selector | prominence | clutter | legibility | theme | all facts |",
            "|---|---|---|---|---|---|",
        ]
        for name in described:
            r = table[name]
            lines.append(
                f"| {name} | {na(r['facts_prominence'])} | {na(r['facts_clutter'])} | "
                f"{na(r['facts_legibility'])} | {na(r['facts_theme'])} | {na(r['facts_all'])} |"
            )
    measured = VARIANT_NAMES[evaluation["measured"]]
    lines += [
        "",
        f"Serving: {evaluation['serving_note']}.",
        "",
        f"{measured}'s tournament over each held-out (user, item)'s {met['creatives_per_item']:.1f} creatives "
        f"({int(met['tournament_n'])} of them, {int(met.get('tournament_scored_n', met['tournament_n']))} with a "
        f"ground truth): the ground truth's best creative picked "
        f"{na(met['tournament_best_hit'])} ± {na(met['tournament_best_hit_ci95'])} of the time (95%, clustered "
        f"by product; chance {na(met['tournament_chance'])}; on unseen "
        f"products {na(met['tournament_best_hit_unseen'])}), "
        f"{na(met['tournament_ms'], '.0f')} ms per choice.",
        f"Fast scorer (Bradley-Terry on design factors, distilled from {int(met['scorer_distill_pairs'])} "
        f"unlabelled pairs' verdicts): agrees with the selector on {na(met['scorer_agreement_with_selector'])} "
        f"of held-out verdicts, accuracy {met['scorer_accuracy']:.3f}, picks the best creative "
        f"{na(met['scorer_best_hit'])}; {met['scorer_best_of_n_ms']:.3f} ms per best-of-N vs "
        f"{na(met['tournament_ms'], '.0f')} ms for the tournament.",
        "",
        "Example choices:",
        "",
    ]
    for ex in evaluation["tournament_examples"]:
        slots = ex.get("explained_slots") or {}
        game = f" (A = {slots['A']}, B = {slots['B']})" if slots.get("A") is not None else ""
        lines.append(
            f"- user {ex['user_id']} ({ex['segment']}), item {ex['item_id']}: chose {ex['chosen']} "
            f"(truth's best {ex['best'] if ex['best'] is not None else 'unknown'}), points {ex['points']}. "
            f"Why{game}: {ex['explanation']}"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")


def run(
    settings_json: str, tracking_uri: str, parent_run_id: str, dataset: str | Path, out_dir: str | Path
) -> CreativeResult:
    from adflow.config import settings_from_json
    from adflow.tracking import NOTE_TAG, stage_run

    s = settings_from_json(settings_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        sr.params(
            {"creative_model": s.creative_model.model_dump(), "creative_train": s.creative_train.model_dump()}
        )
        if not s.creative_train.enabled:
            note = "creative_train.enabled is false: serving explains with the fast scorer only"
        else:
            try:
                result = train(s, dataset, out)
            except CreativeUnavailable as e:
                note = f"skipped: {e}"
            else:
                for k, h in enumerate(result.history):
                    vals = {
                        f"{h['phase']}_{key.replace('/', '_')}": float(v)
                        for key, v in h.items()
                        if isinstance(v, int | float) and key not in ("step", "epoch", "max_steps")
                    }
                    sr.metrics(vals, step=k)
                sr.metrics(result.metrics | {"train_s": result.seconds})
                for name in ("report.md", "accuracy.png", "curves.png", "evaluation.json", "scorer.json"):
                    if (out / name).exists():
                        sr.log_file(out / name)
                sr.artifact("creative", out)
                m = result.metrics
                verdict = f"held-out accuracy random {m['random_accuracy']:.3f}, SFT {m['sft_accuracy']:.3f}"
                if "sft_grpo_accuracy" in m:
                    verdict += (
                        f", SFT+GRPO {m['sft_grpo_accuracy']:.3f} (paired gain {m['grpo_gain']:+.3f}"
                        f" ± {m['grpo_gain_ci95']:.3f})"
                    )
                verdict += (
                    f"; swap consistency {m.get('sft_grpo_swap_consistency', m['sft_swap_consistency']):.3f}"
                    f"; {result.note}"
                )
                sr.tag(NOTE_TAG, verdict)
                return result
        log(STAGE, note)
        sr.tag(NOTE_TAG, note)
        (out / "creative.json").write_text(json.dumps({"served": None, "note": note}))
        return CreativeResult(str(out), None, note=note)
