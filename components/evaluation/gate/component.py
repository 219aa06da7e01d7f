"""KFP wrapper of components/evaluation/gate/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def gate(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    feature_set: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    report: dsl.Output[dsl.HTML],
) -> bool:
    """True when the candidate may replace the champion; the report says why either way."""
    from components.evaluation.gate.core import run

    return run(settings_json, tracking_uri, parent_run_id, feature_set.path, model.path, report.path)
