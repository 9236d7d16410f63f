"""Starting real engines and stores for tests, benchmarks and the load test: one helper instead of several."""
