"""Transports: one interface (``base``), one implementation per way of sending: SMTP, Graph,
and memory (for tests)."""
