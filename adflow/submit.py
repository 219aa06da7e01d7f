"""Upload a pipeline to Kubeflow Pipelines and start a run of it, compiled with the placement's image.

    adflow pipeline submit --host http://localhost:8080                     # full preset, cluster placement
    adflow pipeline submit --host http://localhost:8080 --preset tiny \
        --placement infra/k8s/overlays/dev/placement.yaml                    # the dev overlay's CPU cluster
    adflow pipeline submit --dry-run                                        # compile only; nothing is sent

The package is uploaded as a new version of the pipeline (`ads-full`, created on first upload), so the KFP UI
keeps every submitted version with the settings baked in as its parameter defaults; the run is started from
that version in the experiment (default: placement.mlflow_experiment). infra/README.md: the whole procedure.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from adflow.compile import compile_pipeline, load_pipeline, pipeline_arguments, read_ir
from adflow.config import Settings


class SubmitError(ValueError):
    """A submission refused before anything is sent: no or bad host, unknown pipeline, missing token."""


@dataclass
class Submission:
    pipeline: str
    package: Path
    image: str
    host: str
    arguments: dict[str, Any]
    pipeline_id: str | None = None
    version_id: str | None = None
    run_id: str | None = None

    def run_url(self) -> str | None:
        return f"{self.host}/#/runs/details/{self.run_id}" if self.run_id else None


def check_host(host: str | None) -> str:
    """The KFP API endpoint as an http(s) URL without a trailing slash, or a SubmitError saying what is wrong."""
    if not host:
        raise SubmitError("no Kubeflow Pipelines host: give --host or set placement.kfp_host")
    url = urlparse(host)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SubmitError(f"--host {host!r} is not an http(s) URL (e.g. http://localhost:8080)")
    return host.rstrip("/")


def prepare(
    settings: Settings,
    pipeline: str,
    host: str | None,
    out_dir: str | Path,
    parent_run_id: str = "",
    token_env: str | None = None,
) -> Submission:
    """Check everything and compile: the package names exactly the placement's image. Sends nothing."""
    url = check_host(host or settings.placement.kfp_host)
    try:
        load_pipeline(pipeline)
    except KeyError as e:
        raise SubmitError(str(e.args[0])) from e
    if token_env is not None and not os.environ.get(token_env):
        raise SubmitError(f"--token-env {token_env}: that environment variable is not set")
    package = compile_pipeline(pipeline, settings, out_dir)
    return Submission(
        pipeline, package, settings.placement.image, url, pipeline_arguments(settings, parent_run_id)
    )


def send(
    sub: Submission,
    experiment: str,
    run_name: str | None = None,
    namespace: str | None = None,
    token_env: str | None = None,
) -> Submission:
    """Upload the package as a new pipeline version and start a run of it (needs a reachable KFP API)."""
    import kfp

    client = kfp.Client(
        host=sub.host,
        namespace=namespace or "kubeflow",
        existing_token=os.environ[token_env] if token_env else None,
    )
    name = read_ir(sub.package)[0]["pipelineInfo"]["name"]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        created = client.upload_pipeline(str(sub.package), name, f"adflow {sub.pipeline}", namespace)
        pipeline_id = created.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        version_id = versions.pipeline_versions[0].pipeline_version_id
    else:
        version = client.upload_pipeline_version(
            str(sub.package), f"{name}-{sub.image.rsplit(':', 1)[-1]}-{stamp}", pipeline_id=pipeline_id
        )
        version_id = version.pipeline_version_id
    exp = client.create_experiment(experiment, namespace=namespace)
    run = client.run_pipeline(
        exp.experiment_id,
        run_name or f"{sub.pipeline}-{stamp}",
        params=sub.arguments,
        pipeline_id=pipeline_id,
        version_id=version_id,
    )
    sub.pipeline_id, sub.version_id, sub.run_id = pipeline_id, version_id, run.run_id
    return sub
