"""data_check: synthesise or import a data set, then validate it, and stop. The first stages of ads_full alone.

    adflow run --pipeline data_check --set data.source=dataset --set data.path=<folder>

What a team runs on a new data drop before spending GPU hours on it: the same validation (Great Expectations,
Data Docs, drift against the last accepted data set) that gates ads_full, in a minute. It is also the console's
quick pipeline. (No `from __future__ import annotations` here: KFP reads the annotations at definition time.)
"""

from kfp import dsl

from pipelines.ads_full import Stage, validated_dataset

STAGES = (
    Stage("synth", "data", "generate the synthetic ad world"),
    Stage("ingest", "data", "copy or import a data set into the contract"),
    Stage("validate", None, "Great Expectations over every table; fails the run on failure"),
)
USES_RAY = False


@dsl.pipeline(name="data-check", description="Synthesise or import a data set, then validate every table.")
def data_check(
    settings_json: str, source: str = "synth", tracking_uri: str = "", parent_run_id: str = ""
) -> None:
    validated_dataset(settings_json, source, tracking_uri, parent_run_id)
