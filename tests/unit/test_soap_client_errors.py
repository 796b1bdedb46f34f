"""Every exception inside the SOAP client becomes one of ours (kms_adapter/errors.py).

A loopback HTTP server (``scripted_kms.ScriptedKms``) answers canned bytes, so these run without the
simulator: what lxml, zeep or pydantic raise for our input is ``KmsRejected("INVALID_COMMAND")``
(nothing is sent), and what they raise for the KMS's answer is ``KmsUnavailable("bad_response")``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from lxml import etree
from scripted_kms import Reply, ScriptedKms, http

from kms_adapter.errors import KmsError, KmsRejected, KmsUnavailable
from kms_adapter.soap_client import _ANSWERED, SoapKmsClient, _guarded
from kms_adapter.wsdl import NAMESPACE

T = TypeVar("T")

_ENVELOPE = ('<?xml version="1.0" encoding="utf-8"?>{doctype}'
             '<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"><soap-env:Body>'
             f'<ns0:queryClientsResponse xmlns:ns0="{NAMESPACE}"><ns0:resultCode>OK</ns0:resultCode>'
             "<ns0:resultText>{text}</ns0:resultText>{clients}</ns0:queryClientsResponse>"
             "</soap-env:Body></soap-env:Envelope>")


def clients_answer(product_id: str = "P100", *, doctype: str = "", text: str = "") -> bytes:
    client = (f"<ns0:client><ns0:card>C1</ns0:card><ns0:known>true</ns0:known><ns0:products><ns0:product>"
              f"<ns0:productId>{product_id}</ns0:productId></ns0:product></ns0:products>"
              "<ns0:pinSet>true</ns0:pinSet></ns0:client>")
    return _ENVELOPE.format(doctype=doctype, text=text, clients=client).encode()


def against(body: bytes, call: Callable[[SoapKmsClient], Awaitable[T]]) -> tuple[T, int]:
    """``call(client)`` against a KMS answering ``body``, and how many requests reached it."""
    async def main() -> tuple[T, int]:
        async with ScriptedKms([Reply(http(body))]) as kms:
            client = SoapKmsClient(kms.endpoint, "ALUX", "token", timeout=5.0)
            try:
                return await call(client), len(kms.requests)
            finally:
                await client.aclose()

    return asyncio.run(main())


def raised(body: bytes, call: Callable[[SoapKmsClient], Awaitable[object]]) -> tuple[KmsError, int]:
    async def catching(client: SoapKmsClient) -> KmsError:
        with pytest.raises(KmsError) as info:
            await call(client)
        return info.value

    return against(body, catching)


def test_the_canned_kms_answers_a_good_batch() -> None:
    states, requests = against(clients_answer(), lambda c: c.query_clients(["C1"]))
    assert states["C1"].known and [p.product_id for p in states["C1"].entitlements] == ["P100"]
    assert requests == 1


def test_a_card_xml_cannot_carry_rejects_the_batch_before_anything_is_sent() -> None:
    error, requests = raised(clients_answer(), lambda c: c.query_clients(["C1", "C\x0b2"]))

    assert isinstance(error, KmsRejected) and error.code == "INVALID_COMMAND"
    assert "secure client id" in str(error) and "\x0b" not in str(error)
    assert requests == 0


def test_a_single_query_of_a_card_xml_cannot_carry_is_rejected_before_it_is_sent() -> None:
    error, requests = raised(clients_answer(), lambda c: c.query_client("C\x0b1"))

    assert isinstance(error, KmsRejected) and error.code == "INVALID_COMMAND"
    assert requests == 0


def test_an_answer_declaring_entities_is_a_bad_response() -> None:
    body = clients_answer(doctype='<!DOCTYPE soap-env:Envelope [<!ENTITY boom "boom">]>', text="&boom;")

    error, requests = raised(body, lambda c: c.query_clients(["C1"]))

    assert isinstance(error, KmsUnavailable) and error.kind == "bad_response" and error.retryable
    assert requests == 1


def test_an_answer_no_record_can_hold_is_a_bad_response() -> None:
    body = clients_answer(product_id="P" * 65)  # longer than any product id (schemas.limits.Name)

    error, _ = raised(body, lambda c: c.query_clients(["C1"]))

    assert isinstance(error, KmsUnavailable) and error.kind == "bad_response"


def _lxml_refuses_a_control_character() -> None:
    etree.Element("card").text = "C\x0b1"  # ValueError: All strings must be XML compatible


def test_lxmls_value_error_is_our_invalid_command_before_the_kms_answered() -> None:
    async def writing() -> None:
        _lxml_refuses_a_control_character()

    with pytest.raises(KmsRejected) as info:
        asyncio.run(_guarded("queryClients", writing))
    assert info.value.code == "INVALID_COMMAND" and isinstance(info.value.__cause__, ValueError)


def test_the_same_value_error_after_the_kms_answered_is_a_bad_response() -> None:
    async def reading() -> None:
        _ANSWERED.set(True)
        _lxml_refuses_a_control_character()

    with pytest.raises(KmsUnavailable) as info:
        asyncio.run(_guarded("queryClients", reading))
    assert info.value.kind == "bad_response"
