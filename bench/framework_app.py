"""The framework's own work, as a baseline for ``POST /api/emails``: a minimal FastAPI app
with one POST route that parses the same body with a pydantic model and answers 202.

``python -m bench.framework_app --port P`` serves it as ``outbox api`` serves outbox: the
same uvicorn options and start (``tasks.cli.processes``), one process per core by
default.
"""

from __future__ import annotations

import argparse
import uuid

from fastapi import FastAPI, status
from pydantic import BaseModel, Field

from tasks.cli.processes import default_workers, run_uvicorn, uvicorn_options

__all__ = ["Email", "create_app"]


class Email(BaseModel):
    """The fields of the benchmark's e-mail, as a plain model (no address checks)."""

    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str
    text: str | None = None
    html: str | None = None


def create_app() -> FastAPI:
    app = FastAPI(title="framework baseline")

    @app.post("/api/emails", status_code=status.HTTP_202_ACCEPTED)
    async def send_email(email: Email) -> dict[str, str]:
        return {"id": uuid.uuid4().hex, "status": "queued"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.framework_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=default_workers())
    options = parser.parse_args()
    run_uvicorn(
        "bench.framework_app:create_app",
        uvicorn_options(options.host, options.port, options.workers),
    )


if __name__ == "__main__":
    main()
