"""Benchmarks: ``python -m benchmarks.ops`` times every registered implementation of every op."""
