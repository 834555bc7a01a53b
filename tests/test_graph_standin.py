"""Self-tests proving peers/graph_standin.py behaves like Entra ID and Microsoft Graph."""

from __future__ import annotations

import base64
import os
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msal
import pytest
import requests
import trustme

from peers.graph_standin import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT,
    MAX_UPLOAD_CHUNK_BYTES,
    GraphStandIn,
    ScriptedResponse,
)

MAILBOX = "sender@contoso.example"
MESSAGE: dict[str, Any] = {
    "subject": "Quarterly report",
    "body": {"contentType": "Text", "content": "Numbers attached."},
    "toRecipients": [{"emailAddress": {"address": "boss@contoso.example"}}],
}


@pytest.fixture
def ca_pem(certificate_authority: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def standin(server_certificate: trustme.LeafCert) -> Iterator[GraphStandIn]:
    with GraphStandIn(server_certificate) as server:
        yield server


@pytest.fixture
def graph(standin: GraphStandIn, client_tls_context: ssl.SSLContext) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=standin.base_url, verify=client_tls_context, trust_env=False
    ) as client:
        yield client


def token_for(standin: GraphStandIn, graph: httpx.Client) -> str:
    response = graph.post(
        f"{DEFAULT_TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "scope": standin.base_url + ".default",
        },
    )
    assert response.status_code == 200
    token: str = response.json()["access_token"]
    return token


def app_for(
    standin: GraphStandIn, http_client: object, secret: str = DEFAULT_CLIENT_SECRET
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        DEFAULT_CLIENT_ID,
        client_credential=secret,
        authority=standin.base_url + DEFAULT_TENANT,
        instance_discovery=False,
        http_client=http_client,
    )


def requests_session(ca_pem: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_pem
    return session


def send_mail(graph: httpx.Client, token: str | None, mailbox: str = MAILBOX) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return graph.post(
        f"v1.0/users/{mailbox.replace('@', '%40')}/sendMail",
        json={"message": MESSAGE, "saveToSentItems": False},
        headers=headers,
    )


def test_msal_with_requests_session_gets_a_token_then_uses_its_cache(
    standin: GraphStandIn, ca_pem: str
) -> None:
    with requests_session(ca_pem) as session:
        app = app_for(standin, session)
        first = app.acquire_token_for_client(scopes=[standin.base_url + ".default"])
        second = app.acquire_token_for_client(scopes=[standin.base_url + ".default"])

    assert first["token_source"] == "identity_provider"
    assert first["expires_in"] == 3600
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert standin.token_requests == 1
    # instance_discovery=False: one OIDC discovery GET, then the token POST.
    discovery, token = standin.requests
    assert (discovery.method, discovery.path) == (
        "GET",
        f"/{DEFAULT_TENANT}/v2.0/.well-known/openid-configuration",
    )
    assert token.path == f"/{DEFAULT_TENANT}/oauth2/v2.0/token"
    form = dict(httpx.QueryParams(token.body.decode()))
    assert form["grant_type"] == "client_credentials"
    assert form["client_secret"] == DEFAULT_CLIENT_SECRET


def test_msal_wrong_secret_is_invalid_client_without_the_secret(
    standin: GraphStandIn, ca_pem: str
) -> None:
    with requests_session(ca_pem) as session:
        app = app_for(standin, session, secret="leaked-wrong-secret")
        result = app.acquire_token_for_client(scopes=[standin.base_url + ".default"])

    assert result["error"] == "invalid_client"
    assert 7000215 in result["error_codes"]
    assert result["error_description"].startswith("AADSTS7000215: ")
    assert "leaked-wrong-secret" not in result["error_description"]
    assert standin.token_requests == 1


def test_msal_accepts_an_httpx_client(
    standin: GraphStandIn, client_tls_context: ssl.SSLContext
) -> None:
    with httpx.Client(verify=client_tls_context, trust_env=False) as http_client:
        app = app_for(standin, http_client)
        first = app.acquire_token_for_client(scopes=[standin.base_url + ".default"])
        second = app.acquire_token_for_client(scopes=[standin.base_url + ".default"])
        bad = app_for(standin, http_client, secret="nope").acquire_token_for_client(
            scopes=[standin.base_url + ".default"]
        )

    assert "access_token" in first
    assert second["access_token"] == first["access_token"]
    assert second["token_source"] == "cache"
    assert bad["error"] == "invalid_client"
    assert standin.token_requests == 2


def test_unknown_tenant_makes_msal_raise_value_error(
    standin: GraphStandIn, client_tls_context: ssl.SSLContext
) -> None:
    with (
        httpx.Client(verify=client_tls_context, trust_env=False) as http_client,
        pytest.raises(ValueError, match="Unable to get authority configuration") as raised,
    ):
        msal.ConfidentialClientApplication(
            DEFAULT_CLIENT_ID,
            client_credential=DEFAULT_CLIENT_SECRET,
            authority=standin.base_url + "someone-else",
            instance_discovery=False,
            http_client=http_client,
        )
    # The AADSTS detail survives only on the implicitly chained exception.
    assert "AADSTS90002" in str(raised.value.__context__)
    assert standin.token_requests == 0


def test_token_endpoint_errors(standin: GraphStandIn, graph: httpx.Client) -> None:
    def post(**fields: str) -> dict[str, Any]:
        form = {
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "scope": "https://graph.microsoft.com/.default",
        } | fields
        body: dict[str, Any] = graph.post(f"{DEFAULT_TENANT}/oauth2/v2.0/token", data=form).json()
        return body

    assert post(client_id="stranger")["error"] == "unauthorized_client"
    assert post(grant_type="password")["error"] == "unsupported_grant_type"
    assert post(scope="Mail.Send")["error_codes"] == [1002012]
    assert standin.token_requests == 3
    unknown = graph.post("elsewhere/oauth2/v2.0/token", data={"grant_type": "client_credentials"})
    assert unknown.status_code == 400
    assert unknown.json()["error_codes"] == [90002]


def test_send_mail_with_token_is_accepted_and_recorded(
    standin: GraphStandIn, graph: httpx.Client
) -> None:
    response = send_mail(graph, token_for(standin, graph))

    assert response.status_code == 202
    assert response.content == b""
    assert standin.sent_messages() == [MESSAGE]
    recorded = standin.requests[-1]
    assert recorded.path == "/v1.0/users/sender%40contoso.example/sendMail"
    assert recorded.json()["saveToSentItems"] is False


def test_send_mail_rejections(standin: GraphStandIn, graph: httpx.Client) -> None:
    missing = send_mail(graph, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert missing.json()["error"]["message"] == "Access token is empty."
    assert send_mail(graph, "made-up").status_code == 401

    auth = {"Authorization": f"Bearer {token_for(standin, graph)}"}
    url = f"v1.0/users/{MAILBOX}/sendMail"
    garbled = graph.post(
        url, content=b"{not json", headers=auth | {"Content-Type": "application/json"}
    )
    assert garbled.status_code == 400
    no_message = graph.post(url, json={"saveToSentItems": True}, headers=auth)
    assert no_message.json()["error"]["code"] == "ErrorInvalidRequest"
    nobody = graph.post(url, json={"message": {"subject": "x"}}, headers=auth)
    assert nobody.status_code == 400
    assert nobody.json()["error"]["code"] == "ErrorInvalidRecipients"
    assert graph.get("v1.0/users/x/mailFolders", headers=auth).status_code == 404
    assert standin.sent_messages() == []


def test_scripted_faults_are_returned_as_given(standin: GraphStandIn, graph: httpx.Client) -> None:
    throttle = {"error": {"code": "TooManyRequests", "message": "Slow down."}}
    standin.send_mail_faults.append(ScriptedResponse(429, {"Retry-After": "2"}, throttle))
    token = token_for(standin, graph)

    first = send_mail(graph, token)
    second = send_mail(graph, token)

    assert first.status_code == 429
    assert first.headers["Retry-After"] == "2"
    assert first.json() == throttle
    assert second.status_code == 202
    assert len(standin.sent_messages()) == 1
    assert standin.send_mail_faults == []


def test_invalidated_and_expired_tokens_are_refused(
    server_certificate: trustme.LeafCert, client_tls_context: ssl.SSLContext
) -> None:
    with (
        GraphStandIn(server_certificate) as standin,
        httpx.Client(
            base_url=standin.base_url, verify=client_tls_context, trust_env=False
        ) as graph,
    ):
        token = token_for(standin, graph)
        standin.invalidate_tokens()
        stale = send_mail(graph, token)
        assert stale.status_code == 401
        assert stale.json()["error"]["message"] == "Access token has expired or is not yet valid."
        assert send_mail(graph, token_for(standin, graph)).status_code == 202

        standin.token_lifetime_seconds = 0
        assert send_mail(graph, token_for(standin, graph)).status_code == 401


def test_large_attachment_via_draft_and_upload_session(
    standin: GraphStandIn, graph: httpx.Client, client_tls_context: ssl.SSLContext
) -> None:
    payload = os.urandom(5_000_000)
    auth = {"Authorization": f"Bearer {token_for(standin, graph)}"}
    draft = graph.post(f"v1.0/users/{MAILBOX}/messages", json=MESSAGE, headers=auth)
    assert draft.status_code == 201
    message_id = draft.json()["id"]
    session = graph.post(
        f"v1.0/users/{MAILBOX}/messages/{message_id}/attachments/createUploadSession",
        json={
            "AttachmentItem": {
                "attachmentType": "file",
                "name": "report.bin",
                "size": len(payload),
                "contentType": "application/octet-stream",
            }
        },
        headers=auth,
    )
    assert session.status_code == 201
    assert session.json()["nextExpectedRanges"] == ["0-"]
    upload_url = session.json()["uploadUrl"]

    def put(start: int, end: int, headers: dict[str, str] | None = None) -> httpx.Response:
        return uploader.put(
            upload_url,
            content=payload[start:end],
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{end - 1}/{len(payload)}",
            }
            | (headers or {}),
        )

    # A separate client: the pre-authenticated URL must not see the bearer token.
    with httpx.Client(verify=client_tls_context, trust_env=False) as uploader:
        assert put(0, MAX_UPLOAD_CHUNK_BYTES + 1).status_code == 413
        assert put(0, 10, auth).status_code == 401
        assert put(10, 20).status_code == 416
        first = put(0, MAX_UPLOAD_CHUNK_BYTES)
        assert first.status_code == 200
        assert first.json()["nextExpectedRanges"] == [str(MAX_UPLOAD_CHUNK_BYTES)]
        last = put(MAX_UPLOAD_CHUNK_BYTES, len(payload))
        assert last.status_code == 201
        assert last.content == b""
        assert "/attachments(" in last.headers["Location"]

    sent = graph.post(f"v1.0/users/{MAILBOX}/messages/{message_id}/send", headers=auth)
    assert sent.status_code == 202
    [message] = standin.sent_messages()
    assert message["subject"] == MESSAGE["subject"]
    [attachment] = message["attachments"]
    assert attachment["@odata.type"] == "#microsoft.graph.fileAttachment"
    assert attachment["name"] == "report.bin"
    assert base64.b64decode(attachment["contentBytes"]) == payload
    chunks = [len(r.body) for r in standin.requests if r.method == "PUT" and r.body]
    assert chunks[-2:] == [MAX_UPLOAD_CHUNK_BYTES, len(payload) - MAX_UPLOAD_CHUNK_BYTES]
    again = graph.post(f"v1.0/users/{MAILBOX}/messages/{message_id}/send", headers=auth)
    assert again.status_code == 404


def test_mailbox_concurrency_limit_throttles_the_overflow(
    standin: GraphStandIn, graph: httpx.Client
) -> None:
    standin.mailbox_concurrency_limit = 4
    standin.send_mail_delay_seconds = 0.2
    token = token_for(standin, graph)
    start = threading.Barrier(8)

    def one(_: int) -> httpx.Response:
        start.wait()
        return send_mail(graph, token)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(one, range(8)))

    statuses = [response.status_code for response in responses]
    assert standin.throttled >= 1
    assert statuses.count(429) == standin.throttled
    assert statuses.count(202) == 8 - standin.throttled
    assert standin.max_in_flight == 4
    rejected = next(response for response in responses if response.status_code == 429)
    assert rejected.headers["Retry-After"] == "1"
    assert rejected.json()["error"]["code"] == "ApplicationThrottled"
