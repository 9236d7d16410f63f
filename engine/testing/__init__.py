"""Helpers that start real engines and stores for tests, benchmarks and the load test."""
