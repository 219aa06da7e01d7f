"""KFP wrapper of components/features/build/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def features(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    moon: dsl.Input[dsl.Dataset],
    feature_set: dsl.Output[dsl.Dataset],
) -> None:
    """Feast features (MOON's embeddings beside the text ones) and the point-in-time train/val/test sets."""
    from components.features.build.core import run

    run(settings_json, tracking_uri, parent_run_id, dataset.path, feature_set.path, moon.path)
