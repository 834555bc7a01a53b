"""Transports: one interface, one implementation per way of sending (SMTP, Graph, memory)."""
