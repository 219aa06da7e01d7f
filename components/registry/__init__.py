"""Stage: model registry."""
