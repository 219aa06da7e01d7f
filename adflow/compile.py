"""Compile pipelines to KFP IR YAML, with the placement's image and the preset's settings as defaults.

make compile                                             # tiny preset, local placement -> build/pipelines/
adflow pipeline compile --preset full --placement cluster --out build/cluster
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from adflow.config import Settings


def load_pipeline(name: str) -> Callable[..., Any]:
    from pipelines import PIPELINES

    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline '{name}': choose one of {', '.join(PIPELINES)}")
    module, func = PIPELINES[name].split(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), func)
    return fn


def pipeline_arguments(settings: Settings, parent_run_id: str = "") -> dict[str, Any]:
    return {
        "settings_json": settings.to_json(),
        "source": settings.data.source,
        "tracking_uri": settings.placement.tracking_uri(),
        "parent_run_id": parent_run_id,
    }


def stamp_image(path: Path, image: str) -> int:
    """Set every executor's container image: the compiled YAML names exactly the image that will run it."""
    spec = yaml.safe_load(path.read_text())
    n = 0
    for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
        if "container" in executor:
            executor["container"]["image"] = image
            n += 1
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return n


def compile_pipeline(name: str, settings: Settings, out_dir: str | Path) -> Path:
    from kfp import compiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    compiler.Compiler().compile(
        load_pipeline(name), str(path), pipeline_parameters=pipeline_arguments(settings)
    )
    stamp_image(path, settings.placement.image)
    return path


def compile_all(settings: Settings, out_dir: str | Path) -> list[Path]:
    from pipelines import PIPELINES

    return [compile_pipeline(name, settings, out_dir) for name in PIPELINES]
