"""``redis+sentinel://`` URLs: the sentinels to ask, the master's name, database and password."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote

__all__ = ["SENTINEL_SCHEME", "SentinelTarget"]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379

_FORM = f"{SENTINEL_SCHEME}://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A master that Redis Sentinel watches: where the sentinels are and what to ask them."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    # Redis' own password (the primary's and the replicas'), not the sentinels'.
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> SentinelTarget:
        """Read ``redis+sentinel://...``; a malformed one is a ``ValueError`` saying which
        part is wrong and what the form is (never repeating the URL, which may hold a
        password)."""
        scheme, separator, rest = url.partition("://")
        if scheme != SENTINEL_SCHEME or not separator:
            raise ValueError(f"not a {SENTINEL_SCHEME}:// URL; the form is {_FORM}")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        if not at:
            hosts = netloc
        username, password = _credentials(userinfo) if at else (None, None)
        sentinels = tuple(_address(part) for part in hosts.split(","))
        parts = [unquote(part) for part in path.split("/")] if path else []
        if parts and parts[-1] == "":
            parts.pop()  # a trailing slash
        if not parts or not parts[0]:
            raise ValueError(f"the master name is missing; the form is {_FORM}")
        if len(parts) > 2:
            raise ValueError(f"too many path parts after the master name; the form is {_FORM}")
        db = 0
        if len(parts) == 2:
            if not parts[1].isdigit():
                raise ValueError(f"the database must be a number; the form is {_FORM}")
            db = int(parts[1])
        return cls(sentinels, parts[0], db, username, password)

    @property
    def display(self) -> str:
        """The sentinels and the master's name, for messages (never the password)."""
        where = ", ".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels
        )
        return f"Redis Sentinel at {where} (master {self.master_name!r})"

    def userinfo(self) -> str:
        """``user:password@`` as a URL spells it (quoted), or nothing."""
        if self.password is None and self.username is None:
            return ""
        return f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    username, colon, password = userinfo.partition(":")
    if not colon:  # "secret@host": as redis:// reads it, a password alone
        return None, unquote(username) or None
    return unquote(username) or None, unquote(password) or None


def _address(part: str) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [::1]:26379
        host, bracket, rest = part[1:].partition("]")
        if not bracket:
            raise ValueError(f"an IPv6 sentinel address lacks its ']'; the form is {_FORM}")
        port_text = rest.removeprefix(":") if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"a sentinel address is malformed; the form is {_FORM}")
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"a sentinel's host is missing; the form is {_FORM}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"a sentinel's port must be a number from 1 to 65535; the form is {_FORM}")
    return host, int(port_text)
