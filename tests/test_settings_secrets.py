"""Secrets stay where the administrator put them: a stored secret is reused only with the
settings it was saved for, URLs cannot hide another host behind an @, and what an SMTP server
quotes of a password or token never reaches a delivery record, an attempt or a log."""

from __future__ import annotations

import asyncio
import base64
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from api.app import create_app
from config.api_keys import ApiKeyStore, Role
from config.errors import ConfigurationError, InvalidInputError, TransientError
from config.mail_settings import OAuthSettings, SmtpSettings, TlsMode
from config.secret_box import SecretBox
from config.settings_store import SettingsStore
from peers.graph_standin import GraphStandIn
from peers.processes import run_outbox
from peers.redis_server import free_port
from peers.smtp_peer import HOST, SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tasks.message_input import describe_validation_error
from tasks.producer import Producer
from tasks.settings_checks import check_connection
from tests.support.in_process_worker import InProcessWorker
from tests.support.smtp_delivery import configure, enqueue
from worker.records import DeliveryRecord, DeliveryStatus, RecipientState
from worker.scrubbing import MASK, scrub, scrub_error

USER, PASSWORD = "robot", "Stored-Pa55word-of-the-mailbox"
TENANT, CLIENT_ID, CLIENT_SECRET = "contoso", "app-client-id", "Stored-Client-Secret"
EVIL = "https://login.microsoftonline.com@evil.example/"


def _smtp(**changes: Any) -> SmtpSettings:
    fields: dict[str, Any] = {
        "server": "mail.example.com",
        "port": 587,
        "from_mailbox": "robot@example.com",
        "username": USER,
        "tls": "starttls",
        **changes,
    }
    return SmtpSettings.model_validate(fields)


def _smtp_oauth2(**changes: Any) -> SmtpSettings:
    app = {"auth": "oauth2", "tenant": TENANT, "client_id": CLIENT_ID, "username": None}
    return _smtp(**{**app, **changes})


def _graph(**changes: Any) -> OAuthSettings:
    fields = {"from_mailbox": "robot@contoso.com", "tenant": TENANT, "client_id": CLIENT_ID}
    return OAuthSettings.model_validate({**fields, **changes})


@pytest.fixture
def store(redis_client: redis.Redis) -> SettingsStore:
    return SettingsStore(redis_client, SecretBox([Fernet.generate_key()]))


# -- a stored secret is reused only with the settings it was saved for ------------------------

MOVED_SECRETS = [
    # (the stored settings, the same with one field changed, the field, its name in the reason)
    (_smtp, {"server": "evil.example"}, "password", "the server"),
    (_smtp, {"port": 25}, "password", "the port"),
    (_smtp, {"tls": "none"}, "password", "the TLS mode"),
    (_smtp, {"accept_any_certificate": True}, "password", "accept any certificate"),
    (_smtp, {"username": "someone-else"}, "password", "the username"),
    (_smtp_oauth2, {"server": "evil.example"}, "client_secret", "the server"),
    (_smtp_oauth2, {"tenant": "fabrikam"}, "client_secret", "the tenant"),
    (_smtp_oauth2, {"client_id": "other-app"}, "client_secret", "the client ID"),
    (_smtp_oauth2, {"instance": "https://login.evil.example/"}, "client_secret", "the instance"),
    (
        _smtp_oauth2,
        {"scope": "https://graph.microsoft.com/.default"},
        "client_secret",
        "the scope",
    ),
    (_graph, {"instance": "https://login.evil.example/"}, "client_secret", "the instance"),
    (_graph, {"api_url": "https://graph.evil.example/"}, "client_secret", "the API URL"),
    (_graph, {"tenant": "fabrikam"}, "client_secret", "the tenant"),
    (_graph, {"client_id": "other-app"}, "client_secret", "the client ID"),
]


@pytest.mark.parametrize(("build", "change", "field", "named"), MOVED_SECRETS)
def test_a_stored_secret_is_not_sent_where_it_was_not_saved_for(
    store: SettingsStore, build: Any, change: dict[str, Any], field: str, named: str
) -> None:
    store.save(build(**{field: SecretStr(PASSWORD)}))
    moved = build(**change)
    for use in (store.with_stored_secret, store.save):
        with pytest.raises(InvalidInputError) as refused:
            use(moved)
        assert refused.value.field == field
        secret = field.replace("_", " ")
        assert str(refused.value) == (
            f"{field}: {named} changed: enter the {secret} again (a saved {secret} is used "
            "only with the settings it was saved for)"
        )
    assert store.require().version == 1  # nothing was saved
    # With the secret entered again, the settings are saved and used as given.
    again = build(**change, **{field: SecretStr("entered-again")})
    assert store.with_stored_secret(again).secret() == SecretStr("entered-again")
    store.save(again)
    assert store.require().settings.secret() == SecretStr("entered-again")


def test_every_changed_field_is_named(store: SettingsStore) -> None:
    store.save(_smtp(password=SecretStr(PASSWORD)))
    with pytest.raises(InvalidInputError, match=r"the server, the port and the TLS mode changed"):
        store.with_stored_secret(_smtp(server="evil.example", port=25, tls="none"))


@pytest.mark.parametrize(
    ("build", "change"),
    [
        (_smtp, {"from_mailbox": "other@example.com", "max_messages_per_minute": 30}),
        (_smtp_oauth2, {"username": "other@example.com", "max_recipients_per_day": 100}),
        (_graph, {"from_mailbox": "other@contoso.com"}),
    ],
)
def test_a_stored_secret_is_kept_while_where_it_goes_is_unchanged(
    store: SettingsStore, build: Any, change: dict[str, Any]
) -> None:
    stored = build(**{"password" if build is _smtp else "client_secret": SecretStr(PASSWORD)})
    store.save(stored)
    edited = build(**change)
    assert store.with_stored_secret(edited).secret() == SecretStr(PASSWORD)
    store.save(edited)
    assert store.require().settings.secret() == SecretStr(PASSWORD)


def test_without_a_login_no_password_is_kept_or_asked_for(store: SettingsStore) -> None:
    store.save(_smtp(password=SecretStr(PASSWORD)))
    store.save(_smtp(server="relay.example.com", username=None))
    assert store.require().settings.secret() is None


# -- URLs cannot hide another host behind an @ -------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field", "value"),
    [
        (_graph, "instance", EVIL),
        (_graph, "api_url", "https://graph.microsoft.com@evil.example/"),
        (_graph, "api_url", "https://user:pw@graph.microsoft.com/"),
        (_smtp_oauth2, "instance", EVIL),
        (_smtp_oauth2, "scope", "https://outlook.office365.com@evil.example/.default"),
        (_graph, "instance", "https://evil.example\\@login.microsoftonline.com/"),
        (_graph, "instance", "https://login.microsoftonline.com:99999/"),
        (_graph, "tenant", "contoso/../../evil"),
        (_graph, "tenant", "contoso?x=1"),
        (_smtp_oauth2, "tenant", "@evil.example"),
    ],
)
def test_urls_with_a_user_name_or_another_host_are_refused(
    build: Any, field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        build(**{field: value})
    assert describe_validation_error(refused.value).startswith(f"{field}: ")


def test_a_user_name_in_a_url_is_said_to_be_the_problem() -> None:
    with pytest.raises(ValidationError) as refused:
        _graph(instance=EVIL)
    assert "user name or password" in describe_validation_error(refused.value)


@pytest.mark.parametrize(
    "url", ["https://login.microsoftonline.com/", "https://127.0.0.1:8443", "https://[::1]/v1/"]
)
def test_plain_https_urls_are_accepted(url: str) -> None:
    assert _graph(instance=url).instance.startswith(url)


# -- a careless SMTP server, quoting the credentials it was sent --------------------------------


class _QuotingHandler:
    """aiosmtpd hooks of a careless server: every login is refused with a reply that quotes
    what the client sent, decoded and as it came over the wire."""

    def __init__(self) -> None:
        self.received: list[str] = []  # the secrets it was sent

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        blob = args[1]
        _, _, password = base64.b64decode(blob).decode().split("\0")
        return self._refuse(password, blob)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        if len(args) == 1:  # no initial response: ask for the user name first
            await server.challenge_auth("Username:")
        password = await server.challenge_auth("Password:")
        assert isinstance(password, bytes)
        return self._refuse(password.decode(), base64.b64encode(password).decode())

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        blob = args[1]
        token = base64.b64decode(blob).decode().split("auth=Bearer ", 1)[1].rstrip("\x01")
        return self._refuse(token, blob)

    def _refuse(self, secret: str, blob: str) -> AuthResult:
        self.received.append(secret)
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 {secret!r} ({blob}) is not valid"
        )


class QuotingPeer:
    """A plain-text SMTP server on 127.0.0.1 that offers one login mechanism and quotes the
    credentials it was sent in its refusal."""

    def __init__(self, mechanism: str) -> None:
        self.handler = _QuotingHandler()
        self.port = free_port()
        others = [m for m in ("PLAIN", "LOGIN", "XOAUTH2") if m != mechanism]
        self._controller = Controller(
            self.handler,
            hostname=HOST,
            port=self.port,
            server_hostname="localhost",
            auth_require_tls=False,
            auth_exclude_mechanism=others,
        )

    def __enter__(self) -> QuotingPeer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


# -- the HTTP API and the command line go through the same check -------------------------------


@pytest.fixture
def client(outbox_context: OutboxContext) -> Iterator[TestClient]:
    with TestClient(create_app(outbox_context)) as running:
        yield running


@pytest.fixture
def admin(outbox_context: OutboxContext) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {ApiKeyStore(outbox_context.redis).create('ann', Role.ADMIN)}"
    }


@pytest.fixture
def mailbox_server(server_certificate: trustme.LeafCert) -> Iterator[SmtpPeer]:
    """The server the password was saved for: STARTTLS and a login."""
    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={USER: PASSWORD}
    ) as running:
        yield running


def _form(peer_host: str, port: int, **changes: Any) -> dict[str, Any]:
    return {
        "protocol": "smtp",
        "server": peer_host,
        "port": port,
        "from_mailbox": "robot@example.com",
        "username": USER,
        "tls": "starttls",
        **changes,
    }


@pytest.mark.parametrize("operation", ["PUT", "test-connection", "test-email"])
def test_a_stolen_session_cannot_send_the_stored_password_to_its_own_server(
    client: TestClient,
    admin: dict[str, str],
    mailbox_server: SmtpPeer,
    outbox_context: OutboxContext,
    operation: str,
) -> None:
    saved = _form(mailbox_server.host, mailbox_server.port, password=PASSWORD)
    assert client.put("/api/settings/mail", headers=admin, json=saved).status_code == 200
    with QuotingPeer("PLAIN") as attacker:
        # The form's password left empty ("saved; leave empty to keep"), the server changed.
        moved = _form(HOST, attacker.port, tls="none")
        if operation == "PUT":
            answer = client.put("/api/settings/mail", headers=admin, json=moved)
        else:
            answer = client.post(f"/api/settings/mail/{operation}", headers=admin, json=moved)
        assert answer.status_code == 422, answer.text
        problem = answer.json()
        assert (problem["field"], problem["detail"]) == (
            "password",
            "the port and the TLS mode changed: enter the password again "
            "(a saved password is used only with the settings it was saved for)",
        )
        assert attacker.handler.received == []
    assert outbox_context.settings_store.require().version == 1
    # Where it was saved for, the empty password still means the stored one.
    kept = _form(mailbox_server.host, mailbox_server.port, max_messages_per_minute=60)
    checked = client.post("/api/settings/mail/test-connection", headers=admin, json=kept)
    assert checked.json()["ok"] is True, checked.text


def test_a_graph_form_pointing_elsewhere_must_enter_the_client_secret(
    client: TestClient, admin: dict[str, str]
) -> None:
    graph = {
        "protocol": "oauth",
        "from_mailbox": "robot@contoso.com",
        "tenant": TENANT,
        "client_id": CLIENT_ID,
    }
    saved = client.put(
        "/api/settings/mail", headers=admin, json={**graph, "client_secret": CLIENT_SECRET}
    )
    assert saved.status_code == 200
    moved = {**graph, "api_url": "https://graph.evil.example/"}
    answer = client.post("/api/settings/mail/test-email", headers=admin, json=moved)
    assert answer.status_code == 422
    assert answer.json()["field"] == "client_secret"
    assert answer.json()["detail"].startswith("the API URL changed: enter the client secret")


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"protocol": "oauth", "instance": EVIL}, "instance"),
        ({"protocol": "oauth", "api_url": "https://graph.microsoft.com@evil.example/"}, "api_url"),
        ({"protocol": "smtp", "auth": "oauth2", "instance": EVIL}, "instance"),
        (
            {"protocol": "smtp", "auth": "oauth2", "scope": "https://a@evil.example/.default"},
            "scope",
        ),
    ],
)
def test_the_api_names_a_url_with_a_user_name(
    client: TestClient, admin: dict[str, str], form: dict[str, Any], field: str
) -> None:
    body = {
        "from_mailbox": "robot@contoso.com",
        "tenant": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **form,
    }
    answer = client.put("/api/settings/mail", headers=admin, json=body)
    assert answer.status_code == 422
    assert answer.json()["field"] == field
    assert "user name or password" in answer.json()["detail"]


def test_the_cli_asks_for_the_password_again_when_the_server_changed(
    outbox_env: dict[str, str], outbox_context: OutboxContext
) -> None:
    login = ["--from-mailbox", "robot@example.com", "--username", USER]
    saved = run_outbox(
        outbox_env,
        "settings",
        "set",
        "smtp",
        *login,
        "--server",
        "mail.example.com",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert saved.returncode == 0, saved.stderr
    moved = run_outbox(
        outbox_env, "settings", "set", "smtp", *login, "--server", "evil.example", "--tls", "none"
    )
    assert moved.returncode == 2
    assert moved.stderr.startswith(
        "error: password: the server and the TLS mode changed: enter the password again"
    )
    assert outbox_context.settings_store.require().version == 1


# -- what an SMTP server quotes of a secret is scrubbed ----------------------------------------


def _plain_forms(user: str, password: str) -> list[str]:
    """The password as a server may quote it: plain, and as AUTH LOGIN and PLAIN send it."""
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
    ]


def _assert_hidden(
    secrets: list[str], record: DeliveryRecord, log: pytest.LogCaptureFixture
) -> None:
    """None of ``secrets`` in the record, nor in what outbox logged (the test server's own
    log, ``mail.log``, shows what it was sent and said: it is not outbox's)."""
    logged = "\n".join(r.getMessage() for r in log.records if not r.name.startswith("mail.log"))
    for secret in secrets:
        assert secret not in repr(record)
        assert secret not in logged


def test_scrub_masks_every_secret_whole() -> None:
    assert scrub("535 pw and pw-longer", ["pw", "pw-longer", ""]) == f"535 {MASK} and {MASK}"


def test_a_scrubbed_error_keeps_its_data_and_loses_the_chain_that_quoted_the_secret() -> None:
    def translated() -> TransientError:
        try:
            raise OSError("library error quoting s3cret")
        except OSError as exc:
            error = TransientError("451 said s3cret", reply="said s3cret", retry_after=5.0)
            error.__cause__ = exc
            return error

    error = translated()
    assert scrub_error(error, ["s3cret"]) is error
    assert (str(error), error.reply, error.retry_after) == (f"451 said {MASK}", f"said {MASK}", 5.0)
    assert "s3cret" not in "".join(traceback.format_exception(error))
    untouched = translated()
    assert scrub_error(untouched, ["other"]).__cause__ is not None  # nothing hidden: kept


def test_smtp_replies_quoting_the_password_are_scrubbed(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    forms = _plain_forms(USER, PASSWORD)
    with smtp_peer(credentials={USER: PASSWORD}) as peer:
        configure(
            outbox_context, peer, tls=TlsMode.NONE, username=USER, password=SecretStr(PASSWORD)
        )
        # The first attempt fails at DATA, the second reaches alice; ghost is refused twice.
        peer.data_replies.append(f"451 4.3.0 try again, AUTH PLAIN {forms[2]} seen")
        peer.rcpt_replies["ghost@example.com"] = (
            f"550 5.1.1 no such user (you are {USER} / {forms[0]} / {forms[1]})"
        )
        delivery_id = enqueue(producer, to=["alice@example.com", "ghost@example.com"])
        assert worker.settle(delivery_id) == "partially_sent"
    record = outbox_context.deliveries.get(delivery_id)
    first, second = record.attempts
    assert (first.code, first.reply) == (451, f"4.3.0 try again, AUTH PLAIN {MASK} seen")
    assert first.error is not None
    assert f"451 4.3.0 try again, AUTH PLAIN {MASK} seen" in first.error
    refusal = f"5.1.1 no such user (you are {USER} / {MASK} / {MASK})"
    assert record.last_error is not None
    assert refusal in record.last_error
    assert second.error == record.last_error
    ghost = next(r for r in record.recipients if r.address == "ghost@example.com")
    assert (ghost.status, ghost.reply) == (RecipientState.FAILED, refusal)
    _assert_hidden(forms, record, caplog)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_login_refusal_quoting_the_password_is_scrubbed(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    caplog: pytest.LogCaptureFixture,
    mechanism: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    with QuotingPeer(mechanism) as peer:
        settings = _smtp(server=HOST, port=peer.port, tls="none", password=SecretStr(PASSWORD))
        outbox_context.settings_store.save(settings)
        delivery_id = enqueue(producer)
        assert worker.deliver(delivery_id) == ["failed"]
        with pytest.raises(ConfigurationError) as checked:
            asyncio.run(check_connection(settings, outbox_context.transport_options))
        assert peer.handler.received == [PASSWORD, PASSWORD]
    record = outbox_context.deliveries.get(delivery_id)
    assert record.status is DeliveryStatus.FAILED
    assert record.last_error is not None
    assert f"535 5.7.8 '{MASK}' ({MASK}) is not valid" in record.last_error
    _assert_hidden(_plain_forms(USER, PASSWORD), record, caplog)
    shown = str(checked.value) + "".join(traceback.format_exception(checked.value))
    assert not any(form in shown for form in _plain_forms(USER, PASSWORD))


def test_a_login_refusal_quoting_the_access_token_is_scrubbed(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    server_certificate: trustme.LeafCert,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        GraphStandIn(
            server_certificate, tenant=TENANT, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        ) as identity,
        QuotingPeer("XOAUTH2") as peer,
    ):
        outbox_context.settings_store.save(
            _smtp_oauth2(
                server=HOST,
                port=peer.port,
                tls="none",
                instance=identity.base_url,
                client_secret=SecretStr(CLIENT_SECRET),
            )
        )
        delivery_id = enqueue(producer)
        assert worker.deliver(delivery_id) == ["failed"]
        tokens = peer.handler.received
    assert len(tokens) == 2  # the cached token, then a fresh one: both refused, both quoted
    record = outbox_context.deliveries.get(delivery_id)
    assert record.last_error is not None
    assert f"535 5.7.8 '{MASK}' ({MASK}) is not valid" in record.last_error
    login = "robot@example.com"
    quoted = [
        *tokens,
        *(
            base64.b64encode(f"user={login}\x01auth=Bearer {t}\x01\x01".encode()).decode()
            for t in tokens
        ),
        CLIENT_SECRET,
    ]
    _assert_hidden(quoted, record, caplog)
