"""Self-tests proving peers/exchange_standin.py answers as Exchange Online's SMTP AUTH."""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator

import aiosmtplib
import httpx
import pytest
import trustme

from peers.exchange_standin import (
    AUTH_UNSUCCESSFUL,
    BASIC_AUTH_DISABLED,
    BASIC_AUTH_NOT_SUPPORTED,
    CONCURRENT_CONNECTIONS_LIMIT,
    DAILY_RECIPIENT_LIMIT,
    NOT_AUTHENTICATED,
    OUTLOOK_SCOPE,
    SEND_AS_DENIED,
    SENDER_THREAD_LIMIT,
    SERVICE_NOT_AVAILABLE,
    SUBMISSION_QUOTA_EXCEEDED,
    TOO_MANY_RECIPIENTS,
    ExchangeStandIn,
    exchange_reply,
    max_in_window,
    xoauth2_string,
)
from peers.graph_standin import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT,
    GraphStandIn,
)

MAILBOX = "app@contoso.example"
OTHER_MAILBOX = "other@contoso.example"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} ")


def message(subject: str = "Hi", message_id: str = "<m1@contoso.example>") -> bytes:
    return (
        f"From: {MAILBOX}\r\nTo: a@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n\r\nBody\r\n"
    ).encode()


def text(reply: bytes | str) -> str:
    # smtplib's exceptions declare str | bytes; the server's replies arrive as bytes.
    return reply.decode() if isinstance(reply, bytes) else reply


def line(code: int, reply: bytes | str) -> str:
    """smtplib splits the code off; put the reply line back together."""
    return f"{code} {text(reply)}"


@pytest.fixture
def graph(server_certificate: trustme.LeafCert) -> Iterator[GraphStandIn]:
    with GraphStandIn(server_certificate) as standin:
        yield standin


@pytest.fixture
def issue_token(
    graph: GraphStandIn, client_tls_context: ssl.SSLContext
) -> Iterator[Callable[[str], str]]:
    with httpx.Client(
        base_url=graph.base_url, verify=client_tls_context, trust_env=False
    ) as client:

        def issue(scope: str = OUTLOOK_SCOPE) -> str:
            response = client.post(
                f"{DEFAULT_TENANT}/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": DEFAULT_CLIENT_ID,
                    "client_secret": DEFAULT_CLIENT_SECRET,
                    "scope": scope,
                },
            )
            assert response.status_code == 200, response.text
            token: str = response.json()["access_token"]
            return token

        yield issue


@pytest.fixture
def exchange(
    server_certificate: trustme.LeafCert, graph: GraphStandIn
) -> Iterator[ExchangeStandIn]:
    with ExchangeStandIn(
        server_certificate, graph, [MAILBOX, OTHER_MAILBOX], window_seconds=1.0
    ) as standin:
        yield standin


@pytest.fixture
def connect(
    exchange: ExchangeStandIn, client_tls_context: ssl.SSLContext
) -> Iterator[Callable[[], smtplib.SMTP]]:
    """Connections after EHLO, STARTTLS and EHLO again, closed at the end of the test."""
    opened: list[smtplib.SMTP] = []

    def open_connection() -> smtplib.SMTP:
        smtp = smtplib.SMTP(exchange.host, exchange.port, timeout=5)
        opened.append(smtp)
        smtp.starttls(context=client_tls_context)
        smtp.ehlo()
        return smtp

    yield open_connection
    for smtp in opened:
        try:
            smtp.quit()
        except smtplib.SMTPServerDisconnected:
            smtp.close()


def sign_in(smtp: smtplib.SMTP, mailbox: str, token: str, *, initial_response: bool = True) -> None:
    code, reply = smtp.auth(
        "XOAUTH2",
        lambda challenge=None: xoauth2_string(mailbox, token),
        initial_response_ok=initial_response,
    )
    assert line(code, reply) == "235 2.7.0 Authentication successful"


def test_ehlo_offers_starttls_then_auth_and_mail_needs_auth(
    exchange: ExchangeStandIn, client_tls_context: ssl.SSLContext
) -> None:
    with smtplib.SMTP(exchange.host, exchange.port, timeout=5) as smtp:
        smtp.ehlo()
        assert "starttls" in smtp.esmtp_features
        assert "auth" not in smtp.esmtp_features
        assert line(*smtp.mail(MAILBOX)) == NOT_AUTHENTICATED

        smtp.starttls(context=client_tls_context)
        smtp.ehlo()
        features = smtp.esmtp_features
        assert features["size"] == "157286400"
        assert features["auth"].split() == ["LOGIN", "XOAUTH2"]
        for name in ("pipelining", "enhancedstatuscodes", "8bitmime", "smtputf8"):
            assert name in features
        assert "starttls" not in features
        # Still not signed in: TLS alone does not allow mail.
        assert line(*smtp.mail(MAILBOX)) == NOT_AUTHENTICATED
    refusals = exchange.refusals()
    assert [(r.command, r.reply) for r in refusals] == [("MAIL", NOT_AUTHENTICATED)] * 2


def test_greeting_names_the_exchange_service(exchange: ExchangeStandIn) -> None:
    smtp = smtplib.SMTP()
    try:
        code, greeting = smtp.connect(exchange.host, exchange.port)
        assert code == 220
        assert "Microsoft ESMTP MAIL Service ready at" in text(greeting)
    finally:
        smtp.close()


def test_xoauth2_with_an_outlook_token_signs_in_and_the_message_is_recorded(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    smtp = connect()
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
    before = time.time()
    data = message(message_id="<fixed-id@contoso.example>")
    assert smtp.sendmail(MAILBOX, ["a@example.com", "b@example.com"], data) == {}

    [accepted] = exchange.wait_for_messages(1)
    assert accepted.mailbox == MAILBOX
    assert accepted.mail_from == MAILBOX
    assert accepted.rcpt_tos == ("a@example.com", "b@example.com")
    assert accepted.data == data
    assert accepted.message_id == "<fixed-id@contoso.example>"
    assert before <= accepted.arrived_at <= time.time()
    assert accepted.released_at == accepted.arrived_at
    assert exchange.xoauth2_logins == 1
    assert exchange.password_logins == 0
    assert exchange.refusals() == []


def test_xoauth2_with_the_334_continuation(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    smtp = connect()
    # "AUTH XOAUTH2" alone; the stand-in answers "334 " and reads the string on the next line.
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE), initial_response=False)
    assert smtp.sendmail(MAILBOX, ["a@example.com"], message()) == {}
    assert len(exchange.wait_for_messages(1)) == 1


def test_aiosmtplib_signs_in_with_its_own_xoauth2_and_is_refused_a_password(
    exchange: ExchangeStandIn,
    issue_token: Callable[[str], str],
    client_tls_context: ssl.SSLContext,
) -> None:
    token = issue_token(OUTLOOK_SCOPE)

    async def current_token() -> str:
        return token

    async def go() -> tuple[str, str]:
        try:
            async with aiosmtplib.SMTP(
                hostname=exchange.host,
                port=exchange.port,
                tls_context=client_tls_context,
                username=MAILBOX,
                oauth_token_generator=current_token,
                timeout=5,
            ) as smtp:
                _, sent = await smtp.sendmail(MAILBOX, ["a@example.com"], message())
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
                async with aiosmtplib.SMTP(
                    hostname=exchange.host,
                    port=exchange.port,
                    tls_context=client_tls_context,
                    username=MAILBOX,
                    password="a password",
                    timeout=5,
                ):
                    pass
            return sent, f"{refused.value.code} {refused.value.message}"
        finally:
            # aiosmtplib's close() returns before the TLS close_notify exchange is over.
            await asyncio.sleep(0.05)

    sent, refusal = asyncio.run(go())
    assert sent.startswith("2.6.0 <")
    assert sent.endswith("Queued mail for delivery")
    assert refusal == BASIC_AUTH_NOT_SUPPORTED
    assert len(exchange.wait_for_messages(1)) == 1
    assert (exchange.xoauth2_logins, exchange.password_logins) == (1, 1)


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("graph scope", "not 'https://outlook.office365.com/.default'"),
        ("expired", "unknown to the identity stand-in, or expired"),
        ("never issued", "unknown to the identity stand-in, or expired"),
        ("wrong user", "may not use mailbox 'stranger@contoso.example'"),
        ("malformed", "malformed XOAUTH2 response"),
    ],
)
def test_xoauth2_refused_as_exchange_refuses(
    case: str,
    detail: str,
    exchange: ExchangeStandIn,
    graph: GraphStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    user, token = MAILBOX, issue_token(OUTLOOK_SCOPE)
    if case == "graph scope":
        token = issue_token(GRAPH_SCOPE)
    elif case == "expired":
        graph.invalidate_tokens()
    elif case == "never issued":
        token = "not-a-token-anyone-issued"
    elif case == "wrong user":
        user = "stranger@contoso.example"
    smtp = connect()
    if case == "malformed":
        reply = line(*smtp.docmd("AUTH", "XOAUTH2 " + base64.b64encode(b"user=x").decode()))
    else:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.auth("XOAUTH2", lambda challenge=None: xoauth2_string(user, token))
        reply = line(refused.value.smtp_code, refused.value.smtp_error)
    assert reply == AUTH_UNSUCCESSFUL
    [refusal] = exchange.refusals()
    assert (refusal.command, refusal.reply, refusal.mailbox) == ("AUTH", AUTH_UNSUCCESSFUL, None)
    assert detail in refusal.detail
    assert exchange.xoauth2_failures == 1
    assert exchange.xoauth2_logins == 0
    # Not signed in, so no mail.
    assert line(*smtp.mail(MAILBOX)) == NOT_AUTHENTICATED


def test_password_logins_are_refused_with_5_7_30(
    exchange: ExchangeStandIn, connect: Callable[[], smtplib.SMTP]
) -> None:
    smtp = connect()
    with pytest.raises(smtplib.SMTPAuthenticationError) as login:
        smtp.login(MAILBOX, "a password")  # smtplib picks LOGIN, the only one offered
    assert line(login.value.smtp_code, login.value.smtp_error) == BASIC_AUTH_NOT_SUPPORTED
    # PLAIN is not offered, and refused the same way when a client tries it anyway.
    smtp.user, smtp.password = MAILBOX, "a password"
    with pytest.raises(smtplib.SMTPAuthenticationError) as plain:
        smtp.auth("PLAIN", smtp.auth_plain)
    assert line(plain.value.smtp_code, plain.value.smtp_error) == BASIC_AUTH_NOT_SUPPORTED
    assert exchange.password_logins == 2
    assert [(r.command, r.reply) for r in exchange.refusals()] == [
        ("AUTH", BASIC_AUTH_NOT_SUPPORTED)
    ] * 2


def test_the_5_7_139_variant_is_configurable(
    exchange: ExchangeStandIn, connect: Callable[[], smtplib.SMTP]
) -> None:
    exchange.basic_auth_reply = BASIC_AUTH_DISABLED
    with pytest.raises(smtplib.SMTPAuthenticationError) as login:
        connect().login(MAILBOX, "a password")
    assert line(login.value.smtp_code, login.value.smtp_error) == BASIC_AUTH_DISABLED


def test_mail_from_another_mailbox_is_refused_with_5_7_60(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    smtp = connect()
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
    # Another mailbox the app may use is still not this connection's sender.
    assert line(*smtp.mail(OTHER_MAILBOX)) == SEND_AS_DENIED
    assert line(*smtp.mail("someone@elsewhere.example")) == SEND_AS_DENIED
    # The signed-in mailbox itself, in any case.
    assert line(*smtp.mail(MAILBOX.upper())) == "250 2.1.0 Sender OK"
    refusals = exchange.refusals()
    assert [(r.command, r.reply, r.mailbox) for r in refusals] == [
        ("MAIL", SEND_AS_DENIED, MAILBOX)
    ] * 2


def test_send_as_permission_allows_another_sender(
    server_certificate: trustme.LeafCert,
    graph: GraphStandIn,
    issue_token: Callable[[str], str],
    client_tls_context: ssl.SSLContext,
) -> None:
    with (
        ExchangeStandIn(
            server_certificate, graph, [MAILBOX], send_as={MAILBOX: ["alias@contoso.example"]}
        ) as exchange,
        smtplib.SMTP(exchange.host, exchange.port, timeout=5) as smtp,
    ):
        smtp.starttls(context=client_tls_context)
        smtp.ehlo()
        sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
        assert smtp.sendmail("alias@contoso.example", ["a@example.com"], message()) == {}
        [accepted] = exchange.wait_for_messages(1)
    assert (accepted.mailbox, accepted.mail_from) == (MAILBOX, "alias@contoso.example")


def test_messages_over_the_rate_get_554_5_2_0_until_the_window_slides(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    exchange.messages_per_minute = 3  # in the fixture's 1-second window
    smtp = connect()
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
    for n in range(3):
        assert smtp.sendmail(MAILBOX, ["a@example.com"], message(f"n{n}")) == {}
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail(MAILBOX, ["a@example.com"], message("over"))
    assert line(refused.value.smtp_code, refused.value.smtp_error) == SUBMISSION_QUOTA_EXCEEDED

    first = exchange.accepted_messages()[0].arrived_at
    time.sleep(max(0.0, first + exchange.window_seconds - time.time()) + 0.05)
    assert smtp.sendmail(MAILBOX, ["a@example.com"], message("after")) == {}

    accepted = exchange.accepted_messages(MAILBOX)
    assert [m.data for m in accepted] == [message(s) for s in ("n0", "n1", "n2", "after")]
    assert exchange.max_messages_in_window(MAILBOX) == 3
    [refusal] = exchange.refusals()
    assert (refusal.command, refusal.reply) == ("DATA", SUBMISSION_QUOTA_EXCEEDED)
    # The limit is per mailbox: the other one may still send.
    other = connect()
    sign_in(other, OTHER_MAILBOX, issue_token(OUTLOOK_SCOPE))
    assert other.sendmail(OTHER_MAILBOX, ["a@example.com"], message()) == {}


def test_delay_mode_accepts_and_carries_the_excess_over(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    exchange.messages_per_minute = 2
    exchange.over_rate = "delay"
    smtp = connect()
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
    for n in range(3):
        assert smtp.sendmail(MAILBOX, ["a@example.com"], message(f"n{n}")) == {}
    first, second, third = exchange.accepted_messages()
    assert first.released_at == first.arrived_at
    assert second.released_at == second.arrived_at
    # Carried over: no sooner than one window after the first left.
    assert third.released_at == max(third.arrived_at, first.released_at + exchange.window_seconds)
    assert exchange.refusals() == []


def test_recipients_beyond_the_per_message_limit_get_452_4_5_3(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    exchange.recipients_per_message = 2
    smtp = connect()
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
    everyone = ["a@example.com", "b@example.com", "c@example.com"]
    refused = smtp.sendmail(MAILBOX, everyone, message())
    assert {rcpt: line(*reply) for rcpt, reply in refused.items()} == {
        "c@example.com": TOO_MANY_RECIPIENTS
    }
    # RFC 5321 4.5.3.1.10: the rest go in a next transaction.
    assert smtp.sendmail(MAILBOX, ["c@example.com"], message()) == {}
    first, second = exchange.wait_for_messages(2)
    assert first.rcpt_tos == ("a@example.com", "b@example.com")
    assert second.rcpt_tos == ("c@example.com",)
    assert [(r.command, r.reply) for r in exchange.refusals()] == [("RCPT", TOO_MANY_RECIPIENTS)]


def test_the_daily_recipient_limit_refuses_with_5_1_90(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    exchange.recipients_per_day = 3
    exchange.recipient_window_seconds = 1.0
    smtp = connect()
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
    assert smtp.sendmail(MAILBOX, ["a@example.com", "b@example.com"], message()) == {}
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail(MAILBOX, ["c@example.com", "d@example.com"], message())
    assert line(refused.value.smtp_code, refused.value.smtp_error) == DAILY_RECIPIENT_LIMIT
    # One more recipient still fits in the day.
    assert smtp.sendmail(MAILBOX, ["c@example.com"], message()) == {}
    first = exchange.accepted_messages()[0].arrived_at
    time.sleep(max(0.0, first + exchange.recipient_window_seconds - time.time()) + 0.05)
    assert smtp.sendmail(MAILBOX, ["d@example.com", "e@example.com"], message()) == {}
    assert [len(m.rcpt_tos) for m in exchange.accepted_messages()] == [2, 1, 2]


def test_scripted_throttles_answer_the_next_transactions(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    exchange.throttle_next(2)
    smtp = connect()
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
    for _ in range(2):
        assert line(*smtp.mail(MAILBOX)) == SENDER_THREAD_LIMIT
    assert smtp.sendmail(MAILBOX, ["a@example.com"], message()) == {}

    # A 421 at the end of DATA closes the connection, as RFC 5321 3.8 says.
    exchange.throttle_next(1, SERVICE_NOT_AVAILABLE, command="DATA")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail(MAILBOX, ["a@example.com"], message())
    assert line(refused.value.smtp_code, refused.value.smtp_error) == SERVICE_NOT_AVAILABLE
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.noop()
    assert len(exchange.accepted_messages()) == 1
    assert [(r.command, r.reply) for r in exchange.refusals()] == [
        ("MAIL", SENDER_THREAD_LIMIT),
        ("MAIL", SENDER_THREAD_LIMIT),
        ("DATA", SERVICE_NOT_AVAILABLE),
    ]


def test_a_fourth_concurrent_submission_gets_432_4_3_2(
    exchange: ExchangeStandIn,
    connect: Callable[[], smtplib.SMTP],
    issue_token: Callable[[str], str],
) -> None:
    token = issue_token(OUTLOOK_SCOPE)
    connections = [connect() for _ in range(4)]
    for smtp in connections:
        sign_in(smtp, MAILBOX, token)
    for smtp in connections[:3]:
        assert line(*smtp.mail(MAILBOX)) == "250 2.1.0 Sender OK"
    assert line(*connections[3].mail(MAILBOX)) == CONCURRENT_CONNECTIONS_LIMIT
    # Another mailbox has its own three.
    other = connect()
    sign_in(other, OTHER_MAILBOX, token)
    assert line(*other.mail(OTHER_MAILBOX)) == "250 2.1.0 Sender OK"
    # A transaction that ends frees its place.
    assert line(*connections[0].rset()) == "250 2.0.0 Resetting"
    assert line(*connections[3].mail(MAILBOX)) == "250 2.1.0 Sender OK"


def test_every_reply_carries_an_enhanced_status_code(
    connect: Callable[[], smtplib.SMTP], issue_token: Callable[[str], str]
) -> None:
    smtp = connect()
    replies = [
        smtp.docmd("NOOP"),
        smtp.docmd("RSET"),
        smtp.docmd("FROB"),
        smtp.docmd("RCPT", "TO:<a@example.com>"),
        smtp.docmd("MAIL", "FROM:"),
        smtp.docmd("AUTH", "CRAM-MD5"),
        smtp.docmd("HELP"),
    ]
    sign_in(smtp, MAILBOX, issue_token(OUTLOOK_SCOPE))
    replies += [
        smtp.docmd("AUTH", "XOAUTH2"),  # already signed in
        smtp.docmd("RCPT", "TO:<a@example.com>"),  # no MAIL yet
        smtp.docmd("MAIL", f"FROM:<{MAILBOX}> SIZE=999999999999"),
        smtp.docmd("MAIL", f"FROM:<{MAILBOX}>"),
        smtp.docmd("MAIL", f"FROM:<{MAILBOX}>"),  # nested
        smtp.docmd("DATA"),  # no RCPT yet
        smtp.docmd("QUIT"),
    ]
    for code, reply in replies:
        assert code // 100 in (2, 4, 5)
        assert ENHANCED.match(text(reply)), line(code, reply)
    assert line(*replies[2]) == "500 5.3.3 Unrecognized command"


def test_exchange_reply_keeps_coded_and_3xx_replies() -> None:
    assert exchange_reply(SUBMISSION_QUOTA_EXCEEDED) == SUBMISSION_QUOTA_EXCEEDED
    assert exchange_reply("334 VXNlcm5hbWU6") == "334 VXNlcm5hbWU6"
    assert exchange_reply("250 OK") == "250 2.0.0 OK"
    assert exchange_reply("503 Error: need MAIL command") == "503 5.5.2 Need mail command"
    assert exchange_reply("554 Command refused") == "554 5.0.0 Command refused"
    assert (
        exchange_reply("354 End data with <CR><LF>.<CR><LF>")
        == "354 Start mail input; end with <CRLF>.<CRLF>"
    )


def test_max_in_window_counts_the_busiest_span() -> None:
    assert max_in_window([], 60.0) == 0
    assert max_in_window([0.0, 10.0, 20.0, 59.0, 60.0, 61.0, 200.0], 60.0) == 5
    # Open at the start: t and t + window are not in one span.
    assert max_in_window([0.0, 60.0], 60.0) == 1
    assert max_in_window([5.0, 1.0, 3.0], 2.5) == 2


def test_graph_standin_reports_the_scope_of_its_tokens(
    graph: GraphStandIn, issue_token: Callable[[str], str]
) -> None:
    outlook, graph_token = issue_token(OUTLOOK_SCOPE), issue_token(GRAPH_SCOPE)
    assert graph.token_scope(outlook) == OUTLOOK_SCOPE
    assert graph.token_scope(graph_token) == GRAPH_SCOPE
    assert graph.token_scope("unknown") is None
    graph.invalidate_tokens()
    assert graph.token_scope(outlook) is None


def test_stop_cuts_open_connections_and_start_reuses_the_port(
    exchange: ExchangeStandIn, connect: Callable[[], smtplib.SMTP]
) -> None:
    smtp = connect()
    port = exchange.port
    exchange.stop()
    assert not exchange.running
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.noop()
    exchange.start()
    assert exchange.port == port
    with smtplib.SMTP(exchange.host, exchange.port, timeout=5) as again:
        assert again.noop()[0] == 250
