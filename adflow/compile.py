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


def read_ir(path: Path) -> list[dict[str, Any]]:
    """The compiled file's documents: the pipeline spec, then (when a step has Kubernetes settings) the
    platform spec."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _write_ir(path: Path, docs: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def stamp_image(path: Path, image: str) -> int:
    """Set every executor's container image: the compiled YAML names exactly the image that will run it."""
    docs = read_ir(path)
    n = 0
    for executor in docs[0].get("deploymentSpec", {}).get("executors", {}).values():
        if "container" in executor:
            executor["container"]["image"] = image
            n += 1
    _write_ir(path, docs)
    return n


def stamp_workspace(path: Path, pvc: str, mount_path: str) -> list[str]:
    """Mount the workspace volume (a PersistentVolumeClaim) at `mount_path` in every step's pod: what
    `kfp.kubernetes.mount_pvc` writes for a task, for every executor of the compiled file (the pipelines are
    built at import, before a placement is known). Returns the executors it was added to."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as pb

    mount = pb.PvcMount(mount_path=mount_path, constant=pvc)  # `constant`: what older KFP backends read
    mount.pvc_name_parameter.runtime_value.constant.string_value = pvc
    entry = json_format.MessageToDict(mount)
    docs = read_ir(path)
    if len(docs) == 1:
        docs.append({})
    platform = docs[1].setdefault("platforms", {}).setdefault("kubernetes", {})
    configs = platform.setdefault("deploymentSpec", {}).setdefault("executors", {})
    stamped = []
    for name, executor in docs[0].get("deploymentSpec", {}).get("executors", {}).items():
        if "container" not in executor:
            continue
        mounts = configs.setdefault(name, {}).setdefault("pvcMount", [])
        if any(m.get("mountPath") == mount_path for m in mounts):
            raise ValueError(f"{name} already mounts a volume at {mount_path}")
        mounts.append(dict(entry))
        stamped.append(name)
    _write_ir(path, docs)
    return stamped


_RESOURCE_FIELDS = {  # the IR's string field and its numeric twin, as kfp's own set_*_request writes them
    "cpu_request": ("resourceCpuRequest", "cpuRequest"),
    "cpu_limit": ("resourceCpuLimit", "cpuLimit"),
    "memory_request": ("resourceMemoryRequest", "memoryRequest"),
    "memory_limit": ("resourceMemoryLimit", "memoryLimit"),
}
# a GPU for the step pod itself (where evaluation runs on the driver: the Creative4U selector's generations,
# MOON's evaluation); the training GPUs stay the Ray workers'
_ACCELERATOR_FIELDS = ("accelerator_type", "accelerator_count")
_MEMORY_UNITS = {
    "K": 1e-6,
    "M": 1e-3,
    "G": 1.0,
    "T": 1e3,
    "Ki": 1.024e-6,
    "Mi": 1.048576e-3,
    "Gi": 1.073741824,
}


def _number(kind: str, value: str) -> float:
    """kfp's numeric twin of a quantity: CPUs ("500m" = 0.5), or memory in GB ("8G", "512Mi")."""
    if kind.startswith("cpu"):
        return float(value[:-1]) / 1000 if value.endswith("m") else float(value)
    for unit in sorted(_MEMORY_UNITS, key=len, reverse=True):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * _MEMORY_UNITS[unit]
    return float(value) / 1e9  # bytes


def stamp_resources(
    path: Path, resources: dict[str, dict[str, str]], other_steps: set[str] | frozenset[str] = frozenset()
) -> dict[str, dict[str, str]]:
    """Set each step's CPU/memory requests and limits (`default`: every step not named). Returns what each
    executor got. A name that is no step of this pipeline nor in `other_steps` (the other pipelines' steps:
    one placement serves every pipeline) is refused with the step names: it is a typo."""
    docs = read_ir(path)
    executors = docs[0].get("deploymentSpec", {}).get("executors", {})
    steps = {e.removeprefix("exec-").replace("-", "_"): e for e in executors}
    if unknown := set(resources) - set(steps) - set(other_steps) - {"default"}:
        raise ValueError(f"placement.step_resources: no step named {sorted(unknown)}; steps: {sorted(steps)}")
    applied: dict[str, dict[str, str]] = {}
    for step, executor in steps.items():
        wanted = resources.get(step, resources.get("default", {}))
        if not wanted or "container" not in executors[executor]:
            continue
        res = executors[executor]["container"].setdefault("resources", {})
        for kind, value in wanted.items():
            if kind in _ACCELERATOR_FIELDS:
                continue
            text_field, number_field = _RESOURCE_FIELDS[kind]
            res[text_field], res[number_field] = str(value), _number(kind, str(value))
        if "accelerator_type" in wanted:
            # as kfp's set_accelerator_type + set_accelerator_limit write it (old and new field names)
            kind, count = str(wanted["accelerator_type"]), str(wanted.get("accelerator_count", "1"))
            res["accelerator"] = {"type": kind, "resourceType": kind, "count": count, "resourceCount": count}
        applied[step] = dict(wanted)
    _write_ir(path, docs)
    return applied


def compile_pipeline(name: str, settings: Settings, out_dir: str | Path) -> Path:
    from kfp import compiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    compiler.Compiler().compile(
        load_pipeline(name), str(path), pipeline_parameters=pipeline_arguments(settings)
    )
    stamp_image(path, settings.placement.image)
    if settings.placement.step_resources:
        stamp_resources(path, settings.placement.step_resources, all_steps())
    if settings.placement.workspace_pvc:
        stamp_workspace(path, settings.placement.workspace_pvc, settings.placement.workspace)
    return path


def all_steps() -> set[str]:
    """Every step name of every pipeline."""
    from pipelines import PIPELINES

    return {st.name for ref in PIPELINES.values() for st in importlib.import_module(ref.split(":")[0]).STAGES}


def compile_all(settings: Settings, out_dir: str | Path) -> list[Path]:
    from pipelines import PIPELINES

    return [compile_pipeline(name, settings, out_dir) for name in PIPELINES]
