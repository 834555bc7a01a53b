"""Real loopback peers for the tests and the benchmark (SMTP, Graph, redis); not in the wheel."""
