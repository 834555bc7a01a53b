"""The naive design: one Celery task per e-mail, the whole message in its arguments, a new
SMTP connection (connect, STARTTLS, login) per e-mail. What most projects start with."""

from __future__ import annotations

import asyncio
import os
import ssl
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from celery import Celery

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/2"))
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)


@app.task(name="naive.send")  # type: ignore[untyped-decorator]
def send(message: dict[str, Any]) -> None:
    mime = EmailMessage()
    mime["From"] = message["from"]
    mime["To"] = ", ".join(message["to"])
    mime["Subject"] = message["subject"]
    mime.set_content(message["text"])
    context = ssl.create_default_context(cafile=os.environ["NAIVE_CA_FILE"])
    asyncio.run(
        aiosmtplib.send(
            mime,
            hostname="127.0.0.1",
            port=int(os.environ["NAIVE_SMTP_PORT"]),
            start_tls=True,
            tls_context=context,
            username=os.environ["NAIVE_USERNAME"],
            password=os.environ["NAIVE_PASSWORD"],
            local_hostname="bench",
        )
    )
