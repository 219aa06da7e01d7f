"""ads_full: the whole chain, from data to a model served in an A/B test.

    make run                                         # local: KFP local runner, tiny preset
    adflow run --preset full --placement cluster     # submit to Kubeflow (compiled with the placement's image)
    make compile                                     # build/pipelines/ads_full.yaml

Stages so far: synthesise the world (or ingest/import a data set) -> validate every table -> Creative4U selector
(CoT-SFT, GRPO, evaluation, tournament, distilled fast scorer) -> MOON pretraining,
post-training and catalog embeddings on Ray -> Feast features (text and MOON embeddings) -> CiUBM + DIN on Ray Train -> offline gate vs the champion -> (only if it passes) MLflow registry
-> serve champion and challenger, simulated A/B test through the router.
(No `from __future__ import annotations` here: KFP reads the pipeline's annotations at definition time.)
"""

from dataclasses import dataclass
from typing import Any

from kfp import dsl

from components.data.ingest.component import ingest
from components.data.synth.component import synth
from components.deploy.abtest.component import abtest
from components.evaluation.gate.component import gate
from components.features.build.component import features
from components.registry.register.component import register
from components.training.creative.component import creative
from components.training.ctr.component import train_ctr
from components.training.moon.component import moon
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
    Stage(
        "creative",
        None,
        "Creative4U selector: CoT-SFT then GRPO (TRL on Ray), evaluation, tournament, fast scorer",
    ),
    Stage("moon", None, "MOON pretraining + post-training on Ray Train, evaluation, catalog embeddings"),
    Stage("features", None, "Feast feature tables, apply, materialize; point-in-time training set"),
    Stage("train_ctr", None, "CiUBM and DIN on Ray Train"),
    Stage("gate", None, "candidate vs champion on the same held-out split"),
    Stage("register", "deploy", "MLflow version + challenger alias (only if the gate passed)"),
    Stage("abtest", "deploy", "serve champion + challenger, bounded simulated A/B test, report"),
)
USES_RAY = True  # the runner starts one local Ray head for the run when no placement.ray_address is set


def validated_dataset(
    settings_json: Any, source: Any, tracking_uri: Any, parent_run_id: Any
) -> tuple[Any, Any]:
    """The stages every pipeline starts with: synthesise or import (by `source`), then validate. Called inside a
    pipeline function (the tasks join that pipeline); returns the data set and the validation task."""
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
    return dataset, checked


@dsl.pipeline(
    name="ads-full", description="Ads platform chain: data -> validation (-> training, gates, deployment)."
)
def ads_full(
    settings_json: str, source: str = "synth", tracking_uri: str = "", parent_run_id: str = ""
) -> None:
    dataset, checked = validated_dataset(settings_json, source, tracking_uri, parent_run_id)
    selector = creative(
        settings_json=settings_json, tracking_uri=tracking_uri, parent_run_id=parent_run_id, dataset=dataset
    )
    selector.after(checked)
    selector.set_display_name("creative")
    represented = moon(
        settings_json=settings_json, tracking_uri=tracking_uri, parent_run_id=parent_run_id, dataset=dataset
    )
    represented.after(checked)
    represented.set_display_name("moon")
    feats = features(
        settings_json=settings_json,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
        dataset=dataset,
        moon=represented.outputs["embeddings"],
    )
    trained = train_ctr(
        settings_json=settings_json,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
        feature_set=feats.outputs["feature_set"],
    )
    judged = gate(
        settings_json=settings_json,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
        feature_set=feats.outputs["feature_set"],
        model=trained.outputs["model"],
    )
    with dsl.If(judged.outputs["Output"] == True, name="deploy"):  # noqa: E712 - KFP builds the condition from it
        registered = register(
            settings_json=settings_json,
            tracking_uri=tracking_uri,
            parent_run_id=parent_run_id,
            model=trained.outputs["model"],
            report=judged.outputs["report"],
        )
        abtest(
            settings_json=settings_json,
            tracking_uri=tracking_uri,
            parent_run_id=parent_run_id,
            dataset=dataset,
            challenger_version=registered.output,
            selector=selector.outputs["selector"],
        ).set_display_name("abtest")
