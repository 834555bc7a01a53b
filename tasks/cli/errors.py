"""Exit codes, and the one table that maps outbox's error branches to them."""

from __future__ import annotations

from typing import NoReturn

import typer

from config.errors import InvalidInputError, OutboxError

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "exit_code", "fail"]

EXIT_FAILED = 1  # the operation failed
EXIT_USAGE = 2  # bad usage or invalid input: the message names the field

# First match wins. Every error of outbox is an OutboxError (see config.errors); library
# errors that reach the command line are translated into one first (Redis, in __init__).
_EXIT_CODES: tuple[tuple[type[OutboxError], int], ...] = (
    (InvalidInputError, EXIT_USAGE),
    (OutboxError, EXIT_FAILED),
)


def exit_code(error: OutboxError) -> int:
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_FAILED


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
