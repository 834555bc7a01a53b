"""Real loopback peers for tests and benchmarks (SMTP, Graph, redis); needs the `testing` extra."""
