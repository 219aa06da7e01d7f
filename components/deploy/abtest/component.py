"""KFP wrapper of components/deploy/abtest/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def abtest(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    challenger_version: int,
    selector: dsl.Input[dsl.Model],
    report: dsl.Output[dsl.HTML],
) -> None:
    """Serve champion and challenger (and the Creative4U selector behind `explain`), run a bounded simulated
    A/B test through the router, report it."""
    from components.deploy.abtest.core import run

    run(
        settings_json,
        tracking_uri,
        parent_run_id,
        dataset.path,
        challenger_version,
        report.path,
        selector.path,
    )
