"""E-mail address syntax as SMTP submission accepts it: intranet domains, literals and IDNs too.

email-validator checks the part before the @-sign. Its domain rules are written for public
addresses and refuse what intranets use every day (``corp.local``, ``mailhub``,
``localhost``); whether such a domain is deliverable is the mail server's decision, so outbox
checks only that the domain is well formed: a host name (sent in its IDNA form) or an address
literal (``[10.0.0.5]``, ``[IPv6:::1]``).
"""

from __future__ import annotations

import functools

import idna
from email_validator import EmailNotValidError, validate_email

from config.header_text import single_line

__all__ = ["mailbox_address", "needs_smtputf8"]

# Stands in for the domain while email-validator checks the local part: a literal is exempt
# from its public-domain rules, and the real domain is checked on its own.
_STAND_IN_DOMAIN = "[1.1.1.1]"
# RFC 5321 4.5.3.1.3: a path is at most 256 octets, the angle brackets included.
_MAX_ADDRESS_OCTETS = 254


# Valid addresses remembered, per process: producers send to the same recipients again and
# again, and checking one costs about as much as the rest of a request's validation. (A
# refused address raises, and is never remembered.)
_REMEMBERED_ADDRESSES = 8192


@functools.lru_cache(maxsize=_REMEMBERED_ADDRESSES)
def mailbox_address(value: str) -> str:
    """Validate one address (syntax only, no DNS) and return the form it is sent in.

    The local part is NFC-normalized and may be non-ASCII (it then needs SMTPUTF8); the
    domain comes back lower-cased in its ASCII (IDNA) form, or as a normalized literal.
    A pure function of ``value``: its answers are remembered.
    """
    single_line(value)
    local, at_sign, domain = value.rpartition("@")
    if not at_sign or not local:
        raise ValueError("must be an e-mail address like name@example.com")
    if "@" in local and not local.startswith('"'):
        raise ValueError("must contain one @-sign (quote the part before it to hold another)")
    if len(value.encode()) > _MAX_ADDRESS_OCTETS:
        raise ValueError(f"is longer than {_MAX_ADDRESS_OCTETS} bytes")
    if domain.startswith("["):
        sent_domain = _checked(value, local_part=False).split("@")[-1]
    else:
        sent_domain = _host_name(domain)
    address = f"{_checked(local + '@' + _STAND_IN_DOMAIN, local_part=True)}@{sent_domain}"
    if len(address.encode()) > _MAX_ADDRESS_OCTETS:
        raise ValueError(f"is longer than {_MAX_ADDRESS_OCTETS} bytes")
    return address


def needs_smtputf8(address: str) -> bool:
    """Whether sending to or from ``address`` needs the server's SMTPUTF8 extension."""
    return not address.isascii()


def _checked(address: str, *, local_part: bool) -> str:
    """email-validator's verdict: the local part, or the whole address, normalized."""
    try:
        valid = validate_email(
            address,
            allow_smtputf8=True,
            allow_quoted_local=True,
            allow_domain_literal=True,
            check_deliverability=False,
        )
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return valid.local_part if local_part else valid.normalized


def _host_name(domain: str) -> str:
    if not domain:
        raise ValueError("There must be something after the @-sign.")
    if domain.endswith("."):
        raise ValueError("An email address cannot end with a period.")
    try:
        host = idna.encode(domain, uts46=True, std3_rules=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"The part after the @-sign is not a valid host name ({exc}).") from None
    if host.replace(".", "").isdigit():
        # RFC 5321 4.1.3: an IP address goes in brackets; servers refuse it bare.
        raise ValueError(f"An IP address after the @-sign goes in brackets: [{host}].")
    return host
