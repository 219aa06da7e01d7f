"""Synthesise the ad world into the data contract."""
