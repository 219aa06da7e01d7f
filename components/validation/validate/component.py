"""KFP wrapper of components/validation/validate/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def validate(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    data_docs: dsl.Output[dsl.HTML],
) -> None:
    """Validate every table; a failure raises, which stops the pipeline before anything trains."""
    from components.validation.validate.core import run

    run(settings_json, tracking_uri, parent_run_id, dataset.path, data_docs.path)
