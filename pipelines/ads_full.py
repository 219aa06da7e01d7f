"""ads_full: the whole chain, data to deployment. Each issue adds its stages here.

    make run                                         # local: KFP local runner, tiny preset
    adflow run --preset full --placement cluster     # submit to Kubeflow (compiled with the placement's image)
    make compile                                     # build/pipelines/ads_full.yaml

Stages so far: synthesise the world (or ingest/import a data set) -> validate every table.
(No `from __future__ import annotations` here: KFP reads the pipeline's annotations at definition time.)
"""

from dataclasses import dataclass

from kfp import dsl

from components.data.ingest.component import ingest
from components.data.synth.component import synth
from components.validation.validate.component import validate


@dataclass(frozen=True)
class Stage:
    name: str
    branch_of: str | None = None  # stages sharing a branch group are alternatives: one runs
    doc: str = ""


STAGES = (
    Stage("synth", "data", "generate the synthetic ad world"),
    Stage("ingest", "data", "copy or import a data set into the contract"),
    Stage("validate", None, "Great Expectations over every table; stops the run on failure"),
)


@dsl.pipeline(
    name="ads-full", description="Ads platform chain: data -> validation (-> training, gates, deployment)."
)
def ads_full(
    settings_json: str, source: str = "synth", tracking_uri: str = "", parent_run_id: str = ""
) -> None:
    with dsl.If(source == "synth", name="synthetic-world"):
        world = synth(settings_json=settings_json, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
        world.set_display_name("synth")
    with dsl.Else(name="import-data"):
        imported = ingest(settings_json=settings_json, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
        imported.set_display_name("ingest")
    dataset = dsl.OneOf(world.outputs["dataset"], imported.outputs["dataset"])
    checked = validate(
        settings_json=settings_json, tracking_uri=tracking_uri, parent_run_id=parent_run_id, dataset=dataset
    )
    checked.set_display_name("validate")
