"""The benchmark's message: about 10 KB, plain text, one recipient."""

from __future__ import annotations

from tasks.message_input import MessageInput

BODY = ("Run 42 of the nightly schedule finished: 118 passed, 0 failed.\n" * 160)[:10_000]


def message_fields(n: int) -> dict[str, object]:
    return {"to": [f"user{n}@example.com"], "subject": f"Run results {n}", "text": BODY}


def message(n: int) -> MessageInput:
    return MessageInput.model_validate(message_fields(n))
