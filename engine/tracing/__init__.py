"""Contact tracing: the model and pairing rule, the queries on the store, output formats, tracer credentials."""
