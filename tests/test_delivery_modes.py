"""The staging delivery modes' decisions, in memory and against the real settings store:
the settings field and its validation, the redirected message and what its original
recipients become, and the Deliverer capturing or redirecting (limits still applying)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from config.mail_settings import DeliveryMode, OAuthSettings, SmtpSettings
from config.settings_store import SETTINGS_KEY, StoredSettings
from tasks.context import OutboxContext
from tasks.message_input import describe_validation_error
from tasks.producer import Producer
from tests.support.smtp_delivery import enqueue
from worker.backoff import RetryPolicy
from worker.deliver import Deliverer, JobOutcome, TransportCache
from worker.message import OutgoingMessage
from worker.mime import build_mime
from worker.records import (
    AttemptOutcome,
    DeliveryStatus,
    MemoryClaims,
    RecipientOutcome,
    RecipientState,
    RedisClaims,
    record_key,
    record_summary,
)
from worker.records.captured import captured_message
from worker.redirect import ORIGINAL_TO_HEADER, original_outcomes, redirected_message
from worker.runtime import worker_redis
from worker.sending_limits import MemoryGate
from worker.transports.base import Transport
from worker.transports.capture import CaptureTransport
from worker.transports.factory import HttpClients, create_transport
from worker.transports.memory import MemoryTransport, SendHandler, accept_all
from worker.transports.redirect import RedirectTransport
from worker.transports.smtp import SmtpTransport

FROM = "robot@example.com"
REDIRECT_TO = ("qa@example.com", "dev@example.com")


def smtp(**fields: Any) -> SmtpSettings:
    return SmtpSettings(from_mailbox=FROM, **fields)


def message(**fields: Any) -> OutgoingMessage:
    return OutgoingMessage(
        **{
            "message_id": "<m1@outbox.test>",
            "to": ("alice@example.com",),
            "cc": ("bob@example.com",),
            "bcc": ("secret@example.com",),
            "subject": "Nightly run",
            "text": "41 passed, 1 failed",
            **fields,
        }
    )


# --- the settings field ------------------------------------------------------------------


def test_deliver_is_the_default_for_both_protocols() -> None:
    oauth = OAuthSettings(from_mailbox=FROM, tenant="t", client_id="c")
    for settings in (smtp(), oauth):
        assert (settings.delivery_mode, settings.redirect_to) == (DeliveryMode.DELIVER, ())


def test_redirect_without_addresses_is_refused_naming_redirect_to() -> None:
    with pytest.raises(ValidationError) as refused:
        smtp(delivery_mode="redirect")
    assert describe_validation_error(refused.value).startswith("redirect_to: required with")
    with pytest.raises(ValidationError) as refused:
        OAuthSettings.model_validate(
            {"from_mailbox": FROM, "tenant": "t", "client_id": "c", "delivery_mode": "redirect"}
        )
    assert describe_validation_error(refused.value).startswith("redirect_to: required with")


def test_redirect_addresses_are_checked_each_by_its_place() -> None:
    with pytest.raises(ValidationError) as refused:
        smtp(delivery_mode="redirect", redirect_to=["qa@example.com", "not an address"])
    assert describe_validation_error(refused.value).startswith("redirect_to[1]: must be")


def test_redirect_addresses_are_kept_once_and_only_with_redirect() -> None:
    settings = smtp(delivery_mode="redirect", redirect_to=[*REDIRECT_TO, REDIRECT_TO[0]])
    assert settings.redirect_to == REDIRECT_TO
    # With another mode they mean nothing: dropped, not kept for a later switch to redirect.
    assert smtp(delivery_mode="capture", redirect_to=list(REDIRECT_TO)).redirect_to == ()


def test_a_redirect_that_could_never_fit_a_minute_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        smtp(
            delivery_mode="redirect",
            redirect_to=list(REDIRECT_TO),
            max_recipients_per_message=1,
            max_messages_per_minute=1,
        )
    assert describe_validation_error(refused.value).startswith("redirect_to: 2 addresses take 2")


def test_the_store_shows_the_mode_and_the_history_names_it(
    outbox_context: OutboxContext,
) -> None:
    store = outbox_context.settings_store
    store.save(smtp(), by="admin")
    view = store.public_view()
    assert view is not None
    assert (view["delivery_mode"], view["redirect_to"]) == ("deliver", [])
    store.save(smtp(delivery_mode="redirect", redirect_to=list(REDIRECT_TO)), by="admin")
    view = store.public_view()
    assert view is not None
    assert (view["delivery_mode"], view["redirect_to"]) == ("redirect", list(REDIRECT_TO))
    assert store.history()[0]["changed"] == ["delivery_mode", "redirect_to"]
    loaded = store.require().settings
    assert (loaded.delivery_mode, loaded.redirect_to) == (DeliveryMode.REDIRECT, REDIRECT_TO)


# --- the redirected message --------------------------------------------------------------


def test_a_redirected_message_goes_to_the_redirect_addresses_only() -> None:
    original = message(headers=(("X-Outbox-Original-To", "forged@example.com"), ("X-Run", "7")))
    redirected = redirected_message(original, REDIRECT_TO)
    assert (redirected.to, redirected.cc, redirected.bcc) == (REDIRECT_TO, (), ())
    assert redirected.recipients == REDIRECT_TO
    assert redirected.headers == (
        ("X-Run", "7"),
        (ORIGINAL_TO_HEADER, "alice@example.com, bob@example.com, secret@example.com"),
    )
    parsed = email.message_from_bytes(build_mime(redirected, FROM, 0.0), policy=email.policy.SMTP)
    assert parsed["To"] == "qa@example.com, dev@example.com"
    assert parsed["Cc"] is None
    assert parsed["Bcc"] is None
    assert parsed.get_all(ORIGINAL_TO_HEADER) == [
        "alice@example.com, bob@example.com, secret@example.com"
    ]


ORIGINALS = ("alice@example.com", "bob@example.com")


def target(address: str, state: RecipientState, code: int, reply: str) -> RecipientOutcome:
    return RecipientOutcome(address, state, code, reply)


@pytest.mark.parametrize(
    ("targets", "state", "code", "reply"),
    [
        (
            [target("qa@example.com", RecipientState.SENT, 250, "ok")],
            RecipientState.SENT,
            250,
            "redirected to qa@example.com: ok",
        ),
        (
            [
                target("qa@example.com", RecipientState.SENT, 250, "ok"),
                target("dev@example.com", RecipientState.SENT, 250, "ok"),
            ],
            RecipientState.SENT,
            250,
            "redirected to qa@example.com, dev@example.com: ok",
        ),
        (
            [
                target("qa@example.com", RecipientState.SENT, 250, "ok"),
                target("dev@example.com", RecipientState.DEFERRED, 451, "try later"),
            ],
            RecipientState.DEFERRED,
            451,
            "redirected to dev@example.com: try later",
        ),
        (
            [
                target("qa@example.com", RecipientState.DEFERRED, 451, "try later"),
                target("dev@example.com", RecipientState.FAILED, 550, "no such user"),
            ],
            RecipientState.FAILED,
            550,
            "redirected to dev@example.com: no such user",
        ),
    ],
)
def test_the_original_recipients_follow_the_worst_redirect_target(
    targets: list[RecipientOutcome], state: RecipientState, code: int, reply: str
) -> None:
    assert original_outcomes(ORIGINALS, targets) == tuple(
        RecipientOutcome(a, state, code, reply) for a in ORIGINALS
    )


# --- the transport each mode gets --------------------------------------------------------


def test_the_factory_wraps_the_protocols_transport_by_mode(
    outbox_context: OutboxContext,
) -> None:
    async def kinds() -> list[Transport]:
        options = outbox_context.transport_options
        http = HttpClients.build(options)
        try:
            return [
                create_transport(settings, options, http)
                for settings in (
                    smtp(),
                    smtp(delivery_mode="capture"),
                    smtp(delivery_mode="redirect", redirect_to=list(REDIRECT_TO)),
                    OAuthSettings.model_validate(
                        {
                            "from_mailbox": FROM,
                            "tenant": "t",
                            "client_id": "c",
                            "delivery_mode": "capture",
                        }
                    ),
                )
            ]
        finally:
            await http.aclose()

    deliver, capture, redirect, graph_capture = asyncio.run(kinds())
    assert isinstance(deliver, SmtpTransport)
    assert isinstance(capture, CaptureTransport)
    assert isinstance(redirect, RedirectTransport)
    assert isinstance(graph_capture, CaptureTransport)  # Graph's messages are kept as MIME


# --- the Deliverer in each mode ----------------------------------------------------------


class Settings:
    def __init__(self, settings: SmtpSettings) -> None:
        self.stored = StoredSettings(1, settings, saved_at=0.0)

    async def get(self, version: int) -> StoredSettings | None:
        return self.stored


class Harness:
    """A Deliverer over memory records, a memory gate and the mode's wrapper around a
    memory transport (what the real server would have received)."""

    def __init__(self, settings: SmtpSettings, handler: SendHandler = accept_all) -> None:
        self.now = 1_000.0
        self.claims = MemoryClaims(clock=lambda: self.now)
        self.server = MemoryTransport(handler)
        self.gate = MemoryGate(clock=lambda: self.now)
        self.settings = settings

    def transport(self, stored: StoredSettings) -> Transport:
        match stored.settings.delivery_mode:
            case DeliveryMode.CAPTURE:
                return CaptureTransport(self.server, FROM)
            case DeliveryMode.REDIRECT:
                return RedirectTransport(self.server, stored.settings.redirect_to)
        return self.server

    def deliver(self, *messages: OutgoingMessage) -> list[JobOutcome]:
        for n, each in enumerate(messages):
            self.claims.add(f"d{n}", each, now=self.now)
        deliverer = Deliverer(
            claims=self.claims,
            settings=Settings(self.settings),
            transports=TransportCache(self.transport),
            policy=RetryPolicy(base_seconds=10, max_seconds=60, max_attempts=3),
            in_flight=asyncio.Semaphore(1),
            gate=self.gate,
            clock=lambda: self.now,
        )
        return asyncio.run(deliverer.deliver_many([f"d{n}" for n in range(len(messages))]))


def test_capture_keeps_the_mime_message_and_sends_nothing() -> None:
    harness = Harness(smtp(delivery_mode="capture"))
    assert harness.deliver(message()) == [JobOutcome.CAPTURED]
    assert harness.server.calls == 0
    record = harness.claims.records["d0"]
    assert record.status is DeliveryStatus.CAPTURED
    assert {r.status for r in record.recipients} == {RecipientState.CAPTURED}
    assert len(record.recipients) == 3  # to, cc and bcc: each kept, none sent
    [attempt] = record.attempts
    assert (attempt.outcome, attempt.error) == (AttemptOutcome.CAPTURED, None)
    captured = harness.claims.captured["d0"]
    assert captured == build_mime(message(), FROM, record.created_at)
    assert b"secret@example.com" not in captured  # Bcc stays out of the message


def test_capture_still_waits_for_the_sending_limits() -> None:
    harness = Harness(smtp(delivery_mode="capture", max_messages_per_minute=1))
    outcomes = harness.deliver(message(), message(message_id="<m2@outbox.test>"))
    assert outcomes == [JobOutcome.CAPTURED, JobOutcome.WAITING]
    waiting = harness.claims.records["d1"]
    assert waiting.waiting_for == "the sending limit, 1 per minute"
    assert "d1" not in harness.claims.captured


def redirected_settings(**limits: int) -> SmtpSettings:
    return smtp(delivery_mode="redirect", redirect_to=list(REDIRECT_TO), **limits)


def test_redirect_sends_only_to_the_redirect_addresses_and_records_them() -> None:
    harness = Harness(redirected_settings())
    assert harness.deliver(message()) == [JobOutcome.SENT]
    [sent] = harness.server.sent
    assert sent.recipients == REDIRECT_TO
    assert dict(sent.message.headers)[ORIGINAL_TO_HEADER] == (
        "alice@example.com, bob@example.com, secret@example.com"
    )
    record = harness.claims.records["d0"]
    assert record.redirected_to == REDIRECT_TO
    assert [r.address for r in record.recipients] == [
        "alice@example.com",
        "bob@example.com",
        "secret@example.com",
    ]
    assert {r.status for r in record.recipients} == {RecipientState.SENT}
    assert record_summary(record)["redirected_to"] == list(REDIRECT_TO)


def refusing(codes: Mapping[str, int]) -> SendHandler:
    def handler(sent: OutgoingMessage, recipients: Sequence[str]) -> Mapping[str, int]:
        return {r: c for r, c in codes.items() if r in recipients}

    return handler


def test_a_redirect_target_refused_for_now_defers_the_originals() -> None:
    harness = Harness(redirected_settings(), refusing({"dev@example.com": 451}))
    assert harness.deliver(message()) == [JobOutcome.RETRYING]
    record = harness.claims.records["d0"]
    assert {r.status for r in record.recipients} == {RecipientState.DEFERRED}
    assert record.redirected_to == REDIRECT_TO


def test_redirect_counts_the_redirect_addresses_against_the_limits() -> None:
    # Thirty original recipients would take 15 transactions of 2; redirected to two
    # addresses, the message is one transaction, so all thirty are reached at once, and the
    # minute's one transaction holds the next e-mail back.
    many = message(to=tuple(f"user{n}@example.com" for n in range(30)), cc=(), bcc=())
    harness = Harness(redirected_settings(max_recipients_per_message=2, max_messages_per_minute=1))
    assert harness.deliver(many, many) == [JobOutcome.SENT, JobOutcome.WAITING]
    assert [s.recipients for s in harness.server.sent] == [REDIRECT_TO]
    reached = harness.claims.records["d0"].recipients
    assert [r.status for r in reached] == [RecipientState.SENT] * 30


def deliver_through_redis(
    outbox_context: OutboxContext, delivery_id: str, settings: SmtpSettings, server: Transport
) -> list[JobOutcome]:
    """One job of the real Deliverer over the real records (RedisClaims), the mode's wrapper
    around ``server``."""

    async def run() -> list[JobOutcome]:
        client = worker_redis(outbox_context.redis_location)
        wrapped = (
            CaptureTransport(server, FROM)
            if settings.delivery_mode is DeliveryMode.CAPTURE
            else RedirectTransport(server, settings.redirect_to)
        )
        try:
            deliverer = Deliverer(
                claims=RedisClaims(
                    client,
                    settings_key=SETTINGS_KEY,
                    lease_seconds=30,
                    max_attempts=3,
                    retention_seconds=600,
                ),
                settings=Settings(settings),
                transports=TransportCache(lambda stored: wrapped),
                policy=RetryPolicy(base_seconds=10, max_seconds=60, max_attempts=3),
                in_flight=asyncio.Semaphore(1),
                gate=MemoryGate(),
            )
            return await deliverer.deliver_many([delivery_id])
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_captured_message_is_recorded_by_the_attempts_own_transition(
    outbox_context: OutboxContext, producer: Producer
) -> None:
    delivery_id = enqueue(producer, subject="Nightly run", bcc=["secret@example.com"])
    server = MemoryTransport()
    outcomes = deliver_through_redis(
        outbox_context, delivery_id, smtp(delivery_mode="capture"), server
    )
    assert outcomes == [JobOutcome.CAPTURED]
    assert server.calls == 0
    record = outbox_context.deliveries.get(delivery_id)
    assert record.status is DeliveryStatus.CAPTURED
    assert [r.status for r in record.recipients] == [RecipientState.CAPTURED] * 2
    assert outbox_context.deliveries.ids_with_status(DeliveryStatus.CAPTURED) == [delivery_id]
    captured = captured_message(outbox_context.redis, delivery_id)
    assert captured is not None
    parsed = email.message_from_bytes(captured, policy=email.policy.default)
    assert parsed["Subject"] == "Nightly run"
    assert parsed["Message-ID"] == record.message.message_id
    assert b"secret@example.com" not in captured
    # Final: retention applies as to a sent delivery, and nothing claims it again.
    assert outbox_context.redis.ttl(record_key(delivery_id)) > 0
    again = deliver_through_redis(
        outbox_context, delivery_id, smtp(delivery_mode="capture"), server
    )
    assert again == [JobOutcome.CAPTURED]
    assert len(outbox_context.deliveries.get(delivery_id).attempts) == 1


def test_a_redirected_delivery_keeps_its_recipients_and_where_it_went(
    outbox_context: OutboxContext, producer: Producer
) -> None:
    delivery_id = enqueue(producer, cc=["bob@example.com"])
    server = MemoryTransport()
    outcomes = deliver_through_redis(outbox_context, delivery_id, redirected_settings(), server)
    assert outcomes == [JobOutcome.SENT]
    assert [sent.recipients for sent in server.sent] == [REDIRECT_TO]
    summary = record_summary(outbox_context.deliveries.get(delivery_id))
    assert summary["redirected_to"] == list(REDIRECT_TO)
    assert [(r["address"], r["status"]) for r in summary["recipients"]] == [
        ("alice@example.com", "sent"),
        ("bob@example.com", "sent"),
    ]
    assert captured_message(outbox_context.redis, delivery_id) is None
