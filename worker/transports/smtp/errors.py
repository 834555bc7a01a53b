"""Translation of aiosmtplib, ssl and socket failures into outbox's delivery errors."""

from __future__ import annotations

import socket
import ssl
from typing import Literal

import aiosmtplib

from config.errors import ConfigurationError, DeliveryError, PermanentError
from config.mail_settings import SmtpSettings
from worker.classify import (
    ConnectionProblem,
    ConnectionProblemKind,
    SmtpPhase,
    SmtpReply,
    classify,
    delivery_error,
    error_type,
    judge,
)

__all__ = ["SMTP_FAILURES", "SmtpStage", "server_address", "smtp_error"]

# The stages of a session whose failures are translated; each names what was being done.
SmtpStage = Literal["connect", "login", "send"]
# Everything aiosmtplib, ssl and socket raise (ssl.SSLError and TimeoutError are OSErrors).
SMTP_FAILURES = (aiosmtplib.SMTPException, OSError)

_PHASE_WORDS: dict[SmtpPhase, str] = {
    "connect": "refused the connection",
    "tls": "refused STARTTLS",
    "auth": "rejected the login",
    "mail": "refused the sender",
    "rcpt": "refused the recipient",
    "data": "refused the message",
}


def server_address(settings: SmtpSettings) -> str:
    """The server as every error names it: ``host:port``."""
    return f"{settings.server}:{settings.port}"


def smtp_error(exc: BaseException, stage: SmtpStage, server: str, port: int) -> DeliveryError:
    """The one translation of an aiosmtplib, ssl or socket failure into outbox's errors,
    classed by the one classifier; ``stage`` says what the session was doing."""
    where = f"{server}:{port}"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_error(exc, _reply_phase(exc, stage))
    if stage == "connect":
        return _connect_error(exc, server, where)
    if stage == "send" and isinstance(exc, aiosmtplib.SMTPNotSupported):
        # e.g. SMTPUTF8 needed but not offered: another attempt cannot change that.
        return PermanentError(f"SMTP server cannot take this message: {exc}")
    if isinstance(exc, OSError):
        # A broken connection says nothing about the credentials or the message: retry later.
        kind: ConnectionProblemKind = "timeout" if isinstance(exc, TimeoutError) else "disconnected"
        during = "during login" if stage == "login" else "while sending"
        return _problem_error(kind, f"connection to {where} lost {during}: {exc}")
    return ConfigurationError(f"SMTP login to {where} impossible: {exc}")


def _reply_phase(exc: aiosmtplib.SMTPResponseException, stage: SmtpStage) -> SmtpPhase:
    match stage:
        case "connect":
            # Only STARTTLS raises a reply error after the greeting and EHLO went well.
            greeting_or_ehlo = (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError)
            return "connect" if isinstance(exc, greeting_or_ehlo) else "tls"
        case "login":
            return "auth"
        case "send":
            return "data" if isinstance(exc, aiosmtplib.SMTPDataError) else "mail"


def _reply_error(exc: aiosmtplib.SMTPResponseException, phase: SmtpPhase) -> DeliveryError:
    verdict = judge(SmtpReply(exc.code, phase, exc.message))
    reason = f"SMTP server {_PHASE_WORDS[phase]}: {exc.code} {exc.message}"
    if verdict.advice:
        reason = f"{reason}; {verdict.advice}"
    return delivery_error(verdict.kind, reason, code=exc.code, reply=exc.message)


def _problem_error(kind: ConnectionProblemKind, reason: str) -> DeliveryError:
    return error_type(classify(ConnectionProblem(kind)))(reason)


def _connect_error(exc: BaseException, server: str, where: str) -> DeliveryError:
    for cause in _causes(exc):
        error = _cause_error(cause, server, where)
        if error is not None:
            return error
    if isinstance(exc, TimeoutError):
        return _problem_error("timeout", f"timed out connecting to {where}")
    if type(exc) is aiosmtplib.SMTPException:
        # Raised by aiosmtplib itself, e.g. "STARTTLS extension not supported by server"
        # with TLS mode starttls: only a settings change can help.
        return _problem_error("tls", f"cannot secure the connection to {where}: {exc}")
    return _problem_error("disconnected", f"cannot connect to {where}: {exc}")


def _cause_error(cause: BaseException, server: str, where: str) -> DeliveryError | None:
    """The error for a connect failure caused by ``cause``, if it is one that says why."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _problem_error(
            "certificate",
            f"certificate of {where} not trusted ({cause.verify_message}); "
            "turn on 'accept any certificate' or trust its CA with OUTBOX_CA_BUNDLE",
        )
    if isinstance(cause, ssl.SSLError):
        return _problem_error(
            "tls",
            f"TLS handshake with {where} failed ({cause.reason}); check the TLS mode for this port",
        )
    if isinstance(cause, socket.gaierror):
        return _problem_error("dns", f"cannot resolve host {server!r}")
    if isinstance(cause, ConnectionRefusedError):
        return _problem_error("refused", f"connection to {where} refused")
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
