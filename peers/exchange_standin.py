"""Local stand-in for Exchange Online's SMTP client submission endpoint (smtp.office365.com:587).

An aiosmtpd server on 127.0.0.1 that answers as Microsoft documents Exchange Online's SMTP AUTH
endpoint: STARTTLS, then AUTH XOAUTH2 with a token from the identity stand-in
(``peers.graph_standin.GraphStandIn``), send-as checked at MAIL FROM, per-mailbox
sending limits, scripted throttling, and an enhanced status code (RFC 3463) on every reply.
Each rule cites the Microsoft document it follows; where Microsoft does not document a detail,
the comment says so and what was chosen instead.

Documents cited below, by short name:

- [OAUTH] "Authenticate an IMAP, POP or SMTP connection using OAuth",
  learn.microsoft.com/exchange/client-developer/legacy-protocols/
  how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
- [FIX] "Fix issues with printers, scanners, and LOB applications that send email using
  Microsoft 365 or Office 365", section "Fix issues with SMTP AUTH client submission",
  learn.microsoft.com/exchange/troubleshoot/email-delivery/
  fix-issues-with-printers-scanners-and-lob-applications-that-send-email-using-off
- [NDR] "Email non-delivery reports and SMTP errors in Exchange Online",
  learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/
  non-delivery-reports-in-exchange-online
- [THROTTLE] "Message storage and concurrent connection throttling for SMTP Authenticated
  Submission", learn.microsoft.com/exchange/troubleshoot/send-emails/smtp-submission-improvements
- [QUOTA] "Fix NDR error 'the sender's submission quota was exceeded' in Exchange Online",
  learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/
  fix-error-for-submission-quota-exceeded-in-exchange-online
- [LIMITS] "Exchange Online limits", section "Sending limits",
  learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/
  exchange-online-limits#sending-limits
- [BASIC] Exchange Team Blog, "Exchange Online to retire Basic auth for Client Submission
  (SMTP AUTH)", techcommunity.microsoft.com/blog/exchange/
  exchange-online-to-retire-basic-auth-for-client-submission-smtp-auth/4114750
- [CONCURRENCY] Exchange Team Blog, "Changes coming to the SMTP Authenticated Submission client
  protocol", techcommunity.microsoft.com/t5/exchange-team-blog/
  changes-coming-to-the-smtp-authenticated-submission-client/ba-p/607825
- [TELNET] "Use Telnet to test SMTP communication on Exchange servers",
  learn.microsoft.com/exchange/mail-flow/test-smtp-with-telnet (Exchange Server: the same SMTP
  stack, the only Microsoft transcript of its ordinary replies)
- [SIZE-LIMITS] "Message size and recipient limits in Exchange Server",
  learn.microsoft.com/exchange/mail-flow/message-size-limits
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import email.utils
import itertools
import re
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from types import TracebackType
from typing import Final, Literal, Protocol

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, syntax

__all__ = [
    "AUTH_SUCCESSFUL",
    "AUTH_UNSUCCESSFUL",
    "BASIC_AUTH_DISABLED",
    "BASIC_AUTH_NOT_SUPPORTED",
    "CONCURRENT_CONNECTIONS_LIMIT",
    "DAILY_RECIPIENT_LIMIT",
    "HOST",
    "MAX_MESSAGE_BYTES",
    "NOT_AUTHENTICATED",
    "OUTLOOK_SCOPE",
    "SENDER_THREAD_LIMIT",
    "SEND_AS_DENIED",
    "SERVER_NAME",
    "SERVICE_NOT_AVAILABLE",
    "SMTP_AUTH_DISABLED_FOR_TENANT",
    "SUBMISSION_QUOTA_EXCEEDED",
    "TOO_MANY_RECIPIENTS",
    "AcceptedMessage",
    "ExchangeStandIn",
    "OverRate",
    "Refusal",
    "ThrottleCommand",
    "TokenAuthority",
    "exchange_reply",
    "max_in_window",
    "xoauth2_string",
]

HOST: Final = "127.0.0.1"
# The server name in [OAUTH]'s sample failure reply; real replies carry the front end's name.
SERVER_NAME: Final = "SN2PR00CA0018.namprd00.prod.outlook.com"
# [OAUTH], client credentials grant: "You must use https://outlook.office365.com/.default in
# the scope property in the body payload for the access token request."
OUTLOOK_SCOPE: Final = "https://outlook.office365.com/.default"
# [LIMITS] "Message size limit": 150 MB (150 * 1024 * 1024), advertised as EHLO's SIZE.
MAX_MESSAGE_BYTES: Final = 150 * 1024 * 1024

# -- replies, verbatim where Microsoft documents them -------------------------------------

# [OAUTH], "SMTP Protocol Exchange", both sample exchanges.
AUTH_SUCCESSFUL: Final = "235 2.7.0 Authentication successful"
AUTH_UNSUCCESSFUL: Final = f"535 5.7.3 Authentication unsuccessful [{SERVER_NAME}]"
# [BASIC]: "any clients or apps connecting using Basic auth with Client Submission (SMTP AUTH)
# will receive this response".
BASIC_AUTH_NOT_SUPPORTED: Final = (
    "550 5.7.30 Basic authentication is not supported for Client Submission."
)
# [FIX] documents the "535 5.7.139 Authentication unsuccessful, ..." family (its examples
# name the federated STS); the two endings below are the server's wording for Basic auth
# turned off and SMTP AUTH turned off for the tenant, which Microsoft's pages do not quote.
BASIC_AUTH_DISABLED: Final = (
    "535 5.7.139 Authentication unsuccessful, basic authentication is disabled."
)
SMTP_AUTH_DISABLED_FOR_TENANT: Final = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
    "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."
)
# [FIX] "Error: Authentication unsuccessful" lists "5.7.57 Client not authenticated to send
# mail"; [NDR] places 5.7.57 at MAIL FROM. The 530 is RFC 4954's "authentication required"
# code, which [TELNET] shows Exchange answering at MAIL FROM ("530 5.7.1 Client was not
# authenticated").
NOT_AUTHENTICATED: Final = "530 5.7.57 Client not authenticated to send mail"
# [FIX] quotes "5.7.60 SMTP; Client does not have permissions to send as this sender." without
# a three-digit code; 550 is the code reported with it in the field, not from Microsoft.
SEND_AS_DENIED: Final = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
# [THROTTLE] quotes "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException";
# what follows the ";" ends in [QUOTA]'s NDR sentence ("The message can't be submitted because
# the sender's submission quota was exceeded."). Microsoft does not quote the whole line; this
# is the form servers send (clients match on the part before the ";").
SUBMISSION_QUOTA_EXCEEDED: Final = (
    "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to "
    "process message due to a permanent exception with message The message can't be "
    "submitted because the sender's submission quota was exceeded."
)
# [NDR], 5.1.90: "The sender has exceeded the recipient rate limit".
DAILY_RECIPIENT_LIMIT: Final = (
    "550 5.1.90 Your message can't be sent because you've reached your daily limit for "
    "message recipients"
)
# [SIZE-LIMITS]: over the recipient limit "the connection receives the error, `452 4.5.3 Too
# many recipients`" and the sender resends to the rest; [NDR] lists 4.5.3 "Too many recipients".
TOO_MANY_RECIPIENTS: Final = "452 4.5.3 Too many recipients"
# [CONCURRENCY]: connections beyond three per mailbox "will be rejected with one of the
# following errors: 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded. / 432 4.3.2
# concurrent connection limit exceeded". [THROTTLE] gives the current wording of the second.
SENDER_THREAD_LIMIT: Final = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
CONCURRENT_CONNECTIONS_LIMIT: Final = "432 4.3.2 Concurrent connections limit exceeded."
# For throttle_next: RFC 5321 section 4.2.3's 421 text with the 4.3.2 "Service not available"
# of "Non-delivery reports and bounce messages in Exchange Server" (learn.microsoft.com/
# exchange/mail-flow/non-delivery-reports-and-bounce-messages/
# non-delivery-reports-and-bounce-messages). A 421 closes the connection after the reply
# (RFC 5321 section 3.8).
SERVICE_NOT_AVAILABLE: Final = "421 4.3.2 Service not available, closing transmission channel"

# [TELNET]'s transcript and "Step 4" list of replies.
_SENDER_OK: Final = "250 2.1.0 Sender OK"
_RECIPIENT_OK: Final = "250 2.1.5 Recipient OK"
_CLOSING: Final = "221 2.0.0 Service closing transmission channel"
_UNRECOGNIZED: Final = "500 5.3.3 Unrecognized command"
_INVALID_DOMAIN: Final = "501 5.5.4 Invalid domain name"
# Not in Microsoft's pages: the endpoint's own wording for these, each with its RFC 3463 code.
_OK: Final = "250 2.0.0 OK"
_RESETTING: Final = "250 2.0.0 Resetting"
_INVALID_ARGUMENTS: Final = "501 5.5.4 Invalid arguments"
_TOO_BIG: Final = "552 5.3.4 Message size exceeds fixed maximum message size"

_XOAUTH2_BEARER: Final = re.compile(r"auth=bearer ", re.IGNORECASE)
_HAS_ENHANCED_CODE: Final = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
# aiosmtpd's own replies that carry no enhanced status code, as Exchange would word them.
_REPLACED_REPLIES: Final[Mapping[str, str]] = {
    "250 OK": _OK,
    "221 Bye": _CLOSING,
    # [TELNET]'s reply to DATA.
    "354 End data with <CR><LF>.<CR><LF>": "354 Start mail input; end with <CRLF>.<CRLF>",
    "220 Ready to start TLS": "220 2.0.0 SMTP server ready",
    "500 Error: bad syntax": _UNRECOGNIZED,
    "503 Error: send HELO first": "503 5.5.2 Send hello first",
    "503 Error: send EHLO first": "503 5.5.2 Send hello first",
    "503 Error: need MAIL command": "503 5.5.2 Need mail command",
    "503 Error: need RCPT command": "503 5.5.2 Need rcpt command",
    "503 Error: nested MAIL command": "503 5.5.2 Sender already specified",
    "503 Already authenticated": "503 5.5.2 Already authenticated",
    "552 Error: Too much mail data": _TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": _TOO_BIG,
}
_REPLACED_PREFIXES: Final[tuple[tuple[str, str], ...]] = (
    ("500 Error: command ", _UNRECOGNIZED),
    ("501 Syntax:", _INVALID_ARGUMENTS),
    ("501 Not enough value", _INVALID_ARGUMENTS),
    ("501 Too many values", _INVALID_ARGUMENTS),
)

ThrottleCommand = Literal["MAIL", "DATA"]
# What a message over messages_per_minute gets; see ExchangeStandIn.
OverRate = Literal["refuse", "delay"]


class TokenAuthority(Protocol):
    """Whoever issued the access tokens: GraphStandIn in the tests."""

    def token_scope(self, token: str) -> str | None:
        """The scope ``token`` was issued for; None if it is unknown or expired."""
        ...


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """One message accepted with 250 at the end of DATA."""

    mailbox: str  # the mailbox the client authenticated as, spelled as configured
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    message_id: str | None  # the Message-ID header, as the client wrote it
    arrived_at: float  # time.time() when the final "." was accepted
    # When Exchange hands the message on: later than arrived_at only with over_rate="delay".
    released_at: float


@dataclass(frozen=True, slots=True)
class Refusal:
    """One 4xx/5xx reply, with the command it answered."""

    at: float  # time.time()
    command: str  # "AUTH", "MAIL", "RCPT" or "DATA"
    reply: str  # the full reply line
    mailbox: str | None  # the authenticated mailbox, if any
    detail: str = ""  # why, for test failure messages; never sent to the client


@dataclass(frozen=True, slots=True)
class _Throttle:
    reply: str
    command: ThrottleCommand


@dataclass(slots=True)
class _MailboxState:
    arrivals: list[float] = field(default_factory=list)  # of accepted messages, ascending
    recipient_totals: list[int] = field(default_factory=list)  # running sum, per arrival
    releases: list[float] = field(default_factory=list)  # ascending
    in_flight: int = 0  # transactions between MAIL FROM and their end

    def arrivals_after(self, cutoff: float) -> int:
        return len(self.arrivals) - bisect.bisect_right(self.arrivals, cutoff)

    def recipients_after(self, cutoff: float) -> int:
        if not self.arrivals:
            return 0
        first = bisect.bisect_right(self.arrivals, cutoff)
        before = self.recipient_totals[first - 1] if first else 0
        return self.recipient_totals[-1] - before

    def release_time(self, now: float, limit: int, window_seconds: float) -> float:
        # [THROTTLE]: the excess is "carried over to the following minutes": the n-th message
        # leaves no sooner than one window after the (n - limit)-th left.
        if limit <= 0:
            return float("inf")
        if len(self.releases) < limit:
            return now
        return max(now, self.releases[-limit] + window_seconds)

    def add(self, arrived_at: float, recipients: int, released_at: float) -> None:
        total = self.recipient_totals[-1] if self.recipient_totals else 0
        self.arrivals.append(arrived_at)
        self.recipient_totals.append(total + recipients)
        self.releases.append(released_at)


def xoauth2_string(mailbox: str, token: str) -> str:
    """The SASL XOAUTH2 initial response before base64, as [OAUTH] defines it."""
    # [OAUTH] "SASL XOAUTH2": base64("user=" + userName + "^Aauth=Bearer " + accessToken +
    # "^A^A"), where ^A is %x01.
    return f"user={mailbox}\x01auth=Bearer {token}\x01\x01"


def _parse_xoauth2(blob: bytes) -> tuple[str, str] | None:
    """(mailbox, token) from a decoded XOAUTH2 response, or None if it is malformed."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = text.split("\x01")
    if len(parts) != 4 or parts[2] or parts[3]:
        return None
    user, auth = parts[0], parts[1]
    # RFC 6750 section 2.1: the "Bearer" scheme name is case-insensitive.
    if not user.startswith("user=") or not _XOAUTH2_BEARER.match(auth):
        return None
    mailbox, token = user[len("user=") :], auth[len("auth=Bearer ") :]
    if not mailbox or not token:
        return None
    return mailbox, token


def max_in_window(times: Sequence[float], window_seconds: float) -> int:
    """The most of ``times`` that fall in any span (t - window_seconds, t]."""
    ordered = sorted(times)
    most = 0
    start = 0
    for end, moment in enumerate(ordered):
        while start <= end and ordered[start] <= moment - window_seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def exchange_reply(line: str) -> str:
    """A reply line as Exchange words it: with an RFC 3463 enhanced status code.

    RFC 2034 section 4 exempts the greeting and the replies to HELO and EHLO, which callers do
    not pass here, and 3xx replies carry none.
    """
    replaced = _REPLACED_REPLIES.get(line)
    if replaced is not None:
        return replaced
    if line[:1] == "3" or _HAS_ENHANCED_CODE.match(line):
        return line
    for prefix, replacement in _REPLACED_PREFIXES:
        if line.startswith(prefix):
            return replacement
    # Anything else aiosmtpd says gets RFC 3463's "other undefined status" of its class.
    code, separator, text = line[:3], line[3:4] or " ", line[4:]
    return f"{code}{separator}{code[:1]}.0.0 {text}".rstrip()


@dataclass(slots=True)
class _Logins:
    """AUTH attempts, counted for tests."""

    password: int = 0  # AUTH LOGIN / PLAIN, every one refused
    xoauth2: int = 0  # successful AUTH XOAUTH2
    xoauth2_failures: int = 0


def _mailboxes_by_key(mailboxes: Iterable[str]) -> dict[str, str]:
    """Each mailbox as configured, by its lower-cased address: Exchange matches addresses
    without regard to case."""
    by_key = {address.lower(): address for address in mailboxes}
    if not by_key:
        raise ValueError("an ExchangeStandIn needs at least one mailbox")
    return by_key


def _send_as_by_key(send_as: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """The other addresses each mailbox may send as, all lower-cased, as ``_mailboxes_by_key``."""
    return {
        mailbox.lower(): frozenset(address.lower() for address in addresses)
        for mailbox, addresses in send_as.items()
    }


def _server_tls_context(certificate: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    return context


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ExchangeStandIn:
    """smtp.office365.com:587 on 127.0.0.1, in a background thread.

    ``mailboxes`` are the mailboxes the app may sign in as with XOAUTH2 (and send as);
    ``send_as`` adds, per mailbox, other addresses it holds Send As permission for. The limits
    are per mailbox and may be changed at any time; the server thread reads them per command:

    - ``messages_per_minute`` messages accepted in a sliding ``window_seconds`` window,
      counted at arrival (when the final "." of DATA is accepted). With
      ``over_rate="refuse"`` (the default) a message over it is refused at the end of DATA
      with SUBMISSION_QUOTA_EXCEEDED; with ``over_rate="delay"`` it is accepted and its
      ``released_at`` is carried over to a later window.
    - ``recipients_per_day`` recipients of accepted messages in a sliding
      ``recipient_window_seconds`` window; a message that would go over it is refused at the
      end of DATA with ``daily_limit_reply``.
    - ``recipients_per_message``: each RCPT beyond it gets TOO_MANY_RECIPIENTS.
    - ``concurrent_submissions``: transactions (MAIL FROM to the end of DATA or RSET) in
      flight at once; MAIL FROM beyond it gets CONCURRENT_CONNECTIONS_LIMIT. None: no limit.
    """

    def __init__(
        self,
        certificate: trustme.LeafCert,
        identity: TokenAuthority,
        mailboxes: Iterable[str],
        *,
        send_as: Mapping[str, Iterable[str]] | None = None,
        messages_per_minute: int = 30,
        recipients_per_day: int = 10_000,
        recipients_per_message: int = 500,
        window_seconds: float = 60.0,
        recipient_window_seconds: float = 24 * 3600.0,
        concurrent_submissions: int | None = 3,
        over_rate: OverRate = "refuse",
        basic_auth_reply: str = BASIC_AUTH_NOT_SUPPORTED,
        daily_limit_reply: str = DAILY_RECIPIENT_LIMIT,
        port: int | None = None,
    ) -> None:
        self.host = HOST
        self.port = port if port is not None else _free_port()
        self.identity = identity
        self._mailboxes = _mailboxes_by_key(mailboxes)
        self._send_as = _send_as_by_key(send_as or {})
        # [LIMITS] "Sending limits": recipient rate limit 10,000 recipients per day, message
        # rate limit 30 messages per minute, recipient limit 500 recipients per message.
        self.messages_per_minute = messages_per_minute
        self.recipients_per_day = recipients_per_day
        self.recipients_per_message = recipients_per_message
        self.window_seconds = window_seconds
        self.recipient_window_seconds = recipient_window_seconds
        # [THROTTLE]: "Up to three concurrent connections are allowed to send email messages at
        # the same time."
        self.concurrent_submissions = concurrent_submissions
        self.over_rate: OverRate = over_rate
        self.basic_auth_reply = basic_auth_reply
        self.daily_limit_reply = daily_limit_reply

        # One lock for everything the server thread writes and tests read.
        self._lock = threading.Lock()
        self._accepted: list[AcceptedMessage] = []
        self._refusals: list[Refusal] = []
        self._states: dict[str, _MailboxState] = {}
        self._throttles: deque[_Throttle] = deque()
        self._logins = _Logins()
        self._internal_ids = itertools.count(1)  # the InternalId of each accepted message

        self._tls_context = _server_tls_context(certificate)
        self._controller: _ExchangeController | None = None
        self._live: set[_ExchangeSMTP] = set()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        """Listen on ``self.port`` (the same port again after a ``stop()``)."""
        if self._controller is not None:
            raise RuntimeError("ExchangeStandIn is already running")
        controller = _ExchangeController(
            self,
            hostname=self.host,
            port=self.port,
            server_hostname=SERVER_NAME,
            decode_data=False,
            enable_SMTPUTF8=True,
            data_size_limit=MAX_MESSAGE_BYTES,
            tls_context=self._tls_context,
            # Not require_starttls: Exchange answers MAIL before AUTH with 5.7.57, also
            # before STARTTLS. AUTH itself is only offered over TLS.
            require_starttls=False,
            auth_require_tls=True,
            authenticator=self._password_login,
        )
        try:
            controller.start()
        except BaseException:
            controller.stop(no_assert=True)
            if not controller.loop.is_closed():
                controller.loop.close()
            raise
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and cut every open client connection; idempotent."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        controller.loop.call_soon_threadsafe(self._abort_clients)
        controller.stop()

    def __enter__(self) -> ExchangeStandIn:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ExchangeStandIn {self.host}:{self.port} {state}>"

    # -- scripting and records, for tests ---------------------------------------------------

    @property
    def mailboxes(self) -> tuple[str, ...]:
        return tuple(self._mailboxes.values())

    def throttle_next(
        self, count: int, reply: str = SENDER_THREAD_LIMIT, *, command: ThrottleCommand = "MAIL"
    ) -> None:
        """Answer the next ``count`` transactions with ``reply`` at MAIL FROM or end of DATA."""
        if reply[:1] not in ("4", "5"):
            raise ValueError(f"a throttle reply must be 4xx or 5xx, not {reply!r}")
        with self._lock:
            self._throttles.extend(_Throttle(reply, command) for _ in range(count))

    def accepted_messages(self, mailbox: str | None = None) -> list[AcceptedMessage]:
        with self._lock:
            messages = list(self._accepted)
        if mailbox is None:
            return messages
        return [m for m in messages if m.mailbox.lower() == mailbox.lower()]

    def refusals(self) -> list[Refusal]:
        with self._lock:
            return list(self._refusals)

    @property
    def password_logins(self) -> int:
        """AUTH LOGIN / PLAIN attempts; every one is refused."""
        with self._lock:
            return self._logins.password

    @property
    def xoauth2_logins(self) -> int:
        """Successful AUTH XOAUTH2."""
        with self._lock:
            return self._logins.xoauth2

    @property
    def xoauth2_failures(self) -> int:
        with self._lock:
            return self._logins.xoauth2_failures

    def max_messages_in_window(self, mailbox: str, window_seconds: float | None = None) -> int:
        """The most messages ``mailbox`` had accepted within any span of the window.

        The span is ``window_seconds`` long (default: the stand-in's), open at its start as the
        limiter's is, so with ``over_rate="refuse"`` this never exceeds messages_per_minute.
        """
        window = self.window_seconds if window_seconds is None else window_seconds
        return max_in_window([m.arrived_at for m in self.accepted_messages(mailbox)], window)

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[AcceptedMessage]:
        """Return the accepted messages once at least ``count`` have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.accepted_messages()
            if len(snapshot) >= count:
                return snapshot
            if time.monotonic() >= deadline:
                last = [(m.mail_from, m.rcpt_tos) for m in snapshot[-5:]]
                raise AssertionError(
                    f"expected at least {count} message(s) on {self.host}:{self.port} "
                    f"within {timeout}s, got {len(snapshot)}; the last envelopes: {last!r}"
                )
            time.sleep(0.02)

    # -- the rules, called from the server thread ---------------------------------------

    def _password_login(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        # [BASIC]: Basic auth (a password over AUTH LOGIN or PLAIN) is refused; the
        # exchange of the username and password runs first, as the refusal is the answer to
        # the credentials. smtp.office365.com does not offer PLAIN; a client that tries it
        # anyway gets the same refusal here.
        with self._lock:
            self._logins.password += 1
        if isinstance(server, _ExchangeSMTP):
            server.refusal_detail = f"Basic auth refused (AUTH {mechanism})"
        return AuthResult(success=False, handled=False, message=self.basic_auth_reply)

    def _xoauth2_login(self, blob: bytes) -> tuple[str | None, str]:
        """(the mailbox signed in, or None) and why not."""
        parsed = _parse_xoauth2(blob)
        mailbox: str | None = None
        if parsed is None:
            detail = "malformed XOAUTH2 response"
        else:
            user, token = parsed
            scope = self.identity.token_scope(token)
            if scope is None:
                detail = "token unknown to the identity stand-in, or expired"
            elif scope != OUTLOOK_SCOPE:
                # [OAUTH]: tokens for SMTP must be requested for outlook.office365.com; a
                # token for another resource (Graph) is not one Exchange accepts.
                detail = f"token issued for {scope!r}, not {OUTLOOK_SCOPE!r}"
            elif user.lower() not in self._mailboxes:
                # [OAUTH], client credentials: the app may only use the mailboxes the admin
                # granted it (Add-MailboxPermission).
                detail = f"the app may not use mailbox {user!r}"
            else:
                mailbox, detail = self._mailboxes[user.lower()], ""
        with self._lock:
            if mailbox is None:
                self._logins.xoauth2_failures += 1
            else:
                self._logins.xoauth2 += 1
        return mailbox, detail

    def _next_throttle(self, command: ThrottleCommand) -> str | None:
        # Called with the lock held.
        if self._throttles and self._throttles[0].command == command:
            return self._throttles.popleft().reply
        return None

    def _state(self, mailbox: str) -> _MailboxState:
        # Called with the lock held.
        return self._states.setdefault(mailbox.lower(), _MailboxState())

    def _begin_submission(self, mailbox: str, address: str) -> tuple[str, str]:
        """MAIL FROM's reply, and why if it is a refusal."""
        with self._lock:
            throttled = self._next_throttle("MAIL")
            if throttled is not None:
                return throttled, "scripted throttle"
            # [FIX]: "Your printer or application must send email from the same email address
            # that you entered as logon credentials", else "5.7.60 SMTP; Client does not have
            # permissions to send as this sender". Microsoft does not say which command gets
            # it; answered at MAIL FROM, where the envelope sender is first known.
            allowed = {mailbox.lower()} | self._send_as.get(mailbox.lower(), frozenset())
            if address.lower() not in allowed:
                return SEND_AS_DENIED, f"{mailbox} may not send as {address}"
            state = self._state(mailbox)
            limit = self.concurrent_submissions
            # [THROTTLE] / [CONCURRENCY]: more than three messages sent at the same time over
            # several connections. Which command is refused is not documented; MAIL FROM,
            # where a transaction starts.
            if limit is not None and state.in_flight >= limit:
                return CONCURRENT_CONNECTIONS_LIMIT, f"{state.in_flight} submissions in flight"
            state.in_flight += 1
        return _SENDER_OK, ""

    def _end_submission(self, mailbox: str) -> None:
        with self._lock:
            state = self._state(mailbox)
            state.in_flight = max(0, state.in_flight - 1)

    def _recipient(self, accepted_so_far: int) -> tuple[str, str]:
        # [LIMITS] recipient limit; [SIZE-LIMITS]: over it, 452 4.5.3 per recipient and the
        # client sends the rest in a next transaction (RFC 5321 section 4.5.3.1.10).
        limit = self.recipients_per_message
        if accepted_so_far >= limit:
            return TOO_MANY_RECIPIENTS, f"{limit} recipients per message"
        return _RECIPIENT_OK, ""

    def _submit(self, mailbox: str, envelope: Envelope) -> tuple[str, str]:
        """The reply to the final "." of DATA, and why if it is a refusal."""
        data = envelope.original_content or b""
        recipients = tuple(envelope.rcpt_tos)
        message_id = _message_id(data)
        now = time.time()
        with self._lock:
            throttled = self._next_throttle("DATA")
            if throttled is not None:
                return throttled, "scripted throttle"
            state = self._state(mailbox)
            count = len(recipients)
            refused = self._over_daily_limit(state, now, count) or self._over_rate(state, now)
            if refused is not None:
                return refused
            released = now
            if self.over_rate == "delay":
                # [THROTTLE]: "If the mailbox exceeds the per minute limit, then email delivery
                # delays occur. Any excess in message submissions is throttled and successively
                # carried over to the following minutes."
                released = state.release_time(now, self.messages_per_minute, self.window_seconds)
            state.add(now, count, released)
            internal_id = next(self._internal_ids)
            self._accepted.append(
                AcceptedMessage(
                    mailbox=mailbox,
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=recipients,
                    data=data,
                    message_id=message_id,
                    arrived_at=now,
                    released_at=released,
                )
            )
        # [TELNET]'s reply to the final ".".
        return (
            f"250 2.6.0 <{uuid.uuid4()}@{SERVER_NAME}> [InternalId={internal_id}, "
            f"Hostname={SERVER_NAME}] Queued mail for delivery",
            "",
        )

    def _over_daily_limit(
        self, state: _MailboxState, now: float, recipients: int
    ) -> tuple[str, str] | None:
        """The refusal of a message whose recipients would go over the recipient rate limit.

        [LIMITS]: "After the recipient rate limit is reached, messages can't be sent from the
        mailbox until the number of recipients that were sent messages in the past 24 hours
        drops below the limit." [NDR] names that 5.1.90; [THROTTLE] and [QUOTA] give
        SUBMISSION_QUOTA_EXCEEDED for the same limit (daily_limit_reply chooses). Refused at
        the end of DATA, where Exchange's store driver submits the message. Called with the
        lock held.
        """
        sent = state.recipients_after(now - self.recipient_window_seconds)
        if sent + recipients <= self.recipients_per_day:
            return None
        return self.daily_limit_reply, (
            f"{sent} recipients in the window + {recipients} > {self.recipients_per_day}"
        )

    def _over_rate(self, state: _MailboxState, now: float) -> tuple[str, str] | None:
        """With ``over_rate="refuse"``, the refusal of a message over the message rate limit.

        [LIMITS] message rate limit, in the wording Microsoft's Q&A quoted from it in 2021:
        "If a user submits messages at a rate that exceeds the limit via SMTP client
        submission, the messages will be rejected and the client will need to retry." No reply
        text is documented for this limit; this is the store driver's submission-quota
        refusal. (The newer [THROTTLE] describes a delay instead: over_rate="delay".) Called
        with the lock held.
        """
        if self.over_rate != "refuse":
            return None
        recent = state.arrivals_after(now - self.window_seconds)
        if recent < self.messages_per_minute:
            return None
        return SUBMISSION_QUOTA_EXCEEDED, f"{recent} messages in the last {self.window_seconds}s"

    def _record_refusal(self, command: str, reply: str, mailbox: str | None, detail: str) -> None:
        with self._lock:
            self._refusals.append(Refusal(time.time(), command, reply, mailbox, detail))

    def _admit(self, protocol: _ExchangeSMTP) -> None:
        with self._lock:
            self._live.add(protocol)

    def _forget(self, protocol: _ExchangeSMTP) -> None:
        with self._lock:
            self._live.discard(protocol)

    def _abort_clients(self) -> None:
        with self._lock:
            live = list(self._live)
        for protocol in live:
            transport = protocol.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            elif transport is not None:
                transport.close()


def _message_id(data: bytes) -> str | None:
    value = BytesHeaderParser().parsebytes(data).get("Message-ID")
    return None if value is None else str(value).strip()


class _ExchangeHandler:
    """aiosmtpd hooks that put the stand-in's rules into the SMTP dialogue."""

    def __init__(self, standin: ExchangeStandIn) -> None:
        self._standin = standin

    # aiosmtpd finds hooks by these exact (upper-case) names.
    async def handle_MAIL(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        assert isinstance(server, _ExchangeSMTP)
        mailbox = server.mailbox
        assert mailbox is not None  # check_auth_needed ran first
        reply, detail = self._standin._begin_submission(mailbox, address)
        if reply == _SENDER_OK:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            server.submitting = mailbox
        server.refusal_detail = detail
        return reply

    async def handle_RCPT(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        assert isinstance(server, _ExchangeSMTP)
        reply, detail = self._standin._recipient(len(envelope.rcpt_tos))
        if reply == _RECIPIENT_OK:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        server.refusal_detail = detail
        return reply

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        assert isinstance(server, _ExchangeSMTP)
        mailbox = server.mailbox
        assert mailbox is not None
        reply, detail = self._standin._submit(mailbox, envelope)
        server.refusal_detail = detail
        return reply

    async def handle_RSET(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        return _RESETTING

    async def handle_NOOP(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return _OK

    async def handle_QUIT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        return _CLOSING


class _ExchangeSMTP(SMTP):
    """aiosmtpd's SMTP protocol, answering as smtp.office365.com does."""

    # draft-murchison-sasl-login's prompts, which Exchange sends (base64 "VXNlcm5hbWU6").
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(
        self, handler: _ExchangeHandler, standin: ExchangeStandIn, **kwargs: object
    ) -> None:
        self.standin = standin
        self.submitting: str | None = None  # the mailbox whose transaction is in flight
        self.refusal_detail = ""
        self._command: str | None = None  # the command whose refusals are recorded
        self._greeted = False
        self._raw_replies = False  # replies to HELO/EHLO: RFC 2034 exempts them
        self._connected = False
        super().__init__(handler, **kwargs)  # type: ignore[arg-type]

    @property
    def mailbox(self) -> str | None:
        """The mailbox this connection signed in as with XOAUTH2."""
        session = self.session
        if session is None or not session.authenticated:
            return None
        return session.auth_data if isinstance(session.auth_data, str) else None

    # -- connection book-keeping ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this again after STARTTLS on the same connection.
        if not self._connected:
            self._connected = True
            self.standin._admit(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._end_submission()
        self.standin._forget(self)
        super().connection_lost(error)

    def _set_post_data_state(self) -> None:
        # After DATA, RSET, HELO/EHLO and STARTTLS: the transaction is over.
        self._end_submission()
        super()._set_post_data_state()  # type: ignore[no-untyped-call]

    def _end_submission(self) -> None:
        mailbox, self.submitting = self.submitting, None
        if mailbox is not None:
            self.standin._end_submission(mailbox)

    # -- replies ------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):
            # Only AUTH's 334 challenges are pushed as bytes.
            await super().push(status)
            return
        if not self._greeted:
            # [TELNET]: "220 mail1.fabrikam.com Microsoft ESMTP MAIL Service ready at
            # <day-date-time>".
            self._greeted = True
            now = email.utils.format_datetime(datetime.now(UTC))
            line = f"220 {SERVER_NAME} Microsoft ESMTP MAIL Service ready at {now}"
        elif self._raw_replies:
            line = status
        else:
            line = exchange_reply(status)
        if self._command is not None and line[:1] in ("4", "5"):
            # Recorded before the client can read the reply and look.
            self.standin._record_refusal(self._command, line, self.mailbox, self.refusal_detail)
        await super().push(line)
        if line.startswith("421") and self.transport is not None:
            # RFC 5321 section 3.8: a 421 reply closes the transmission channel.
            self.transport.close()

    async def _tracked(self, command: str, step: Awaitable[None]) -> None:
        self._command, self.refusal_detail = command, ""
        try:
            await step
        finally:
            self._command, self.refusal_detail = None, ""

    # -- commands -----------------------------------------------------------------------

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:  # noqa: N802 - aiosmtpd's name
        if not hostname:
            await self.push(_INVALID_DOMAIN)
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        session = self.session
        assert session is not None
        session.extended_smtp = True
        session.host_name = hostname
        # The extensions smtp.office365.com lists, in its order ([TELNET] shows Exchange
        # Server's list). Left out because aiosmtpd does not implement them: DSN, BINARYMIME,
        # CHUNKING. AUTH only after STARTTLS: "AUTH LOGIN XOAUTH2".
        lines = [f"{SERVER_NAME} Hello [{_peer_address(session)}]"]
        lines += [f"SIZE {MAX_MESSAGE_BYTES}", "PIPELINING", "ENHANCEDSTATUSCODES"]
        lines.append("STARTTLS" if session.ssl is None else "AUTH LOGIN XOAUTH2")
        lines += ["8BITMIME", "SMTPUTF8"]
        # As aiosmtpd's own EHLO does: room on the MAIL line for SIZE= and SMTPUTF8.
        self.command_size_limits["MAIL"] += 26 + 10
        self._raw_replies = True
        try:
            for number, text in enumerate(lines, start=1):
                await self.push(("250 " if number == len(lines) else "250-") + text)
        finally:
            self._raw_replies = False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str | None) -> None:  # noqa: N802
        if not hostname:
            await self.push(_INVALID_DOMAIN)
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        session = self.session
        assert session is not None
        session.extended_smtp = False
        session.host_name = hostname
        self._raw_replies = True
        try:
            await self.push(f"250 {SERVER_NAME} Hello [{_peer_address(session)}]")
        finally:
            self._raw_replies = False

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802
        await self._tracked("AUTH", super().smtp_AUTH(arg))

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        await self._tracked("MAIL", super().smtp_MAIL(arg))

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        await self._tracked("RCPT", super().smtp_RCPT(arg))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        await self._tracked("DATA", super().smtp_DATA(arg))

    async def check_auth_needed(self, caller_method: str) -> bool:
        # [NDR] 5.7.57 "Client was not authenticated to send anonymous mail during MAIL FROM":
        # the endpoint takes no mail before AUTH, before STARTTLS as well.
        if caller_method in ("MAIL", "RCPT", "DATA") and self.mailbox is None:
            self.refusal_detail = "not authenticated"
            await self.push(NOT_AUTHENTICATED)
            return True
        return False

    async def auth_XOAUTH2(self, _: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        # [OAUTH] "SMTP Protocol Exchange": "AUTH XOAUTH2 <base64 string in XOAUTH2 format>",
        # or "AUTH XOAUTH2" answered with "334" and the string on the next line.
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                # challenge_auth already answered ("*" to abort, or bad base64).
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                blob = b""
        mailbox, detail = self.standin._xoauth2_login(blob)
        if mailbox is None:
            self.refusal_detail = detail
            # [OAUTH]: a refused token gets "535 5.7.3 Authentication unsuccessful [...]"
            # straight away, without XOAUTH2's 334 error challenge.
            return AuthResult(success=False, handled=False, message=AUTH_UNSUCCESSFUL)
        return AuthResult(success=True, auth_data=mailbox, message=AUTH_SUCCESSFUL)


def _peer_address(session: Session) -> str:
    # aiosmtpd annotates peer as str; at run time it is the socket's peername tuple.
    peer: object = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return HOST


class _ExchangeController(Controller):
    """aiosmtpd Controller whose connections speak as the stand-in."""

    def __init__(self, standin: ExchangeStandIn, **kwargs: object) -> None:
        super().__init__(_ExchangeHandler(standin), **kwargs)  # type: ignore[arg-type]
        self._standin = standin

    def factory(self) -> SMTP:
        return _ExchangeSMTP(self.handler, self._standin, loop=self.loop, **self.SMTP_kwargs)
