"""The Mail Settings page's table of fields agrees with the settings models and the page."""

from __future__ import annotations

import types
from enum import Enum
from html.parser import HTMLParser
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, SecretStr

from api.pages import TEMPLATES
from api.settings_fields import MODELS, SETTINGS_FORM, STORED_PLACEHOLDER, Field, Kind, fields_of
from config.mail_settings import SmtpAuth, SmtpSettings, secret_field

# What the model's type of a field allows a control of each kind to edit.
KINDS_OF: dict[type, set[Kind]] = {
    bool: {Kind.CHECKBOX},
    int: {Kind.NUMBER},
    SecretStr: {Kind.SECRET},
    str: {Kind.TEXT, Kind.MAILBOX, Kind.URL},
    tuple: {Kind.ADDRESSES},
}


def unplaced(model: type[BaseModel], protocol: str) -> set[str]:
    """The fields that the model has and the form not, or the form and the model not."""
    return set(model.model_fields) ^ {f.name for f in fields_of(SETTINGS_FORM, protocol=protocol)}


def base_type(annotation: Any) -> Any:
    """``int | None`` is an int; ``tuple[str, ...]`` a tuple."""
    if get_origin(annotation) in (Union, types.UnionType):
        [annotation] = [each for each in get_args(annotation) if each is not type(None)]
    return get_origin(annotation) or annotation


def choices(annotation: Any) -> set[str]:
    """The values a select must offer: an enum's or a Literal's."""
    if get_origin(annotation) is Literal:
        return {str(value) for value in get_args(annotation)}
    assert isinstance(annotation, type), annotation
    assert issubclass(annotation, Enum), annotation
    return {str(member.value) for member in annotation}


@pytest.mark.parametrize("protocol", sorted(MODELS))
def test_every_field_of_the_model_is_on_the_form_and_no_other(protocol: str) -> None:
    assert unplaced(MODELS[protocol], protocol) == set()


def test_a_field_added_to_the_model_but_not_the_form_is_found() -> None:
    class Wider(SmtpSettings):
        reply_to: str | None = None

    assert unplaced(Wider, "smtp") == {"reply_to"}


@pytest.mark.parametrize("protocol", sorted(MODELS))
def test_each_field_is_edited_as_its_type_says(protocol: str) -> None:
    model = MODELS[protocol]
    for field in fields_of(SETTINGS_FORM, protocol=protocol):
        annotation = model.model_fields[field.name].annotation
        if field.kind is Kind.SELECT:
            offered = {value for value, _ in field.options}
            # The protocol select offers every protocol; the others their type's values.
            expected = set(MODELS) if field.name == "protocol" else choices(annotation)
            assert offered == expected, field.name
        else:
            assert field.kind in KINDS_OF[base_type(annotation)], field.name


@pytest.mark.parametrize("auth", list(SmtpAuth))
def test_an_smtp_authentication_sends_its_own_secret_once(auth: SmtpAuth) -> None:
    sent = [f.name for f in fields_of(SETTINGS_FORM, protocol="smtp", auth=auth)]
    secrets = [
        f.name
        for f in fields_of(SETTINGS_FORM, protocol="smtp", auth=auth)
        if f.kind is Kind.SECRET
    ]
    assert secrets == [secret_field({"protocol": "smtp", "auth": auth})]
    # The script finds a field's control by its name among those the form shows.
    assert len(sent) == len(set(sent))


def test_the_oauth_protocol_sends_each_field_once() -> None:
    sent = [f.name for f in fields_of(SETTINGS_FORM, protocol="oauth")]
    assert len(sent) == len(set(sent))


class Controls(HTMLParser):
    """The form controls of a page (by id) and the ids its labels are for."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, dict[str, str | None]] = {}
        self.labelled: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("input", "select") and found.get("data-kind"):
            assert found["id"] not in self.controls, f"two controls with the id {found['id']}"
            self.controls[str(found["id"])] = found
        if tag == "label":
            self.labelled.append(str(found["for"]))


def every_field() -> list[Field]:
    return [*fields_of(SETTINGS_FORM, protocol="smtp"), *fields_of(SETTINGS_FORM, protocol="oauth")]


def test_the_page_renders_each_field_of_the_table_with_its_label() -> None:
    page = TEMPLATES.env.get_template("settings.html").render(
        key_name="ann",
        csrf_token="token",
        settings_form=SETTINGS_FORM,
        stored_placeholder=STORED_PLACEHOLDER,
    )
    parsed = Controls()
    parsed.feed(page)
    table = {f.id: f for f in every_field()}
    assert set(parsed.controls) == set(table)
    for control_id, control in parsed.controls.items():
        assert (control["name"], control["data-kind"]) == (
            table[control_id].name,
            table[control_id].kind,
        )
        assert parsed.labelled.count(control_id) == 1, control_id
        if control["data-kind"] == Kind.SECRET:
            assert control["data-stored-placeholder"] == STORED_PLACEHOLDER
