"""The KMS HTTP layer (kms_adapter/http11.py) against a loopback server that answers scripted bytes.

Each test scripts what the server writes for each request it reads, so the framings a real KMS or a
proxy may use (and the broken ones) are tested byte for byte, with the connections the client opened
counted at the server.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from scripted_kms import LOSE, Reply, ScriptedKms, chunked, http

from kms_adapter.errors import KmsUnavailable
from kms_adapter.http11 import parse_endpoint, refuse_proxy
from kms_adapter.simulator.soap import mutation_response, query_clients_response
from kms_adapter.simulator.state import Answer
from kms_adapter.soap_client import SoapKmsClient
from schemas.records import KmsCommand, Message, MessageKind, Operation, Product, Source, TextMode

T = TypeVar("T")
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
PING = query_clients_response(Answer("OK", "Success"), [])


def against(replies: list[Reply], call: Callable[[SoapKmsClient], Awaitable[T]], *,
            endpoint: Callable[[ScriptedKms], str] = lambda kms: kms.endpoint,
            **options: object) -> tuple[T, ScriptedKms]:
    async def main() -> tuple[T, ScriptedKms]:
        async with ScriptedKms(replies) as kms:
            options.setdefault("timeout", 5.0)
            client = SoapKmsClient(endpoint(kms), "ALUX", "token", **options)  # type: ignore[arg-type]
            try:
                return await call(client), kms
            finally:
                await client.aclose()

    return asyncio.run(main())


def failing(replies: list[Reply], call: Callable[[SoapKmsClient], Awaitable[object]],
            **options: object) -> tuple[KmsUnavailable, ScriptedKms]:
    async def catching(client: SoapKmsClient) -> KmsUnavailable:
        with pytest.raises(KmsUnavailable) as info:
            await call(client)
        return info.value

    return against(replies, catching, **options)  # type: ignore[arg-type]  # options are the client's


async def ping_twice(client: SoapKmsClient) -> None:
    await client.ping()
    await client.ping()


def command(operation: Operation, **fields: object) -> KmsCommand:
    return KmsCommand(idempotency_key=f"k-{operation.value}", operation=operation, secure_client_id="C1",
                      source=Source(process_name="test"), created_at=NOW, **fields)  # type: ignore[arg-type]


# --- framing ----------------------------------------------------------------------------------------


def test_transfer_encoding_wins_over_content_length_and_that_connection_is_not_reused() -> None:
    both = chunked(PING, "Content-Length: 7")  # a Content-Length that would cut the body short
    _, kms = against([Reply(both)], ping_twice)
    assert kms.connections == 2 and len(kms.requests) == 2


def test_a_chunked_answer_with_an_extension_and_a_trailer_is_read_and_its_connection_kept() -> None:
    _, kms = against([Reply(chunked(PING))], ping_twice)
    assert kms.connections == 1 and len(kms.requests) == 2


def test_a_length_delimited_http11_answer_keeps_its_connection() -> None:
    _, kms = against([Reply(http(PING))], ping_twice)
    assert kms.connections == 1


def test_an_http10_answer_without_length_ends_when_the_server_closes_and_is_not_reused() -> None:
    reply = Reply(http(PING, status="HTTP/1.0 200 OK", length=False), close=True)
    _, kms = against([reply], ping_twice)
    assert kms.connections == 2


def test_an_http10_answer_that_offers_keep_alive_is_still_not_reused() -> None:
    _, kms = against([Reply(http(PING, "Connection: keep-alive", status="HTTP/1.0 200 OK"))], ping_twice)
    assert kms.connections == 2


def test_connection_close_is_honoured() -> None:
    _, kms = against([Reply(http(PING, "Connection: close"))], ping_twice)
    assert kms.connections == 2


def test_the_servers_keep_alive_timeout_shortens_how_long_a_connection_is_reused() -> None:
    _, kms = against([Reply(http(PING, "Keep-Alive: timeout=1"))], ping_twice)
    assert kms.connections == 2  # reusable for timeout - 1 s = 0 s


def test_an_interim_100_continue_is_skipped() -> None:
    _, kms = against([Reply(b"HTTP/1.1 100 Continue\r\n\r\n" + http(PING))], lambda c: c.ping())
    assert len(kms.requests) == 1


def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    _, kms = against([Reply(http(PING) + b"HTTP/1.1 200 OK\r\n")], ping_twice)
    assert kms.connections == 2


def test_a_body_cut_short_is_a_network_error_not_a_truncated_answer() -> None:
    error, _ = failing([Reply(http(PING)[:-20], close=True)], lambda c: c.ping())
    assert error.kind == "network" and error.maybe_applied


def test_a_malformed_status_line_is_a_bad_response() -> None:
    error, _ = failing([Reply(b"HTXP/1.1 200 OK\r\n\r\n", close=True)], lambda c: c.ping())
    assert error.kind == "bad_response" and "malformed HTTP" in str(error)


# --- size caps --------------------------------------------------------------------------------------


def test_an_announced_body_over_the_cap_fails_at_once_without_reading_it() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"
    # the server then sends nothing and keeps the connection open: waiting for the body would time out
    error, _ = failing([Reply(head, hang=True)], lambda c: c.ping(), max_response_bytes=100_000, timeout=30.0)
    assert error.kind == "response_too_large" and "KMSBRIDGE_KMS__MAX_RESPONSE_BYTES" in str(error)


def test_an_endless_chunked_body_fails_at_the_cap() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    error, _ = failing([Reply(head, stream=b"10000\r\n" + b" " * 0x10000 + b"\r\n")], lambda c: c.ping(),
                       max_response_bytes=1_000_000, timeout=30.0)
    assert error.kind == "response_too_large"


def test_an_endless_header_section_fails_at_64_kib() -> None:
    error, _ = failing([Reply(b"HTTP/1.1 200 OK\r\n", stream=b"X-Filler: " + b"y" * 1000 + b"\r\n")],
                       lambda c: c.ping(), timeout=30.0)
    assert error.kind == "response_too_large" and "header section" in str(error)


def test_an_answer_at_the_cap_is_read() -> None:
    _, kms = against([Reply(http(PING))], lambda c: c.ping(), max_response_bytes=len(PING))
    assert len(kms.requests) == 1


# --- never resend an effect -------------------------------------------------------------------------


def test_a_stale_kept_alive_connection_is_resent_once_for_an_absolute_write() -> None:
    answer = http(mutation_response("overwriteEntitlements", Answer("OK", "Success")))

    async def ping_then_sync(client: SoapKmsClient) -> None:
        await client.ping()
        await client.execute(command(Operation.SYNC_ENTITLEMENTS, products=[Product(product_id="P1")]))

    _, kms = against([Reply(http(PING)), LOSE, Reply(answer)], ping_then_sync)
    assert len(kms.requests) == 3 and kms.connections == 2  # the lost call sent again on a new connection


def test_a_stale_kept_alive_connection_never_resends_an_effect() -> None:
    answer = http(mutation_response("sendMail", Answer("OK", "Success")))

    async def ping_then_mail(client: SoapKmsClient) -> None:
        await client.ping()
        await client.execute(command(Operation.SEND_MAIL,
                                     message=Message(kind=MessageKind.MAIL, text_mode=TextMode.ANSI, text="hi")))

    error, kms = failing([Reply(http(PING)), LOSE, Reply(answer)], ping_then_mail)
    assert error.kind == "network" and "not resent" in str(error) and error.maybe_applied
    assert len(kms.requests) == 2  # the mail reached the server once; whether it applied it is unknown


def test_a_stale_connection_is_resent_for_a_query() -> None:
    _, kms = against([Reply(http(PING)), LOSE, Reply(http(PING))], ping_twice)
    assert len(kms.requests) == 3


# --- what we send -----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "abc\ndef", "abc\x00", "abc\x7f"])
def test_a_token_with_cr_lf_nul_or_a_control_is_refused_naming_its_setting(token: str) -> None:
    with pytest.raises(ValueError, match="KMSBRIDGE_KMS__TOKEN") as info:
        SoapKmsClient("http://127.0.0.1:9/kms", "ALUX", token)
    assert "abc" not in str(info.value)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9/kms\r\nX-Injected: 1", "http://127.0.0.1:9/k\x00",
                                      "http://127.0.0.1:9/k ms"])
def test_an_endpoint_with_cr_lf_nul_or_a_space_is_refused_naming_its_setting(endpoint: str) -> None:
    with pytest.raises(ValueError, match="KMSBRIDGE_KMS__ENDPOINT"):
        SoapKmsClient(endpoint, "ALUX", "token")


def test_an_operator_tag_xml_cannot_carry_is_refused() -> None:
    with pytest.raises(ValueError, match="operator_tag"):
        SoapKmsClient("http://127.0.0.1:9/kms", "AL\x0bUX", "token")


def test_the_endpoints_user_and_password_reach_neither_the_host_header_nor_repr_nor_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clients: list[str] = []

    async def call(client: SoapKmsClient) -> None:
        clients.append(repr(client))
        await client.ping()

    _, kms = against([Reply(http(PING))], call,
                     endpoint=lambda k: f"http://operator:s3cret-pw@127.0.0.1:{k.port}/kms")
    head = kms.requests[0].split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"\r\nHost: 127\.0\.0\.1:\d+\r\n", head)
    assert b"s3cret" not in kms.requests[0] and b"operator" not in head
    assert "s3cret" not in clients[0] and "s3cret" not in caplog.text
    assert "user:password" in caplog.text  # the warning says the part is ignored, without its value


def test_the_request_carries_the_bearer_token_and_the_wsdls_soap_action() -> None:
    _, kms = against([Reply(http(PING))], lambda c: c.ping())
    head = kms.requests[0].split(b"\r\n\r\n", 1)[0]
    assert b"\r\nAuthorization: Bearer token\r\n" in head and b'SOAPAction: "' in head
    assert head.startswith(b"POST /kms HTTP/1.1\r\n")


# --- proxies are refused ----------------------------------------------------------------------------


def test_a_proxy_variable_that_applies_to_the_kms_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with pytest.raises(ValueError, match=r"HTTPS_PROXY is set .* add kms\.example to NO_PROXY"):
        SoapKmsClient("https://kms.example/kms", "ALUX", "token")
    SoapKmsClient("http://kms.example/kms", "ALUX", "token")  # HTTPS_PROXY does not apply to http


@pytest.mark.parametrize(("env", "url", "refused_by"), [
    ({"http_proxy": "http://p:3128"}, "http://kms.example/kms", "http_proxy"),
    ({"ALL_PROXY": "socks5://p:1080"}, "https://kms.example/kms", "ALL_PROXY"),
    ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "kms.example"}, "https://kms.example/kms", None),
    ({"HTTPS_PROXY": "http://p:3128", "no_proxy": ".example"}, "https://kms.example/kms", None),
    ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "*"}, "https://kms.example/kms", None),
    ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "other.example"}, "https://kms.example/kms", "HTTPS_PROXY"),
    ({"HTTPS_PROXY": "http://p:3128"}, "https://127.0.0.1:8443/kms", None),  # loopback: never proxied
    ({"HTTP_PROXY": "http://p:3128"}, "http://localhost:8089/kms", None),
    ({"HTTP_PROXY": "http://p:3128"}, "http://[::1]:8089/kms", None),
])
def test_proxy_variables_are_refused_only_where_they_apply(env: dict[str, str], url: str,
                                                            refused_by: str | None) -> None:
    endpoint = parse_endpoint(url)
    if refused_by is None:
        refuse_proxy(endpoint, env)
    else:
        with pytest.raises(ValueError, match=refused_by):
            refuse_proxy(endpoint, env)


# --- settings ---------------------------------------------------------------------------------------


def test_the_kms_settings_map_to_the_clients_keyword_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from kmsbridge.errors import SettingsError
    from kmsbridge.settings import Settings

    for name, value in {"CLIENT_CERT_FILE": "/run/secrets/kms.pem", "CLIENT_KEY_FILE": "/run/secrets/kms.key",
                        "CLIENT_KEY_PASSWORD": "key-pass-42", "MAX_RESPONSE_BYTES": "65536",
                        "KEEPALIVE_SECONDS": "4"}.items():
        monkeypatch.setenv(f"KMSBRIDGE_KMS__{name}", value)
    kms = Settings().kms

    options = kms.client_options()
    password = options.pop("client_key_password")
    assert options == {"client_cert": "/run/secrets/kms.pem", "client_key": "/run/secrets/kms.key",
                       "max_response_bytes": 65536, "keepalive_expiry": 4.0}
    assert password.get_secret_value() == "key-pass-42" and "key-pass-42" not in repr(kms)

    with pytest.raises(SettingsError, match="KMSBRIDGE_KMS__CLIENT_KEY_FILE"):
        kms.model_copy(update={"client_cert_file": None}).client_options()
