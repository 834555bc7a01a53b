"""TLS client contexts, built once per process: one verifying, one accepting any certificate."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsContexts", "build_tls_contexts"]


@dataclass(frozen=True, slots=True)
class TlsContexts:
    verified: ssl.SSLContext
    unverified: ssl.SSLContext

    def for_settings(self, accept_any_certificate: bool) -> ssl.SSLContext:
        return self.unverified if accept_any_certificate else self.verified


def build_tls_contexts(ca_bundle: Path | None = None) -> TlsContexts:
    """System CAs plus ``ca_bundle``; the unverified context is for "accept any certificate"."""
    verified = ssl.create_default_context()
    if ca_bundle is not None:
        verified.load_verify_locations(cafile=str(ca_bundle))
    unverified = ssl.create_default_context()
    # The administrator explicitly chose to accept invalid certificates for this server.
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return TlsContexts(verified=verified, unverified=unverified)
