"""adflow: an MLOps platform for e-commerce search advertising (KFP pipelines from data validation to A/B)."""

__version__ = "0.1.0"
# The container image every component runs in on a cluster (infra/docker/Dockerfile builds it). Compiled
# pipelines get the placement's `image` stamped over this default (adflow/compile.py).
DEFAULT_IMAGE = f"ghcr.io/adflow/adflow:{__version__}-cpu"
