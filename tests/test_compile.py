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
        assert spec["pipelineInfo"]["name"] == "ads-full"
        executors = spec["deploymentSpec"]["executors"]
        assert executors and {e["container"]["image"] for e in executors.values()} == {s.placement.image}
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert set(params) >= {"settings_json", "source", "tracking_uri", "parent_run_id"}
        # the preset travels as the default: an uploaded YAML runs as compiled
        assert '"preset":"' + s.preset + '"' in params["settings_json"]["defaultValue"]
        tasks = spec["root"]["dag"]["tasks"]
        assert "validate" in tasks and any(t.startswith("condition-branches") for t in tasks)
