"""KFP wrapper of components/training/ctr/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train_ctr(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    feature_set: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
) -> None:
    """CiUBM and DIN, side by side, on Ray Train."""
    from components.training.ctr.core import run

    run(settings_json, tracking_uri, parent_run_id, feature_set.path, model.path)
