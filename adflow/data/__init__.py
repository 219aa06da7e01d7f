"""Data: the synthetic ad world, importers for real data, and dataset I/O (the contract is adflow.contract)."""
