"""Text that goes into a header line: nothing that ends the line or corrupts it on the wire."""

from __future__ import annotations

import re

__all__ = ["single_line"]

# Characters that end a header line or corrupt it on the wire: every C0 control but tab (NUL
# included), DEL, NEL and the Unicode line and paragraph separators.
_FORBIDDEN_IN_A_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def single_line(value: str) -> str:
    """Refuse line breaks of every kind and control characters, wherever they stand."""
    found = _FORBIDDEN_IN_A_LINE.search(value)
    if found:
        character = found.group()
        kind = "line breaks (CR/LF)" if character in "\r\n" else "control characters"
        raise ValueError(
            f"must not contain {kind}: U+{ord(character):04X} at position {found.start() + 1}"
        )
    return value
