"""KFP wrapper of components/data/synth/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def synth(
    settings_json: str, tracking_uri: str, parent_run_id: str, dataset: dsl.Output[dsl.Dataset]
) -> None:
    """Generate the synthetic ad world into the `dataset` artifact."""
    from components.data.synth.core import run

    run(settings_json, tracking_uri, parent_run_id, dataset.path)
