"""Delivery core: messages, MIME, errors, retry policy, transports, records; no Celery here."""
