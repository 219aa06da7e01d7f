"""KFP wrapper of components/registry/register/core.py."""

from kfp import dsl

from adflow import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def register(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    model: dsl.Input[dsl.Model],
    report: dsl.Input[dsl.HTML],
) -> int:
    """Register the gated model; alias it challenger (and champion if there is none)."""
    from components.registry.register.core import run

    return run(settings_json, tracking_uri, parent_run_id, model.path, report.path)
