"""Exit codes, and the one table that maps outbox's error branches to them."""

from __future__ import annotations

from typing import NoReturn

import redis
import typer
from kombu.exceptions import OperationalError

from worker.errors import InvalidInputError, OutboxError

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "exit_code", "fail", "report"]

EXIT_FAILED = 1  # the operation failed
EXIT_USAGE = 2  # bad usage or invalid input: the message names the field

# First match wins. Every error of outbox is an OutboxError (see worker.errors).
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInputError, EXIT_USAGE),
    (OutboxError, EXIT_FAILED),
    # Infrastructure errors of the Redis client and of the broker, not ours: the type names
    # what failed ("ConnectionError", "TimeoutError") better than the text alone.
    (redis.RedisError, EXIT_FAILED),
    (OperationalError, EXIT_FAILED),
)


def exit_code(error: BaseException) -> int | None:
    """The exit code for an error the command line reports, None for any other (a bug)."""
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            return code
    return None


def report(error: BaseException) -> str:
    """The one line printed for ``error``: ours speak for themselves, libraries' are named."""
    if isinstance(error, OutboxError):
        return f"error: {error}"
    return f"error: {type(error).__name__}: {error}"


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
