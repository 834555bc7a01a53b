"""Local HTTPS stand-in for the Microsoft identity platform (v2.0) and Graph v1.0 mail endpoints."""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import http.server
import json
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import trustme

__all__ = [
    "AAD_JSON",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_TENANT",
    "GRAPH_APP_ID",
    "GRAPH_JSON",
    "HOST",
    "MAX_UPLOAD_CHUNK_BYTES",
    "UPLOAD_SESSION_MIN_BYTES",
    "GraphStandIn",
    "RecordedRequest",
    "ScriptedResponse",
]

HOST: Final = "127.0.0.1"
DEFAULT_TENANT: Final = "contoso-tenant"
DEFAULT_CLIENT_ID: Final = "app-client-id"
DEFAULT_CLIENT_SECRET: Final = "app-secret-value"
# Graph's documented limit for one PUT to an attachment upload session.
MAX_UPLOAD_CHUNK_BYTES: Final = 4 * 1024 * 1024
# Graph refuses upload sessions for attachments under "3 MB"
# (ErrorAttachmentSizeShouldNotBeLessThanMinimumSize); the exact byte count is
# not documented, binary megabytes are assumed.
UPLOAD_SESSION_MIN_BYTES: Final = 3 * 1024 * 1024

# The exact media types the real services answer with, so clients that compare
# Content-Type naively fail here as they would in production.
AAD_JSON: Final = "application/json; charset=utf-8"
GRAPH_JSON: Final = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
# Graph's own resource id; real 401s name it in WWW-Authenticate.
GRAPH_APP_ID: Final = "00000003-0000-0000-c000-000000000000"

_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_NO_RECIPIENTS: Final = (
    "At least one recipient isn't valid., A message can't be sent because it contains no "
    "recipients."
)
_UNREADABLE_JSON: Final = (
    "Unable to read JSON request payload. Please ensure Content-Type header is set and "
    "payload is of valid JSON format."
)
_ITEM_NOT_FOUND: Final = "The specified object was not found in the store."
# The lists of login.microsoftonline.com's v2.0 OpenID configuration.
_TOKEN_AUTH_METHODS: Final = ("client_secret_post", "private_key_jwt", "client_secret_basic")
_OPENID_CLAIMS: Final = (
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "acr",
    "nonce",
    "preferred_username",
    "name",
    "tid",
    "ver",
    "at_hash",
    "c_hash",
    "email",
)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request as received; ``path`` is still percent-encoded, without the query."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedResponse:
    """A reply a test wants returned instead of the normal one."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(slots=True)
class _Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class _Draft:
    message: dict[str, Any]
    uploaded: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _UploadSession:
    token: str
    mailbox: str
    message_id: str
    attachment: dict[str, Any]
    size: int
    expires: str
    received: bytearray = field(default_factory=bytearray)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _graph_time(moment: dt.datetime) -> str:
    # Graph prints seven fractional digits ("2019-09-25T01:09:30.7671707Z").
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _graph_id() -> str:
    # Real Exchange ids are URL-safe base64 with "=" padding; keeping the "="
    # makes clients that build URLs from ids handle it.
    return "AAMkA" + base64.urlsafe_b64encode(secrets.token_bytes(47)).decode("ascii")


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _get_ci(mapping: dict[str, Any], key: str) -> Any:
    # Graph's docs spell the parameter "AttachmentItem" while its own SDK
    # models use camelCase; accept both rather than fail on spelling.
    for name, value in mapping.items():
        if name.lower() == key.lower():
            return value
    return None


def _recipient_addresses(message: dict[str, Any]) -> list[str] | None:
    """Every recipient address, or None when a recipient entry is malformed."""
    addresses: list[str] = []
    for kind in ("toRecipients", "ccRecipients", "bccRecipients"):
        entries = message.get(kind) or []
        if not isinstance(entries, list):
            return None
        for entry in entries:
            email = entry.get("emailAddress") if isinstance(entry, dict) else None
            address = email.get("address") if isinstance(email, dict) else None
            if not isinstance(address, str) or not address.strip():
                return None
            addresses.append(address)
    return addresses


_GraphRoute = Literal["sendMail", "draft", "createUploadSession", "send"]


def _graph_route(method: str, lowered: list[str]) -> _GraphRoute | None:
    """The mail action a Graph path names (lower-cased, after "v1.0/"); None for any other.

    Every action is a POST to users/{mailbox}/sendMail or users/{mailbox}/messages[/...].
    """
    if method != "POST" or lowered[:1] != ["users"]:
        return None
    match lowered[2:]:
        case ["sendmail"]:
            return "sendMail"
        case ["messages"]:
            return "draft"
        case ["sendmail" | "messages", _, "attachments", "createuploadsession"]:
            return "createUploadSession"
        case ["sendmail" | "messages", _, "send"]:
            return "send"
    return None


def _file_attachment(item: dict[str, Any], name: str) -> dict[str, Any]:
    """The fileAttachment an upload session's AttachmentItem describes, without its bytes."""
    content_type = _get_ci(item, "contentType")
    attachment: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": name,
        "contentType": content_type
        if isinstance(content_type, str)
        else "application/octet-stream",
    }
    for optional in ("isInline", "contentId"):
        value = _get_ci(item, optional)
        if value is not None:
            attachment[optional] = value
    return attachment


def _client_credentials(form: dict[str, str], authorization: str) -> tuple[str, str]:
    """The client ID and secret of a token request: from the form (msal's way), or, when the
    form has no secret, from HTTP Basic authentication (client_secret_basic, also valid at
    Entra)."""
    client_id = form.get("client_id", "")
    secret = form.get("client_secret", "")
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() == "basic" and not secret:
        try:
            pair = base64.b64decode(encoded, validate=True).decode("utf-8")
        except ValueError:
            pair = ""
        basic_id, _, basic_secret = pair.partition(":")
        client_id = client_id or unquote(basic_id.replace("+", " "))
        secret = unquote(basic_secret.replace("+", " "))
    return client_id, secret


class GraphStandIn:
    """Entra ID token issuance plus Graph sendMail / draft / upload-session on 127.0.0.1.

    The listening socket is bound in the constructor, so ``base_url`` is known
    before ``start()``. Scripted behaviour (``send_mail_faults``, ``send_mail_delay_seconds``,
    ``upload_delay_seconds``, ``mailbox_concurrency_limit``) may be changed at any time;
    handler threads read it on every request.
    """

    def __init__(
        self,
        certificate: trustme.LeafCert,
        *,
        tenant: str = DEFAULT_TENANT,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        token_lifetime_seconds: int = 3600,
    ) -> None:
        self.tenant = tenant
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_lifetime_seconds = token_lifetime_seconds
        self.requests: list[RecordedRequest] = []
        self.token_requests = 0
        self.send_mail_faults: list[ScriptedResponse] = []
        self.send_mail_delay_seconds = 0.0
        self.upload_delay_seconds = 0.0
        self.mailbox_concurrency_limit: int | None = None
        self.throttled = 0
        self.max_in_flight = 0

        # One lock for all mutable state: handlers run on many threads.
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self._token_scopes: dict[str, str] = {}  # access token -> the scope it was issued for
        self._in_flight: dict[str, int] = {}
        self._drafts: dict[tuple[str, str], _Draft] = {}
        self._sessions: dict[str, _UploadSession] = {}
        self._sent: list[dict[str, Any]] = []

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self._server = _Server(self, context)
        port = int(self._server.socket.getsockname()[1])
        self.base_url = f"https://{HOST}:{port}/"
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None or self._stopped:
            raise RuntimeError("a GraphStandIn can be started only once")
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # shutdown() waits up to one poll interval; the default 0.5 s
            # would dominate short tests.
            kwargs={"poll_interval": 0.05},
            name=f"graph-standin-{self.base_url}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        # Idle keep-alive connections would otherwise hold handler threads
        # until their read timeout.
        self._server.close_connections()
        self._server.server_close()

    def __enter__(self) -> GraphStandIn:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test-facing helpers -------------------------------------------------

    def invalidate_tokens(self) -> None:
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = float("-inf")

    def issued_tokens(self) -> list[str]:
        """Every access token the identity platform issued, oldest first."""
        with self._lock:
            return list(self._tokens)

    def token_scope(self, token: str) -> str | None:
        """The scope an access token was issued for; None if it is unknown or expired."""
        with self._lock:
            expires = self._tokens.get(token)
            if expires is None or expires <= time.monotonic():
                return None
            return self._token_scopes.get(token)

    def sent_messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._sent)

    # -- request dispatch ----------------------------------------------------

    def _handle(self, req: RecordedRequest) -> _Reply:
        with self._lock:
            self.requests.append(req)
        # Empty segments are dropped: msal turns an authority with a trailing
        # slash (its own default is ".../common/") into "tenant//v2.0/...",
        # which Entra evidently serves.
        segments = [unquote(part) for part in req.path.split("/") if part]
        if segments[:1] == ["v1.0"]:
            return self._graph(req, segments[1:])
        if len(segments) == 2 and segments[0] == "upload":
            return self._upload(req, segments[1])
        if len(segments) >= 2:
            reply = self._identity(req, segments[0], [s.lower() for s in segments[1:]])
            if reply is not None:
                return reply
        return self._not_found(req)

    # -- identity platform -----------------------------------------------------

    def _identity(self, req: RecordedRequest, tenant: str, rest: list[str]) -> _Reply | None:
        if rest == ["oauth2", "v2.0", "token"]:
            return self._token_endpoint(req, tenant)
        if rest in (["v2.0", ".well-known", "openid-configuration"], ["discovery", "v2.0", "keys"]):
            return self._discovery(req, tenant, signing_keys=rest[0] == "discovery")
        return None

    def _token_endpoint(self, req: RecordedRequest, tenant: str) -> _Reply:
        if req.method != "POST":
            return self._aad_error(
                req,
                400,
                "invalid_request",
                900561,
                f"The endpoint only accepts POST, OPTIONS requests. Received a "
                f"{req.method} request.",
            )
        with self._lock:
            self.token_requests += 1
        if tenant.lower() != self.tenant.lower():
            return self._unknown_tenant(req, "invalid_request", tenant)
        return self._token(req)

    def _discovery(self, req: RecordedRequest, tenant: str, *, signing_keys: bool) -> _Reply:
        """The tenant's OpenID configuration, or its signing keys (none)."""
        if req.method != "GET":
            return _Reply(405, [("Allow", "GET")])
        if tenant.lower() != self.tenant.lower():
            return self._unknown_tenant(req, "invalid_tenant", tenant)
        document = {"keys": []} if signing_keys else self._openid_config()
        return _Reply(200, [("Content-Type", AAD_JSON)], _json_bytes(document))

    def _openid_config(self) -> dict[str, Any]:
        root = f"{self.base_url}{self.tenant}"
        netloc = urlsplit(self.base_url).netloc
        # Mirrors login.microsoftonline.com's v2.0 document; msal reads only
        # authorization_endpoint, token_endpoint, device_authorization_endpoint
        # and issuer.
        return {
            "token_endpoint": f"{root}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": list(_TOKEN_AUTH_METHODS),
            "jwks_uri": f"{root}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{root}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.base_url}oidc/userinfo",
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
            "claims_supported": list(_OPENID_CLAIMS),
            "kerberos_endpoint": f"{root}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": netloc,
            "rbac_url": "https://pas.windows.net",
        }

    def _unknown_tenant(self, req: RecordedRequest, error: str, tenant: str) -> _Reply:
        return self._aad_error(
            req,
            400,
            error,
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
            "and are signing into the correct cloud. Check with your subscription "
            "administrator, this may happen if there are no active subscriptions for the "
            "tenant.",
        )

    def _token(self, req: RecordedRequest) -> _Reply:
        """The client credentials grant: an access token, or Entra's error for the first check
        the request fails."""
        form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
        client_id, secret = _client_credentials(form, req.headers.get("authorization", ""))
        scope = form.get("scope", "")
        refused = (
            self._check_grant_type(req, form.get("grant_type", ""))
            or self._check_client(req, client_id, secret)
            or self._check_scope(req, scope)
        )
        if refused is not None:
            return refused
        return self._issue_token(scope.split()[0])  # the one scope _check_scope let through

    def _check_grant_type(self, req: RecordedRequest, grant_type: str) -> _Reply | None:
        if not grant_type:
            return self._missing_parameter(req, "grant_type")
        if grant_type != "client_credentials":
            return self._aad_error(
                req,
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
        return None

    def _check_client(self, req: RecordedRequest, client_id: str, secret: str) -> _Reply | None:
        if not client_id:
            return self._missing_parameter(req, "client_id")
        if client_id != self.client_id:
            # Entra's error name for 700016 is unauthorized_client, not
            # invalid_client.
            return self._aad_error(
                req,
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant}'. This can happen if the application has not been installed "
                "by the administrator of the tenant or consented to by any user in the "
                "tenant. You may have sent your authentication request to the wrong tenant.",
            )
        if not secret:
            return self._aad_error(
                req,
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        if not secrets.compare_digest(secret.encode(), self._client_secret.encode()):
            # Never echo the presented secret: callers log these descriptions.
            return self._aad_error(
                req,
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                "is the client secret value, not the client secret ID, for a secret added to "
                f"app '{self.client_id}'.",
            )
        return None

    def _check_scope(self, req: RecordedRequest, scope: str) -> _Reply | None:
        if not scope:
            return self._missing_parameter(req, "scope")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return self._aad_error(
                req,
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        return None

    def _issue_token(self, scope: str) -> _Reply:
        token = secrets.token_urlsafe(48)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime_seconds
            self._token_scopes[token] = scope
        body = {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime_seconds,
            "ext_expires_in": self.token_lifetime_seconds,
            "access_token": token,
        }
        headers = [
            ("Content-Type", AAD_JSON),
            ("Cache-Control", "no-store, no-cache"),
            ("Pragma", "no-cache"),
            ("x-ms-request-id", str(uuid.uuid4())),
        ]
        return _Reply(200, headers, _json_bytes(body))

    def _missing_parameter(self, req: RecordedRequest, name: str) -> _Reply:
        return self._aad_error(
            req,
            400,
            "invalid_request",
            900144,
            f"The request body must contain the following parameter: '{name}'.",
        )

    def _aad_error(
        self, req: RecordedRequest, status: int, error: str, code: int, description: str
    ) -> _Reply:
        trace_id = str(uuid.uuid4())
        correlation_id = req.headers.get("client-request-id") or str(uuid.uuid4())
        stamp = _now().strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": error,
            "error_description": (
                f"AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
            ),
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.base_url}error?code={code}",
        }
        headers = [
            ("Content-Type", AAD_JSON),
            ("Cache-Control", "no-store, no-cache"),
            ("x-ms-request-id", trace_id),
        ]
        return _Reply(status, headers, _json_bytes(body))

    # -- Graph ---------------------------------------------------------------

    def _graph(self, req: RecordedRequest, parts: list[str]) -> _Reply:
        lowered = [part.lower() for part in parts]
        if req.method == "POST" and lowered[:1] == ["me"]:
            denied = self._authenticate(req)
            return denied or self._graph_error(
                req,
                400,
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            )
        route = _graph_route(req.method, lowered)
        if route is None:
            return self._not_found(req)
        if "content-length" not in req.headers and "transfer-encoding" not in req.headers:
            # Graph's front end (HTTP.sys) answers 411 to a POST with neither
            # a length nor chunking, which bites body-less calls like /send.
            # The real body is an HTML page; JSON keeps tests simple.
            return self._graph_error(
                req, 411, "LengthRequired", "The request must be chunked or have a content length."
            )
        denied = self._authenticate(req)
        if denied is not None:
            return denied
        mailbox = parts[1]
        message_id = parts[3] if len(parts) > 3 else ""
        return self._route(route, req, mailbox, message_id)

    def _route(
        self, route: _GraphRoute, req: RecordedRequest, mailbox: str, message_id: str
    ) -> _Reply:
        match route:
            case "sendMail":
                return self._send_mail(req, mailbox)
            case "draft":
                return self._create_draft(req, mailbox)
            case "createUploadSession":
                return self._create_upload_session(req, mailbox, message_id)
            case "send":
                return self._send_draft(req, mailbox, message_id)

    def _not_found(self, req: RecordedRequest) -> _Reply:
        return self._graph_error(req, 404, "ResourceNotFound", f"Resource not found: {req.path}")

    def _authenticate(self, req: RecordedRequest) -> _Reply | None:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return self._unauthorized(req, "Access token is empty.")
        with self._lock:
            expires = self._tokens.get(token)
        if expires is None:
            return self._unauthorized(req, "CompactToken parsing failed with error code: 80049217")
        if expires <= time.monotonic():
            return self._unauthorized(req, "Access token has expired or is not yet valid.")
        return None

    def _unauthorized(self, req: RecordedRequest, message: str) -> _Reply:
        reply = self._graph_error(req, 401, "InvalidAuthenticationToken", message)
        reply.headers.append(
            (
                "WWW-Authenticate",
                f'Bearer realm="", authorization_uri="{self.base_url}common/oauth2/authorize", '
                f'client_id="{GRAPH_APP_ID}"',
            )
        )
        return reply

    def _graph_error(self, req: RecordedRequest, status: int, code: str, message: str) -> _Reply:
        request_id = str(uuid.uuid4())
        client_request_id = req.headers.get("client-request-id") or request_id
        body = {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": _now().strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": client_request_id,
                },
            }
        }
        headers = [
            ("Content-Type", GRAPH_JSON),
            ("request-id", request_id),
            ("client-request-id", client_request_id),
        ]
        return _Reply(status, headers, _json_bytes(body))

    def _graph_ok(self, req: RecordedRequest, status: int, body: Any = None) -> _Reply:
        request_id = str(uuid.uuid4())
        headers = [
            ("request-id", request_id),
            ("client-request-id", req.headers.get("client-request-id") or request_id),
        ]
        if body is None:
            return _Reply(status, headers)
        headers.append(("Content-Type", GRAPH_JSON))
        return _Reply(status, headers, _json_bytes(body))

    def _json_object(self, req: RecordedRequest) -> dict[str, Any] | _Reply:
        if "application/json" not in req.headers.get("content-type", "").lower():
            return self._graph_error(req, 400, "BadRequest", _UNREADABLE_JSON)
        try:
            payload = json.loads(req.body)
        except ValueError:
            return self._graph_error(req, 400, "BadRequest", _UNREADABLE_JSON)
        if not isinstance(payload, dict):
            return self._graph_error(req, 400, "BadRequest", _UNREADABLE_JSON)
        return payload

    def _check_recipients(self, req: RecordedRequest, message: dict[str, Any]) -> _Reply | None:
        addresses = _recipient_addresses(message)
        if addresses is None:
            return self._graph_error(
                req, 400, "ErrorInvalidRecipients", "At least one recipient isn't valid."
            )
        if not addresses:
            return self._graph_error(req, 400, "ErrorInvalidRecipients", _NO_RECIPIENTS)
        return None

    def _send_mail(self, req: RecordedRequest, mailbox: str) -> _Reply:
        payload = self._json_object(req)
        if isinstance(payload, _Reply):
            return payload
        message = payload.get("message")
        if not isinstance(message, dict):
            return self._graph_error(
                req,
                400,
                "ErrorInvalidRequest",
                "The 'message' parameter is missing or is not a message object.",
            )
        return self._check_recipients(req, message) or self._deliver(
            req, mailbox, lambda: self._sent.append(copy.deepcopy(message))
        )

    def _deliver(self, req: RecordedRequest, mailbox: str, accept: Callable[[], None]) -> _Reply:
        """Throttle, fault, delay and finally accept one sendMail or draft send."""
        key = mailbox.lower()
        with self._lock:
            active = self._in_flight.get(key, 0)
            limit = self.mailbox_concurrency_limit
            if limit is not None and active >= limit:
                self.throttled += 1
                reply = self._graph_error(
                    req,
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                )
                reply.headers.append(("Retry-After", "1"))
                return reply
            self._in_flight[key] = active + 1
            self.max_in_flight = max(self.max_in_flight, active + 1)
            # Faults are taken in arrival order, so concurrent tests stay
            # deterministic about which request gets which fault.
            fault = self.send_mail_faults.pop(0) if self.send_mail_faults else None
        try:
            delay = self.send_mail_delay_seconds
            if delay > 0:
                time.sleep(delay)
            if fault is None:
                with self._lock:
                    accept()
        finally:
            # Released before the reply is written so a client that sends its
            # next request on receipt never finds its own slot still taken.
            with self._lock:
                self._in_flight[key] -= 1
        if fault is not None:
            return self._scripted(fault)
        return self._graph_ok(req, 202)

    def _scripted(self, scripted: ScriptedResponse) -> _Reply:
        headers = list(scripted.headers.items())
        if scripted.body is None:
            return _Reply(scripted.status, headers)
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", GRAPH_JSON))
        return _Reply(scripted.status, headers, _json_bytes(scripted.body))

    def _create_draft(self, req: RecordedRequest, mailbox: str) -> _Reply:
        payload = self._json_object(req)
        if isinstance(payload, _Reply):
            return payload
        message_id = _graph_id()
        stored = copy.deepcopy(payload)
        stored["id"] = message_id
        with self._lock:
            self._drafts[(mailbox.lower(), message_id)] = _Draft(stored)
        moment = _graph_time(_now())
        body = {
            "@odata.context": f"{self.base_url}v1.0/$metadata#users('{mailbox}')/messages/$entity",
            **copy.deepcopy(stored),
            "createdDateTime": moment,
            "lastModifiedDateTime": moment,
            "isDraft": True,
            "hasAttachments": bool(payload.get("attachments")),
        }
        return self._graph_ok(req, 201, body)

    def _create_upload_session(self, req: RecordedRequest, mailbox: str, message_id: str) -> _Reply:
        payload = self._json_object(req)
        if isinstance(payload, _Reply):
            return payload
        with self._lock:
            draft = self._drafts.get((mailbox.lower(), message_id))
        if draft is None:
            return self._graph_error(req, 404, "ErrorItemNotFound", _ITEM_NOT_FOUND)
        item = self._attachment_item(req, payload)
        if isinstance(item, _Reply):
            return item
        attachment, size = item
        session_id = secrets.token_urlsafe(24)
        token = secrets.token_urlsafe(32)
        expires = _graph_time(_now() + dt.timedelta(hours=2))
        with self._lock:
            self._sessions[session_id] = _UploadSession(
                token, mailbox.lower(), message_id, attachment, size, expires
            )
        body = {
            "@odata.context": f"{self.base_url}v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": f"{self.base_url}upload/{session_id}?token={token}",
            "expirationDateTime": expires,
            "nextExpectedRanges": ["0-"],
        }
        return self._graph_ok(req, 201, body)

    def _attachment_item(
        self, req: RecordedRequest, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], int] | _Reply:
        """The file attachment an upload session adds (without its bytes yet) and its size,
        from the request's AttachmentItem; or Graph's refusal of the item."""
        item = _get_ci(payload, "AttachmentItem")
        if not isinstance(item, dict):
            return self._graph_error(
                req, 400, "ErrorInvalidRequest", "The 'AttachmentItem' parameter is missing."
            )
        kind = _get_ci(item, "attachmentType")
        name = _get_ci(item, "name")
        size = _get_ci(item, "size")
        if (
            not isinstance(kind, str)
            or kind.lower() != "file"
            or not isinstance(name, str)
            or not name
            or not isinstance(size, int)
            or isinstance(size, bool)
        ):
            return self._graph_error(
                req,
                400,
                "ErrorInvalidRequest",
                "AttachmentItem needs attachmentType 'file', a name and an integer size.",
            )
        if size < UPLOAD_SESSION_MIN_BYTES:
            return self._graph_error(
                req,
                400,
                "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                "Attachment size must be greater than the minimum size.",
            )
        return _file_attachment(item, name), size

    def _upload(self, req: RecordedRequest, session_id: str) -> _Reply:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or req.method not in ("PUT", "DELETE"):
            return self._not_found(req)
        denied = self._authenticate_upload(req, session)
        if denied is not None:
            return denied
        if req.method == "DELETE":
            with self._lock:
                self._sessions.pop(session_id, None)
            return self._graph_ok(req, 204)
        if self.upload_delay_seconds > 0:
            time.sleep(self.upload_delay_seconds)  # a slow link: each chunk takes this long
        start = self._chunk_start(req, session)
        if isinstance(start, _Reply):
            return start
        return self._store_chunk(req, session_id, session, start)

    def _authenticate_upload(self, req: RecordedRequest, session: _UploadSession) -> _Reply | None:
        if "authorization" in req.headers:
            # The upload URL is pre-authenticated; Graph refuses a bearer
            # token on it.
            return self._unauthorized(
                req,
                "The upload URL is pre-authenticated; do not send an Authorization header.",
            )
        if not secrets.compare_digest(req.query.get("token", "").encode(), session.token.encode()):
            return self._unauthorized(req, "The upload session token is invalid.")
        return None

    def _chunk_start(self, req: RecordedRequest, session: _UploadSession) -> int | _Reply:
        """Where the request's chunk starts in the attachment, once its size and Content-Range
        agree with the body and the session; or Graph's refusal."""
        if len(req.body) > MAX_UPLOAD_CHUNK_BYTES:
            return self._graph_error(
                req,
                413,
                "RequestEntityTooLarge",
                f"A single upload request may carry at most {MAX_UPLOAD_CHUNK_BYTES} bytes.",
            )
        match = _CONTENT_RANGE.fullmatch(req.headers.get("content-range", "").strip())
        if match is None:
            return self._graph_error(
                req, 400, "ErrorInvalidRequest", "Content-Range must be 'bytes START-END/TOTAL'."
            )
        start, end, total = (int(group) for group in match.groups())
        if total != session.size:
            return self._graph_error(
                req,
                400,
                "ErrorInvalidRequest",
                f"Content-Range total {total} differs from the session size {session.size}.",
            )
        if end < start or end >= total or end - start + 1 != len(req.body):
            return self._graph_error(
                req,
                400,
                "ErrorInvalidRequest",
                "Content-Range does not match the number of bytes in the request body.",
            )
        return start

    def _store_chunk(
        self, req: RecordedRequest, session_id: str, session: _UploadSession, start: int
    ) -> _Reply:
        """Append the chunk if it is the next one; the last one adds the attachment to its
        draft and ends the session."""
        with self._lock:
            expected = len(session.received)
            if start != expected:
                return self._graph_error(
                    req,
                    416,
                    "InvalidRange",
                    f"Bytes must be uploaded in order; the next expected byte is {expected}.",
                )
            session.received.extend(req.body)
            complete = len(session.received) == session.size
            if complete:
                self._sessions.pop(session_id, None)
                self._attach_upload(session)
        if complete:
            location = (
                f"{self.base_url}v1.0/users('{session.mailbox}')/messages('{session.message_id}')"
                f"/attachments('{_graph_id()}')"
            )
            reply = self._graph_ok(req, 201)
            reply.headers.append(("Location", location))
            return reply
        # Outlook upload sessions report the next start offset without the
        # trailing "-" (only the initial session says "0-"), and this response
        # spells ExpirationDateTime in PascalCase, as in Graph's walkthrough.
        return self._graph_ok(
            req,
            200,
            {
                "@odata.context": f"{self.base_url}v1.0/$metadata#attachmentSessions/$entity",
                "ExpirationDateTime": session.expires,
                "nextExpectedRanges": [str(len(session.received))],
            },
        )

    def _attach_upload(self, session: _UploadSession) -> None:
        # Called with the lock held. A draft sent or gone meanwhile just loses the upload.
        draft = self._drafts.get((session.mailbox, session.message_id))
        if draft is not None:
            attachment = dict(session.attachment)
            attachment["contentBytes"] = base64.b64encode(session.received).decode("ascii")
            draft.uploaded.append(attachment)

    def _send_draft(self, req: RecordedRequest, mailbox: str, message_id: str) -> _Reply:
        key = (mailbox.lower(), message_id)
        with self._lock:
            draft = self._drafts.get(key)
        if draft is None:
            return self._graph_error(req, 404, "ErrorItemNotFound", _ITEM_NOT_FOUND)

        def accept() -> None:
            # Runs under self._lock; the draft leaves Drafts once sent, so a
            # second /send is a 404 just like in Exchange.
            sent = copy.deepcopy(draft.message)
            sent["attachments"] = list(sent.get("attachments") or []) + copy.deepcopy(
                draft.uploaded
            )
            self._sent.append(sent)
            self._drafts.pop(key, None)

        return self._check_recipients(req, draft.message) or self._deliver(req, mailbox, accept)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GraphStandIn/1.0"
    sys_version = ""
    # Bounds how long an idle keep-alive connection pins a handler thread.
    timeout = 30
    # Buffered so status line, headers and body leave in one write: separate
    # small writes meet Nagle plus delayed ACK and cost ~40 ms per response.
    wbufsize = 64 * 1024
    server: _Server

    def setup(self) -> None:
        sock = self.request
        assert isinstance(sock, ssl.SSLSocket)
        sock.settimeout(self.timeout)
        # The handshake runs here, in the per-connection thread, so one slow
        # client cannot stall the accept loop.
        sock.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        # Tests inspect `requests`; access logs on stderr are only noise.
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        received = time.monotonic()
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(_Reply(400, [("Connection", "close")]))
            return
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            lowered = name.lower()
            headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            at=received,
        )
        self._write(self.server.standin._handle(request))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        body = self.rfile.read(size)
        if len(body) != size:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
            if size == 0:
                # Skip optional trailers up to the blank line.
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def _write(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        # Always framed by length, so keep-alive clients never wait for EOF.
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.body and self.command != "HEAD":
            self.wfile.write(reply.body)
        self.wfile.flush()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: GraphStandIn, context: ssl.SSLContext) -> None:
        self.standin = standin
        self._context = context
        self._connections: set[ssl.SSLSocket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((HOST, 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = self.socket.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # No handshake here: it would run on the accept thread.
        tls = self._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self._connections_lock:
            self._connections.add(tls)
        return tls, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops
            # the SSL object under a handler thread that may be blocked
            # reading it. A plain shutdown just makes that thread see EOF.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up, fail the handshake or idle out are expected
        # in tests; anything else is a stand-in bug worth a traceback.
        if isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)
