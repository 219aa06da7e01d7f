"""Seed studies: a stage trained again over several seeds on one run's data, compared paired.

One run's numbers on the tiny world move with the training seed by as much as the differences a team wants to
read (GRPO against SFT, CiUBM on MOON against CiUBM on the text encoder, CiUBM against DIN): a single run
cannot tell them from noise. A study keeps the data fixed (the world, the feature set and the embeddings of a
finished run), trains the stage's own code again with each seed, and reports per seed and across seeds:

- `creative`: the Creative4U stage (CoT-SFT then GRPO, evaluation) with `creative_train.seed` = each seed;
  SFT and SFT+GRPO held-out accuracy, GRPO's paired gain (the same answers before and after), swap
  consistency, the tournament.
- `moon`: the MOON stage (every variant side by side, one Ray Train fit) with `moon_train.seed` = each seed;
  image-search recall@10 (all queries, cluttered ones) and text-to-image recall@10 of MOON against the
  baseline encoder, each ablation and pretraining only.
- `ctr`: the CTR stage (Ray Train, best validation epoch) with `ctr_train.seed` = each seed and the asked-for
  variants trained side by side on the same batches; every variant scored on the test split as the gate
  scores it, and each compared with a base variant paired by seed.

Across seeds the mean difference gets a 95% t-interval (seeds are the independent draws), and the study
counts the seeds on which it is positive. Results are written after every seed (study.json), so a study
that is stopped keeps the seeds it finished; study.md and study.png are the readable report. MLflow gets a
run per study (experiment "<placement.mlflow_experiment>-studies") with the same numbers and files.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adflow.config import Settings
from adflow.progress import log

STAGE = "study"
CTR_METRICS = ("auc", "gauc", "cold_auc", "logloss")
CREATIVE_METRICS = ("accuracy", "swap_consistency")


def moon_metrics(k: int) -> tuple[str, ...]:
    """MOON's recall@k (its largest configured k) for image search, cluttered queries, text-to-image."""
    return (f"image_r{k}", f"image_r{k}_cluttered", f"text_image_r{k}")


class StudyError(ValueError):
    """A study that cannot start: bad seeds, a run without the data it needs, an unknown variant."""


def parse_seeds(text: str) -> list[int]:
    """ "0-5" -> [0..5], "0,3,7" -> [0, 3, 7], "1-3,8" -> [1, 2, 3, 8]; each seed once, in the given order."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise StudyError(f"seeds: {part!r} is not a seed or a range like 0-5")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise StudyError(f"seeds: the range {part!r} runs backwards")
        seeds += [s for s in range(lo, hi + 1) if s not in seeds]
    if len(seeds) < 2:
        raise StudyError("seeds: a study needs at least two seeds (one seed is one run)")
    return seeds


def across_seeds(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation and the 95% t half-width of the mean over seeds; positive/negative counts."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], float)
    n = len(x)
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
    return {
        "n": float(n),
        "mean": float(x.mean()) if n else math.nan,
        "sd": sd,
        "ci95": half,
        "positive": float((x > 0).sum()),
        "negative": float((x < 0).sum()),
    }


def verdict(d: dict[str, float], higher_is_better: bool = True) -> str:
    """A difference across seeds in words: above zero, below zero, or not told from zero."""
    lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
    if math.isnan(lo):
        return "not enough seeds"
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "not told from zero"


def run_artifacts(run: str | Path) -> dict[str, Path]:
    """The data a finished run left: {"dataset": world folder, "features": feature set} (what it has).

    `run`: a run folder (runs/<id> or runs/latest) or its summary.json."""
    from adflow.summary import stage_artifacts

    path = Path(run)
    summary = path / "summary.json" if path.is_dir() else path
    if not summary.exists():
        raise StudyError(f"{run}: no summary.json (pass a run folder such as runs/latest)")
    stages = stage_artifacts(summary)
    wanted = {
        "dataset": [("synth", "dataset"), ("ingest", "dataset")],
        "features": [("features", "features")],
    }
    found: dict[str, Path] = {}
    for key, places in wanted.items():
        for stage, artifact in places:
            uri = stages.get(stage, {}).get(artifact)
            if uri and Path(uri).exists():
                found[key] = Path(uri)
                break
    return found


@dataclass
class Study:
    kind: str
    seeds: list[int]
    base: str  # what the differences are taken against
    compared: list[str]
    per_seed: dict[int, dict[str, dict[str, float]]]  # seed -> variant -> metric -> value
    seconds: dict[int, float]
    # what the numbers depend on besides the seed (the data, the settings): a restarted study into the same
    # folder keeps an earlier study's seeds only when this is equal
    key: dict[str, Any]
    metrics: tuple[str, ...]  # what the report shows, per variant

    def paired(self, variant: str, metric: str) -> list[float]:
        """(variant - base) on `metric` for every seed that has both, in seed order."""
        return [
            self.per_seed[s][variant][metric] - self.per_seed[s][self.base][metric]
            for s in sorted(self.per_seed)
            if metric in self.per_seed[s].get(variant, {}) and metric in self.per_seed[s].get(self.base, {})
        ]

    def differences(self, metric: str) -> dict[str, dict[str, float]]:
        """variant -> across-seed summary of (variant - base) on `metric`, paired by seed."""
        return {v: across_seeds(self.paired(v, metric)) for v in self.compared}

    def levels(self, metric: str) -> dict[str, dict[str, float]]:
        variants = [self.base, *self.compared]
        return {
            v: across_seeds(
                [self.per_seed[s][v][metric] for s in self.per_seed if metric in self.per_seed[s].get(v, {})]
            )
            for v in variants
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "seeds": self.seeds,
            "done": sorted(self.per_seed),
            "base": self.base,
            "compared": self.compared,
            "metrics": list(self.metrics),
            "per_seed": {str(k): v for k, v in self.per_seed.items()},
            "seconds": {str(k): v for k, v in self.seconds.items()},
        }


def write_report(study: Study, out: Path) -> None:
    """study.json (every number), study.md (per seed, across seeds, paired), study.png (paired per seed)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study.to_json(), indent=2, default=float))
    metrics = study.metrics
    lines = [f"# Seed study: {study.kind}", ""]
    lines.append(
        f"Seeds done: {', '.join(map(str, sorted(study.per_seed)))} of {', '.join(map(str, study.seeds))}. "
        "Differences are paired by seed (the same data, the same seed, one variant less another); "
        "the interval is a 95% t-interval over seeds."
    )
    lines += ["", "## Per seed", ""]
    header = ["seed", *[f"{v} {m}" for v in [study.base, *study.compared] for m in metrics]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in sorted(study.per_seed):
        row = [str(s)]
        for v in [study.base, *study.compared]:
            for m in metrics:
                val = study.per_seed[s].get(v, {}).get(m)
                row.append("" if val is None else f"{val:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Across seeds (mean ± sd)", ""]
    lines += ["| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    levels = {m: study.levels(m) for m in metrics}
    for v in [study.base, *study.compared]:
        cells = [
            f"{levels[m][v]['mean']:.4f} ± {levels[m][v]['sd']:.4f}" if levels[m][v]["n"] else "-"
            for m in metrics
        ]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", f"## Paired against {study.base}", ""]
    lines += ["| variant | metric | mean difference | 95% interval | seeds above / below 0 | reading |"]
    lines += ["|---|---|---|---|---|---|"]
    for m in metrics:
        for v, d in study.differences(m).items():
            if not d["n"]:  # a metric this variant does not have (the text encoder's text-to-image)
                continue
            lines.append(
                f"| {v} | {m} | {d['mean']:+.4f} | [{d['mean'] - d['ci95']:+.4f}, {d['mean'] + d['ci95']:+.4f}]"
                f" | {int(d['positive'])} / {int(d['negative'])} | {verdict(d, m != 'logloss')} |"
            )
    (out / "study.md").write_text("\n".join(lines) + "\n")
    _plot(study, out / "study.png", metrics)


def _plot(study: Study, path: Path, metrics: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        diffs = study.differences(m)
        for k, v in enumerate(study.compared):
            ys = study.paired(v, m)
            ax.scatter([k] * len(ys), ys, s=14, alpha=0.6)
            d = diffs[v]
            if not math.isnan(d["ci95"]):
                ax.errorbar([k + 0.18], [d["mean"]], yerr=[d["ci95"]], fmt="o", color="black", capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(study.compared)), study.compared, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{m}: variant - {study.base}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _resume(
    out: Path, kind: str, seeds: list[int], key: dict[str, Any]
) -> tuple[dict[int, dict[str, dict[str, float]]], dict[int, float]]:
    """Seeds an earlier study into the same folder finished on the same data and settings: a restarted
    study skips them. A folder holding another study, or seeds this one does not ask for, is refused rather
    than written over (nothing a finished study measured is lost)."""
    path = out / "study.json"
    if not path.exists():
        return {}, {}
    old = json.loads(path.read_text())
    if old.get("kind") != kind or old.get("key") != json.loads(json.dumps(key, default=str)):
        raise StudyError(
            f"{out} holds another study (another kind, data or settings): choose another --out, or remove it"
        )
    done = {int(k): v for k, v in old.get("per_seed", {}).items()}
    if extra := sorted(set(done) - set(seeds)):
        raise StudyError(
            f"{out} holds seeds {extra} that --seeds leaves out: ask for them too (they are kept, not run "
            "again), or choose another --out"
        )
    return done, {int(k): v for k, v in old.get("seconds", {}).items() if int(k) in done}


def _key(settings: Settings, data: str | Path, section: str) -> dict[str, Any]:
    """What a seed's numbers depend on besides the seed: the data, the stage's section and where it trains
    (the number of Ray Train workers changes the shards, the per-worker batch and in-batch negatives; a GPU
    another float path), so a study restarted elsewhere does not keep seeds trained another way."""
    where = settings.placement.model_dump(mode="json", include={"num_workers", "use_gpu", "gpus_per_worker"})
    return {
        "data": str(Path(data).resolve()),
        section: getattr(settings, section).model_dump(mode="json"),
        "placement": where,
    }


SeedRun = Callable[[int, Path], tuple[dict[str, dict[str, float]], str]]


def _each_seed(
    settings: Settings,
    study: Study,
    out: Path,
    what: str,
    one: SeedRun,
    after: Callable[[], None] | None = None,
) -> Study:
    """Run `one(seed, folder)` -> (the seed's row, a line for the log) for every seed not done yet; the
    report is rewritten after each, so a stopped study keeps what it finished. Everything also goes to
    MLflow: one run per study in the "<experiment>-studies" experiment, each seed's numbers at step = seed,
    the paired differences and the report's files."""
    from adflow.tracking import client, ensure_experiment, stage_run

    p = settings.resolved().placement
    uri, experiment = p.tracking_uri(), f"{p.mlflow_experiment}-studies"
    # as the pipeline's experiment: local artifact root here, the tracking server's own with a server
    ensure_experiment(client(uri), experiment, p.artifact_root() if not p.mlflow_tracking_uri else None)
    with stage_run(f"study-{study.kind}", uri, "", experiment) as rec:
        rec.params({"kind": study.kind, "seeds": study.seeds, "base": study.base, "key": study.key})

        def record(seed: int) -> None:
            row = study.per_seed[seed]
            rec.metrics({f"{v}.{m}": x for v, ms in row.items() for m, x in ms.items()}, step=seed)

        for i, seed in enumerate(study.seeds):
            if seed in study.per_seed:
                log(STAGE, f"seed {seed}: done in an earlier study, kept")
                record(seed)
                continue
            log(STAGE, f"seed {seed} ({i + 1}/{len(study.seeds)}): {what}")
            t0 = time.perf_counter()
            study.per_seed[seed], line = one(seed, out / f"seed{seed}")
            study.seconds[seed] = time.perf_counter() - t0
            if after is not None:
                after()
            write_report(study, out)
            record(seed)
            log(STAGE, f"seed {seed}: {line} in {study.seconds[seed]:.0f}s")
        write_report(study, out)  # also when every seed was done before
        paired = {
            f"{v}_minus_{study.base}.{m}.{stat}": d[stat]
            for m in study.metrics
            for v, d in study.differences(m).items()
            if d["n"]
            for stat in ("mean", "ci95")
        }
        rec.metrics({k: v for k, v in paired.items() if not math.isnan(v)})
        for name in ("study.md", "study.png", "study.json"):
            rec.log_file(out / name)
        rec.artifact("report", out / "study.md")
    return study


def creative_study(settings: Settings, dataset: str | Path, seeds: list[int], out_dir: str | Path) -> Study:
    """The Creative4U stage once per init seed on one data set; "sft" is the base, "sft_grpo" compared."""
    from components.training.creative import core

    if settings.creative_train.grpo_steps == 0:
        raise StudyError("creative_train.grpo_steps is 0: there is no SFT+GRPO to compare with SFT")
    out = Path(out_dir)
    key = _key(settings, dataset, "creative_train") | {
        "model": settings.creative_model.model_dump(mode="json")
    }
    study = Study(
        "creative", seeds, "sft", ["sft_grpo"], *_resume(out, "creative", seeds, key), key, CREATIVE_METRICS
    )

    def one(seed: int, folder: Path) -> tuple[dict[str, dict[str, float]], str]:
        s = settings.model_copy(deep=True)
        s.creative_train.seed = seed
        m = core.train(s, dataset, folder).metrics
        row = {
            v: {"accuracy": m[f"{v}_accuracy"], "swap_consistency": m[f"{v}_swap_consistency"]}
            for v in ("sft", "sft_grpo")
        }
        row["sft_grpo"] |= {
            "paired_gain": m["grpo_gain"],
            "paired_gain_ci95": m["grpo_gain_ci95"],
            "tournament_best_hit": m["tournament_best_hit"],
        }
        return row, (
            f"SFT {m['sft_accuracy']:.3f}, SFT+GRPO {m['sft_grpo_accuracy']:.3f} "
            f"(paired {m['grpo_gain']:+.3f} ± {m['grpo_gain_ci95']:.3f})"
        )

    return _each_seed(settings, study, out, "the Creative4U stage", one)


def moon_study(settings: Settings, dataset: str | Path, seeds: list[int], out_dir: str | Path) -> Study:
    """The MOON stage once per seed; "moon" (served) is the base, the baseline encoder and every other
    trained variant (ablations, pretraining only) compared with it on the same queries."""
    from components.training.moon import core

    out = Path(out_dir)
    key = _key(settings, dataset, "moon_train") | {
        "model": settings.moon_model.model_dump(mode="json"),
        # post-training's behaviour pairs come only from before this quantile of the impressions' times
        "split_quantile": settings.features.split_quantile,
    }
    k = max(settings.moon_train.recall_k)
    metrics = moon_metrics(k)
    study = Study("moon", seeds, "moon", [], *_resume(out, "moon", seeds, key), key, metrics)

    def compared() -> None:  # the baseline first, then the other encoders by name
        names = {v for row in study.per_seed.values() for v in row} - {"moon"}
        study.compared = sorted(names, key=lambda v: (v != "baseline", v))

    def one(seed: int, folder: Path) -> tuple[dict[str, dict[str, float]], str]:
        s = settings.model_copy(deep=True)
        s.moon_train.seed = seed
        r = core.train(s, dataset, folder)
        # every encoder the stage evaluated (the served MOON, the baseline, ablations, pretraining only)
        names = json.loads((Path(r.out_dir) / "moon.json").read_text())["image_recall"]
        row = {
            v: {
                metric: float(r.metrics[f"{v}_{metric}"])
                for metric in metrics
                if f"{v}_{metric}" in r.metrics
            }
            for v in names
        }
        line = (
            f"image-search recall@{k} MOON {row['moon'][metrics[0]]:.3f}, baseline "
            f"{row['baseline'][metrics[0]]:.3f}; cluttered MOON {row['moon'][metrics[1]]:.3f}"
        )
        if "no_core_region" in row:
            line += f", without core-region detection {row['no_core_region'][metrics[1]]:.3f}"
        return row, line

    compared()
    return _each_seed(settings, study, out, "the MOON stage", one, compared)


def ctr_study(
    settings: Settings,
    features_dir: str | Path,
    seeds: list[int],
    variants: list[str],
    base: str,
    out_dir: str | Path,
) -> Study:
    """The CTR stage once per training seed with `variants` side by side; each scored on the test split."""
    import pandas as pd
    import torch

    from adflow.config import CTRTrainConfig
    from components.evaluation.gate.core import score
    from components.training.ctr import core

    settings = core.resolve_content(settings, features_dir)  # "ciubm" as the CTR stage reads it
    if base not in variants:
        raise StudyError(f"the base {base!r} is not among the variants {variants}")
    cand = settings.features.content_embedding
    if {"ciubm", f"ciubm_{cand}"} <= set(variants):  # the stage would train them once, as one model
        raise StudyError(
            f"ciubm reads the {cand} embedding here (features.content_embedding), so it is ciubm_{cand}: "
            "list one of the two"
        )
    try:  # the variants as the stage's config checks them
        train_cfg = CTRTrainConfig.model_validate(settings.ctr_train.model_dump() | {"variants": variants})
    except ValueError as e:
        raise StudyError(f"variants {variants}: {e}") from e
    for v in variants:  # an embedding the feature set lacks stops the study before any training
        name = settings.features.content_embedding if v == "ciubm" else v.removeprefix("ciubm_")
        if v != "din":
            try:
                core.content_catalog(features_dir, name)
            except ValueError as e:
                raise StudyError(f"variant {v}: {e}") from e
    out = Path(out_dir)
    test = pd.read_parquet(Path(features_dir) / "test.parquet")
    key = _key(settings, features_dir, "ctr_model") | {
        "train": settings.ctr_train.model_dump(mode="json", exclude={"seed", "variants"}),
        "variants": variants,
        # what training reads of the feature settings: the sequence length, the candidate's embedding
        "features": settings.features.model_dump(mode="json", include={"seq_len", "content_embedding"}),
    }
    compared = [v for v in variants if v != base]
    study = Study("ctr", seeds, base, compared, *_resume(out, "ctr", seeds, key), key, CTR_METRICS)

    def one(seed: int, folder: Path) -> tuple[dict[str, dict[str, float]], str]:
        s = settings.model_copy(deep=True)
        s.ctr_train = train_cfg.model_copy(update={"seed": seed})
        core.train(s, features_dir, folder)
        paths = core.model_paths(folder)
        first = torch.load(paths[variants[0]], weights_only=False)
        cold = first.encoder.is_cold(test)  # one cold set for every variant (the encoder is the same)
        row = {}
        for v in variants:
            metrics, _ = score(torch.load(paths[v], weights_only=False), test, cold)
            row[v] = {m: float(metrics[m]) for m in CTR_METRICS}
        return row, ", ".join(f"{v} AUC {row[v]['auc']:.4f} cold {row[v]['cold_auc']:.4f}" for v in variants)

    return _each_seed(settings, study, out, f"CTR training of {', '.join(variants)}", one)


def summary_lines(study: Study) -> list[str]:
    """The paired differences in a line each, for the terminal."""
    lines = []
    for m in study.metrics:
        for v, d in study.differences(m).items():
            if not d["n"]:
                continue
            lines.append(
                f"{v} - {study.base} {m}: {d['mean']:+.4f} [{d['mean'] - d['ci95']:+.4f}, "
                f"{d['mean'] + d['ci95']:+.4f}] over {int(d['n'])} seeds, above 0 on {int(d['positive'])}: "
                f"{verdict(d, m != 'logloss')}"
            )
    return lines
