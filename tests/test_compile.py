"""Every pipeline compiles to KFP IR YAML with the placement's image stamped in (a contract test)."""

from pathlib import Path

import pytest
import yaml

from adflow.compile import compile_all
from adflow.config import load_settings
from pipelines import PIPELINES


@pytest.mark.parametrize("placement", ["local", "cluster"])
def test_every_pipeline_compiles(tmp_path: Path, placement: str) -> None:
    s = load_settings("tiny" if placement == "local" else "full", placement)
    paths = compile_all(s, tmp_path)
    assert sorted(p.stem for p in paths) == sorted(PIPELINES)
    for path in paths:
        spec = yaml.safe_load(path.read_text())
        assert spec["pipelineInfo"]["name"] == path.stem.replace("_", "-")
        executors = spec["deploymentSpec"]["executors"]
        assert executors and {e["container"]["image"] for e in executors.values()} == {s.placement.image}
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert set(params) >= {"settings_json", "source", "tracking_uri", "parent_run_id"}
        # the preset travels as the default: an uploaded YAML runs as compiled
        assert '"preset":"' + s.preset + '"' in params["settings_json"]["defaultValue"]
        tasks = spec["root"]["dag"]["tasks"]
        assert "validate" in tasks and any(t.startswith("condition-branches") for t in tasks)
    if placement == "cluster":  # every step pod asks for the CPU/memory the placement gives it
        want = s.placement.step_resources
        executors = yaml.safe_load((tmp_path / "ads_full.yaml").read_text())["deploymentSpec"]["executors"]
        for name, ex in executors.items():
            step = name.removeprefix("exec-").replace("-", "_")
            res, given = ex["container"]["resources"], want.get(step, want["default"])
            assert res["resourceCpuRequest"] == given["cpu_request"]
            assert res["resourceMemoryRequest"] == given["memory_request"]
        assert (
            executors["exec-moon"]["container"]["resources"]["memoryRequest"] == 64.0
        )  # GB, as kfp writes it
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
