"""The HTTP API and the administrators' pages (FastAPI): mail settings, e-mails, health."""
