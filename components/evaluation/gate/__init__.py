"""Challenger vs champion gate."""
