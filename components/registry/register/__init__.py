"""Register a gated model and move its aliases."""
