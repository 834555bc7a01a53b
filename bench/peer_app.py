"""The peer baseline: django-celery-email-reboot at its defaults, as a Django project runs it.

Bulk mode: the ``CeleryEmailBackend`` puts 10 e-mails in each Celery task
(``CELERY_EMAIL_CHUNK_SIZE``), and each task opens one connection with Django's SMTP backend
(STARTTLS and a login) and sends its 10 on it. Its packages are in the ``bench`` extra.
"""

from __future__ import annotations

import os

import django
from celery import Celery
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["djcelery_email"],
    EMAIL_BACKEND="djcelery_email.backends.CeleryEmailBackend",
    EMAIL_HOST="127.0.0.1",
    EMAIL_PORT=int(os.environ.get("PEER_SMTP_PORT", "25")),
    EMAIL_USE_TLS=True,
    EMAIL_HOST_USER=os.environ.get("PEER_USERNAME", ""),
    EMAIL_HOST_PASSWORD=os.environ.get("PEER_PASSWORD", ""),
)
django.setup()

app = Celery("peer", broker=os.environ.get("PEER_BROKER_URL", "redis://127.0.0.1:6379/3"))
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)

# After the app: its shared task binds to the current app.
import djcelery_email.tasks  # noqa: E402, F401
