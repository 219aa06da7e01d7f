"""KFP pipelines. Each module defines one pipeline function and its STAGES (for run summaries).

REGISTRY maps a pipeline's name to (module, function); `make compile` writes every entry as IR YAML.
"""

PIPELINES = {
    "ads_full": "pipelines.ads_full:ads_full",
    "data_check": "pipelines.data_check:data_check",
}
