"""KFP wrapper of components/training/creative/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def creative(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    selector: dsl.Output[dsl.Model],
) -> None:
    """Creative4U: CoT-SFT then GRPO of the creative selector (TRL on Ray Train), evaluation, tournament,
    the distilled fast scorer."""
    from components.training.creative.core import run

    run(settings_json, tracking_uri, parent_run_id, dataset.path, selector.path)
