"""Every pipeline compiles to KFP IR YAML with the placement's image stamped in (a contract test)."""

from pathlib import Path

import pytest
import yaml
from kfp import dsl, kubernetes

from adflow.compile import compile_all
from adflow.config import load_settings
from pipelines import PIPELINES


@pytest.mark.parametrize("placement", ["local", "cluster"])
def test_every_pipeline_compiles(tmp_path: Path, placement: str) -> None:
    s = load_settings("tiny" if placement == "local" else "full", placement)
    paths = compile_all(s, tmp_path)
    assert sorted(p.stem for p in paths) == sorted(PIPELINES)
    for path in paths:
        spec, *platform = yaml.safe_load_all(path.read_text())
        assert spec["pipelineInfo"]["name"] == path.stem.replace("_", "-")
        executors = spec["deploymentSpec"]["executors"]
        assert executors and {e["container"]["image"] for e in executors.values()} == {s.placement.image}
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert set(params) >= {"settings_json", "source", "tracking_uri", "parent_run_id"}
        # the preset travels as the default: an uploaded YAML runs as compiled
        assert '"preset":"' + s.preset + '"' in params["settings_json"]["defaultValue"]
        tasks = spec["root"]["dag"]["tasks"]
        assert "validate" in tasks and any(t.startswith("condition-branches") for t in tasks)
        # on a cluster every step pod mounts the workspace volume; locally there is no platform spec at all
        mounted = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
        assert set(mounted) == (set(executors) if s.placement.workspace_pvc else set())
    if placement == "cluster":  # every step pod asks for the CPU/memory the placement gives it
        want = s.placement.step_resources
        executors = next(yaml.safe_load_all((tmp_path / "ads_full.yaml").read_text()))["deploymentSpec"][
            "executors"
        ]
        for name, ex in executors.items():
            step = name.removeprefix("exec-").replace("-", "_")
            res, given = ex["container"]["resources"], want.get(step, want["default"])
            assert res["resourceCpuRequest"] == given["cpu_request"]
            assert res["resourceMemoryRequest"] == given["memory_request"]
        assert (
            executors["exec-moon"]["container"]["resources"]["memoryRequest"] == 64.0
        )  # GB, as kfp writes it
        # the two steps that evaluate a 3B model on their own pod get a GPU, written as kfp's
        # set_accelerator_type + set_accelerator_limit write it; the others none
        gpu = {"type": "nvidia.com/gpu", "resourceType": "nvidia.com/gpu", "count": "1", "resourceCount": "1"}
        with_gpu = {
            n for n, ex in executors.items() if ex["container"]["resources"].get("accelerator") == gpu
        }
        assert with_gpu == {"exec-creative", "exec-moon"}
        assert all(
            "accelerator" not in ex["container"]["resources"]
            for n, ex in executors.items()
            if n not in with_gpu
        )
    else:
        assert all("resources" not in ex["container"] for ex in executors.values())


def test_step_resources_are_checked(tmp_path: Path) -> None:
    from adflow.compile import _number, compile_pipeline

    assert (_number("cpu_request", "500m"), _number("memory_limit", "512Mi")) == (0.5, 0.536870912)
    with pytest.raises(ValueError, match="no step named"):
        s = load_settings("tiny", "local", ["placement.step_resources={mooon: {cpu_request: '2'}}"])
        compile_pipeline("ads_full", s, tmp_path)
    with pytest.raises(ValueError, match="unknown keys"):
        load_settings("tiny", "local", ["placement.step_resources={moon: {gpus: '2'}}"])
    with pytest.raises(ValueError, match="accelerator_count needs accelerator_type"):
        load_settings("tiny", "local", ["placement.step_resources={moon: {accelerator_count: '2'}}"])


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _step(x: str) -> str:
    return x


@dsl.pipeline(name="mounted")
def _mounted(x: str = "a") -> None:
    kubernetes.mount_pvc(_step(x=x), pvc_name="adflow-workspace", mount_path="/mnt/adflow")


@dsl.pipeline(name="mounted")
def _plain(x: str = "a") -> None:
    _step(x=x)


def test_workspace_mount_is_what_kfp_kubernetes_writes(tmp_path: Path) -> None:
    """stamp_workspace adds to a compiled file exactly what kfp-kubernetes' mount_pvc compiles a task to."""
    from kfp import compiler

    from adflow.compile import stamp_workspace

    compiler.Compiler().compile(_mounted, str(tmp_path / "want.yaml"))
    compiler.Compiler().compile(_plain, str(tmp_path / "got.yaml"))
    assert stamp_workspace(tmp_path / "got.yaml", "adflow-workspace", "/mnt/adflow") == ["exec-step"]
    want, got = (list(yaml.safe_load_all((tmp_path / f"{n}.yaml").read_text())) for n in ("want", "got"))
    assert got == want and len(got) == 2
    with pytest.raises(
        ValueError, match="already mounts"
    ):  # twice at one path: a pod spec Kubernetes refuses
        stamp_workspace(tmp_path / "got.yaml", "other", "/mnt/adflow")


def test_workspace_pvc_needs_an_absolute_workspace() -> None:
    with pytest.raises(ValueError, match="must then be an absolute path"):
        load_settings("tiny", "local", ["placement.workspace_pvc=adflow-workspace"])  # workspace: .adflow
