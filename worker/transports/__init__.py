"""Transports: one interface (``base``), one implementation per way of sending: SMTP and
Graph (a package each, holding everything of its protocol), and memory (for tests)."""
