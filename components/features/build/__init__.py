"""Build Feast feature tables, apply, materialize, and cut the point-in-time training set."""
