"""KFP wrapper of components/data/ingest/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def ingest(
    settings_json: str, tracking_uri: str, parent_run_id: str, dataset: dsl.Output[dsl.Dataset]
) -> None:
    """Copy or import the configured data source into the `dataset` artifact."""
    from components.data.ingest.core import run

    run(settings_json, tracking_uri, parent_run_id, dataset.path)
