"""The ``redirect`` delivery mode's pure rules: the message as redirected, and what its
original recipients' states become after the redirected send."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from worker.message import OutgoingMessage
from worker.records import RecipientOutcome, RecipientState

__all__ = ["ORIGINAL_TO_HEADER", "original_outcomes", "redirected_message"]

ORIGINAL_TO_HEADER = "X-Outbox-Original-To"

# Which target's state the original recipients take: the worst one. A refused target fails
# them all (a wrong redirect address is the administrator's to fix; retrying cannot help); a
# deferred one defers them (the next attempt sends to the redirect addresses again).
_WORST_FIRST = (RecipientState.FAILED, RecipientState.DEFERRED, RecipientState.PENDING)


def redirected_message(message: OutgoingMessage, redirect_to: tuple[str, ...]) -> OutgoingMessage:
    """``message`` addressed to ``redirect_to`` only: To is rewritten to them and Cc and Bcc
    emptied (a reply-all from a staging inbox must not reach the real recipients, and Graph
    sends to what the message names), and ``X-Outbox-Original-To`` lists the original To,
    Cc and Bcc recipients. A producer's own header of that name is replaced."""
    headers = tuple(
        (name, value) for name, value in message.headers if name.lower() != "x-outbox-original-to"
    )
    return replace(
        message,
        to=redirect_to,
        cc=(),
        bcc=(),
        headers=(*headers, (ORIGINAL_TO_HEADER, ", ".join(message.recipients))),
    )


def original_outcomes(
    pending: Sequence[str], targets: Sequence[RecipientOutcome]
) -> tuple[RecipientOutcome, ...]:
    """The states of the ``pending`` original recipients after the message went to the
    redirect ``targets``: sent when every target accepted it, else the worst target's state
    (failed before deferred), its code, and its reply naming it."""
    worst = next(
        (t for state in _WORST_FIRST for t in targets if t.status is state),
        None,
    )
    if worst is None and targets:
        first = targets[0]
        where = ", ".join(t.address for t in targets)
        reply = f"redirected to {where}: {first.reply}" if first.reply else f"redirected to {where}"
        return tuple(RecipientOutcome(a, RecipientState.SENT, first.code, reply) for a in pending)
    if worst is None:  # no target at all: nothing was sent (settings always name one)
        return tuple(RecipientOutcome(a, RecipientState.DEFERRED) for a in pending)
    state = RecipientState.DEFERRED if worst.status.needs_sending else worst.status
    reply = f"redirected to {worst.address}: {worst.reply or state.value}"
    return tuple(RecipientOutcome(a, state, worst.code, reply) for a in pending)
