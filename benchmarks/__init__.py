"""Benchmarks of celerynb's ``cmap`` against its alternatives: ``python -m benchmarks``."""
