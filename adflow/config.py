"""Typed settings: what to train (a preset) kept apart from where it runs (a placement).

A run's settings are `Settings(preset=..., world=..., validation=..., placement=...)`, built from two YAML
files shipped in `adflow/presets/` (a *what* preset such as `tiny` or `full`, and a *where* placement such as
`local` or `cluster`) plus `--set key.path=value` overrides. Every section rejects unknown keys, so a typo
fails at load time with the valid keys named, not deep inside a training step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESET_DIR = Path(__file__).parent / "presets"
WHAT_PRESETS = ("tiny", "full")
WHERE_PRESETS = ("local", "cluster")


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

    click_rate_min: float = Field(0.01, ge=0.0, le=1.0)
    click_rate_max: float = Field(0.30, ge=0.0, le=1.0)
    price_min: float = Field(0.01, gt=0)
    price_max: float = Field(100_000.0, gt=0)
    earliest_timestamp: str = "1990-01-01"  # events before this are a unit or parsing error
    max_future_skew_hours: float = Field(24.0, ge=0)
    # Drift against the last accepted dataset: a column's mean may move this many reference standard
    # deviations, and category shares this far in KL divergence, before the dataset is refused.
    drift_mean_tolerance_std: float = Field(0.5, gt=0)
    drift_kl_threshold: float = Field(0.1, gt=0)  # KL(reference || current) of category shares
    drift_click_rate_rel_tolerance: float = Field(0.35, gt=0)  # |ctr - ref| / ref
    check_images: bool = True  # image files exist (costly on millions of rows: sample on a cluster)
    image_check_sample: int = Field(2000, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ValidationConfig:
        if self.click_rate_min > self.click_rate_max:
            raise ValueError("click_rate_min must not exceed click_rate_max")
        if self.price_min >= self.price_max:
            raise ValueError("price_min must be below price_max")
        return self


# ---------------------------------------------------------------- where it runs


class Placement(Strict):
    """Where things run and live: paths, servers, workers. Nothing here changes what is learned."""

    name: str = "local"
    workspace: str = ".adflow"  # local state: MLflow store, KFP pipeline root, accepted datasets
    runs_dir: str = "runs"
    mlflow_tracking_uri: str | None = None  # None: sqlite under the workspace
    mlflow_experiment: str = "ads_full"
    kfp_host: str | None = None  # None: the KFP local runner
    image: str = "ghcr.io/adflow/adflow:0.1.0-cpu"  # stamped into compiled pipelines for every component
    ray_address: str | None = None  # None: one local Ray started by the run
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    gpus_per_worker: float = Field(0, ge=0)

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


def parse_override(item: str) -> tuple[list[str], Any]:
    """`world.n_users=500` -> (['world', 'n_users'], 500). Values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not a valid scalar: {e}") from e
    return parts, value


def _apply(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: '{p}' is a value, not a section")
        node = child
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
