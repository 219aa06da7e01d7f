"""`adflow pipeline submit`: what can be checked without a Kubeflow Pipelines server.

Refusals happen before anything is compiled or sent; a dry run compiles the package that would be uploaded, and
every step in it names the placement's image; a host that refuses connections is an error naming the host.
Uploading and running against a real KFP API needs a cluster (not faked here).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from adflow.cli import app
from adflow.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
DEV_PLACEMENT = str(ROOT / "infra" / "k8s" / "overlays" / "dev" / "placement.yaml")
runner = CliRunner()


def images(package: Path) -> set[str]:
    spec = next(yaml.safe_load_all(package.read_text()))  # then the platform spec: the workspace mount
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--placement", "local"], "no Kubeflow Pipelines host"),  # local placement: no kfp_host
        (["--host", "ftp://kfp.example:21"], "is not an http(s) URL"),
        (["--host", "localhost:8080"], "is not an http(s) URL"),
        (["--host", "http://127.0.0.1:8080", "--pipeline", "nope"], "unknown pipeline 'nope'"),
        (["--host", "http://127.0.0.1:8080", "--token-env", "ADFLOW_TEST_UNSET_TOKEN"], "is not set"),
        (["--set", "placement.num_workers=0"], "num_workers"),
    ],
)
def test_submit_refuses_before_compiling(args: list[str], message: str, tmp_path: Path) -> None:
    r = runner.invoke(app, ["pipeline", "submit", "--out", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not list(tmp_path.iterdir())  # nothing compiled, nothing sent


@pytest.mark.parametrize(
    ("args", "image"),
    [
        ([], load_settings("full", "cluster").placement.image),  # defaults: full preset, cluster placement
        (["--preset", "tiny", "--placement", DEV_PLACEMENT], "ghcr.io/adflow/adflow:0.1.0-cpu"),
        (
            ["--set", "placement.image=registry.example/adflow:9.9.9-cuda"],
            "registry.example/adflow:9.9.9-cuda",
        ),
    ],
)
def test_dry_run_compiles_with_the_placement_image(args: list[str], image: str, tmp_path: Path) -> None:
    r = runner.invoke(app, ["pipeline", "submit", "--dry-run", "--out", str(tmp_path), *args])
    assert r.exit_code == 0, r.output
    package = tmp_path / "ads_full.yaml"
    assert images(package) == {image}
    assert f"image {image}" in r.output and "dry run: nothing sent to http://" in r.output
    params = next(yaml.safe_load_all(package.read_text()))["root"]["inputDefinitions"]["parameters"]
    assert image in params["settings_json"]["defaultValue"]  # the settings the run gets are the compiled ones


def test_unreachable_host_is_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    r = runner.invoke(app, ["pipeline", "submit", "--host", host, "--out", str(tmp_path)])
    assert r.exit_code == 1, r.output
    assert f"error: submitting to {host} failed" in r.output
