"""Benchmarks: outbox against a naive design and the protocol limit, measured in one run."""
