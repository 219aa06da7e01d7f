"""Stage: validation."""
