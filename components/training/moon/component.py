"""KFP wrapper of components/training/moon/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def moon(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    embeddings: dsl.Output[dsl.Dataset],
) -> None:
    """MOON pretraining + post-training on Ray Train, evaluation, catalog embeddings (Ray Data)."""
    from components.training.moon.core import run

    run(settings_json, tracking_uri, parent_run_id, dataset.path, embeddings.path)
