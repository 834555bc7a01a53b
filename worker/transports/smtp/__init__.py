"""SMTP: the transport and everything of its protocol (sessions, their pool, transactions,
error translation), behind the one ``Transport`` protocol of ``worker.transports.base``."""

from worker.transports.smtp.errors import SMTP_FAILURES, smtp_error
from worker.transports.smtp.session import SessionOptions
from worker.transports.smtp.transport import SmtpTransport

__all__ = ["SMTP_FAILURES", "SessionOptions", "SmtpTransport", "smtp_error"]
