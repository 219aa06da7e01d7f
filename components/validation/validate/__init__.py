"""Validate every table with Great Expectations; accept the dataset only if all pass."""
