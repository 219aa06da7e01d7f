"""Stage: features."""
