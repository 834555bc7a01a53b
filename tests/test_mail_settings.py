"""Mail settings: defaults, validation naming the field, encrypted storage, masking, versions."""

from __future__ import annotations

import pytest
import redis
from cryptography.fernet import Fernet
from pydantic import SecretStr, ValidationError

from config.errors import SecretMismatchError
from config.mail_settings import (
    MAIL_SETTINGS_ADAPTER,
    OAuthSettings,
    SmtpSettings,
    TlsMode,
)
from config.secret_box import SecretBox
from config.settings_store import SETTINGS_KEY, SettingsStore
from tasks.message_input import describe_validation_error


def test_smtp_defaults_match_the_settings_window() -> None:
    settings = SmtpSettings(from_mailbox="robot@example.com")
    assert (settings.server, settings.port, settings.tls) == ("localhost", 587, TlsMode.AUTO)
    assert settings.accept_any_certificate is False
    assert not settings.uses_implicit_tls
    assert SmtpSettings(from_mailbox="r@example.com", port=465).uses_implicit_tls


def test_oauth_defaults() -> None:
    settings = OAuthSettings(from_mailbox="r@example.com", tenant="t", client_id="c")
    assert settings.instance == "https://login.microsoftonline.com/"
    assert settings.api_url == "https://graph.microsoft.com/"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"server": "bad host"}, "server"),
        ({"server": "-x.example.com"}, "server"),
        ({"from_mailbox": "nobody"}, "from_mailbox"),
        ({"username": "a\r\nb"}, "username"),
        ({"tls": "sometimes"}, "tls"),
    ],
)
def test_invalid_smtp_fields_are_named(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SmtpSettings.model_validate({"from_mailbox": "r@example.com", **fields})
    assert describe_validation_error(caught.value).startswith(f"{field}: ")


def test_oauth_urls_must_be_https() -> None:
    with pytest.raises(ValidationError) as caught:
        OAuthSettings(
            from_mailbox="r@example.com", tenant="t", client_id="c", instance="http://login.test/"
        )
    assert describe_validation_error(caught.value).startswith("instance: ")


@pytest.fixture
def store(redis_client: redis.Redis) -> SettingsStore:
    return SettingsStore(redis_client, SecretBox([Fernet.generate_key()]))


def test_public_view_never_shows_the_secret(store: SettingsStore) -> None:
    settings = SmtpSettings(
        from_mailbox="r@example.com", username="u", password=SecretStr("hunter2")
    )
    store.save(settings)
    view = store.public_view()
    assert view is not None
    assert (view["password_set"], view["username"]) == (True, "u")
    assert "password" not in view
    assert "hunter2" not in repr(view) + repr(settings) + str(settings)


def test_history_names_who_changed_which_fields_never_values(store: SettingsStore) -> None:
    store.save(SmtpSettings(from_mailbox="r@example.com", password=SecretStr("s3cret")), by="ann")
    store.save(SmtpSettings(from_mailbox="r@example.com", port=2525), by="bob")
    store.save(OAuthSettings(from_mailbox="r@example.com", tenant="t", client_id="c"), by="cy")
    newest, second, first = store.history()
    assert (first["version"], first["by"]) == (1, "ann")
    assert "password" in first["changed"]
    assert (second["by"], second["changed"]) == ("bob", ["port"])
    assert (newest["protocol"], newest["by"]) == ("oauth", "cy")
    assert {"tenant", "client_id", "instance", "api_url"} <= set(newest["changed"])
    assert "s3cret" not in repr(store.history())


def test_a_form_without_its_secret_is_checked_with_the_stored_one(store: SettingsStore) -> None:
    store.save(SmtpSettings(from_mailbox="r@example.com", username="u", password=SecretStr("pw")))
    edited = SmtpSettings(from_mailbox="r@example.com", username="u", max_messages_per_minute=30)
    resolved = store.with_stored_secret(edited)
    assert resolved.max_messages_per_minute == 30
    secret = resolved.secret()
    assert secret is not None
    assert secret.get_secret_value() == "pw"
    other_protocol = OAuthSettings(from_mailbox="r@example.com", tenant="t", client_id="c")
    assert store.with_stored_secret(other_protocol).secret() is None


def test_stored_document_holds_no_plaintext_secret(
    store: SettingsStore, redis_client: redis.Redis
) -> None:
    store.save(
        SmtpSettings(from_mailbox="r@example.com", username="u", password=SecretStr("s3cr3t-pw"))
    )
    stored = redis_client.hgetall(SETTINGS_KEY).values()
    raw = b"".join(value if isinstance(value, bytes) else value.encode() for value in stored)
    assert b"s3cr3t-pw" not in raw
    loaded = store.require()
    assert isinstance(loaded.settings, SmtpSettings)
    assert loaded.settings.password is not None
    assert loaded.settings.password.get_secret_value() == "s3cr3t-pw"


def test_each_save_is_a_new_version_and_a_missing_secret_is_kept(store: SettingsStore) -> None:
    first = store.save(
        SmtpSettings(from_mailbox="r@example.com", username="u", password=SecretStr("pw"))
    )
    second = store.save(SmtpSettings(from_mailbox="s@example.com", username="u"))
    assert second == first + 1
    loaded = store.require().settings
    assert isinstance(loaded, SmtpSettings)
    assert loaded.from_mailbox == "s@example.com"
    assert loaded.password is not None
    assert loaded.password.get_secret_value() == "pw"


def test_a_secret_is_not_carried_across_protocols(store: SettingsStore) -> None:
    store.save(SmtpSettings(from_mailbox="r@example.com", username="u", password=SecretStr("pw")))
    store.save(OAuthSettings(from_mailbox="r@example.com", tenant="t", client_id="c"))
    loaded = store.require().settings
    assert isinstance(loaded, OAuthSettings)
    assert loaded.client_secret is None


def test_a_wrong_key_gives_a_clear_error(redis_client: redis.Redis) -> None:
    SettingsStore(redis_client, SecretBox([Fernet.generate_key()])).save(
        SmtpSettings(from_mailbox="r@example.com", password=SecretStr("pw"))
    )
    other = SettingsStore(redis_client, SecretBox([Fernet.generate_key()]))
    with pytest.raises(SecretMismatchError, match="OUTBOX_SECRET_KEY"):
        other.load()


def test_discriminated_by_protocol() -> None:
    parsed = MAIL_SETTINGS_ADAPTER.validate_python(
        {"protocol": "oauth", "from_mailbox": "r@example.com", "tenant": "t", "client_id": "c"}
    )
    assert isinstance(parsed, OAuthSettings)


def test_rotation_re_encrypts_with_the_first_key_and_keeps_the_version(
    redis_client: redis.Redis,
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    assert SettingsStore(redis_client, SecretBox([old])).rotate_secret() is False  # nothing yet
    version = SettingsStore(redis_client, SecretBox([old])).save(
        SmtpSettings(from_mailbox="r@example.com", password=SecretStr("pw"))
    )
    both = SettingsStore(redis_client, SecretBox([new, old]))
    assert both.rotate_secret() is True
    rotated = SettingsStore(redis_client, SecretBox([new])).require()
    assert rotated.version == version
    assert rotated.settings.secret() == SecretStr("pw")
    with pytest.raises(SecretMismatchError):
        SettingsStore(redis_client, SecretBox([old])).load()
