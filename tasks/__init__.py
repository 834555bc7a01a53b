"""The Celery app and its thin tasks, the producer API, and the command line."""
