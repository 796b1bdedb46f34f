"""The template envelopes (kms_adapter/envelopes.py) are byte for byte what zeep writes from the WSDL.

zeep is the reference: for every operation the client writes from a template, zeep builds the
envelope from ``irdeto.wsdl`` through the same binding (``binding._create``, what zeep's own
``AsyncServiceProxy`` posts, serialised by ``etree_to_string``), and the bytes and the SOAPAction
must be equal. Fixed cases cover every mutating operation and the batch query; a property test
covers texts and product lists drawn by hypothesis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from zeep.wsdl.utils import etree_to_string

from kms_adapter.commands import CommandFields, command_fields
from kms_adapter.envelopes import query_clients_envelope
from kms_adapter.port import MUTATING_OPERATIONS
from kms_adapter.soap_client import SoapKmsClient
from kms_adapter.wsdl import SOAP_OPERATION_OF
from schemas.records import KmsCommand, Message, MessageKind, Operation, Product, Source, TextMode

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def client() -> Iterator[SoapKmsClient]:
    kms = SoapKmsClient("http://127.0.0.1:9/kms", "ALUX <&> ü", "token")  # nothing is sent
    yield kms
    asyncio.run(kms.aclose())


def zeep_arguments(f: CommandFields, operator_tag: str) -> dict[str, Any]:
    """The WSDL arguments of a mutating command, as a zeep user would pass them."""
    kwargs: dict[str, Any] = {"operatorTag": operator_tag, "idempotencyKey": f.idempotency_key}
    if f.card is not None:
        kwargs["card"] = f.card
    if f.operation == "SYNC_ENTITLEMENTS":
        kwargs["products"] = {"product": [
            {"productId": p.product_id, "validFrom": p.valid_from, "validUntil": p.valid_until} for p in f.products]}
    if f.chipset is not None:
        kwargs["chipset"] = f.chipset
    if f.pin is not None:
        kwargs["pin"] = f.pin
    if f.text is not None:
        kwargs.update(text=f.text, textMode=f.text_mode)
    return kwargs


def zeeps(client: SoapKmsClient, soap_op: str, kwargs: dict[str, Any]) -> tuple[bytes, str]:
    """The envelope bytes and the SOAPAction zeep sends for ``soap_op``."""
    envelope, headers = client._service._binding._create(soap_op, (), kwargs, client=client._zeep)
    return etree_to_string(envelope), headers["SOAPAction"].strip('"')


def assert_same_as_zeep(client: SoapKmsClient, command: KmsCommand) -> None:
    f = command_fields(command)
    soap_op = SOAP_OPERATION_OF[f.operation]
    ours = client._envelopes.build(soap_op, f)
    reference, action = zeeps(client, soap_op, zeep_arguments(f, client._operator_tag))
    assert ours == reference
    assert client._envelopes.actions[soap_op] == action


def command(operation: Operation, card: str = "4120051539", **fields: Any) -> KmsCommand:
    return KmsCommand(idempotency_key=f"key:{operation.value}:<&>", operation=operation, secure_client_id=card,
                      source=Source(process_name="test"), created_at=NOW, **fields)


def mail(kind: MessageKind, text: str, mode: TextMode = TextMode.ANSI) -> Message:
    return Message(kind=kind, text_mode=mode, text=text)


PLUS_TWO = timezone(timedelta(hours=2))
EVERY_OPERATION = [
    command(Operation.SYNC_ENTITLEMENTS, products=[
        Product(product_id="P100", valid_from=NOW),
        Product(product_id="P<200>&", valid_until=datetime(2027, 1, 1, 12, 30, 15, 250000, tzinfo=PLUS_TWO)),
        Product(product_id="P300")]),
    command(Operation.CLEAR_ENTITLEMENTS),
    command(Operation.PAIR, chipset="STB-1 <&>"),
    command(Operation.UNPAIR, chipset="STB-1"),
    command(Operation.SET_PIN, pin=SecretStr("4321")),
    command(Operation.SEND_MAIL, message=mail(MessageKind.MAIL, "Sports tonight <&> \"quoted\" 'x'\r\nline 2")),
    command(Operation.SEND_MESSAGE, message=mail(MessageKind.MESSAGE, "Καλησπέρα ✓", TextMode.UNICODE)),
    command(Operation.SEND_MAIL_GLOBAL, card="*", message=mail(MessageKind.MAIL, "to all", TextMode.RAW)),
    command(Operation.SEND_MESSAGE_GLOBAL, card="*", message=mail(MessageKind.MESSAGE, "osd\tall")),
    command(Operation.REAUTHORISE_SECTOR),
]


def test_the_fixed_cases_cover_every_mutating_operation() -> None:
    assert {c.operation.value for c in EVERY_OPERATION} == MUTATING_OPERATIONS


@pytest.mark.parametrize("cmd", EVERY_OPERATION, ids=lambda c: c.operation.value)
def test_every_mutating_operations_envelope_is_zeeps_bytes(client: SoapKmsClient, cmd: KmsCommand) -> None:
    assert_same_as_zeep(client, cmd)


def test_an_empty_product_list_is_zeeps_bytes(client: SoapKmsClient) -> None:
    assert_same_as_zeep(client, command(Operation.SYNC_ENTITLEMENTS, products=[]))


@pytest.mark.parametrize("cards", [[], ["C1"], ["C1", "C<2>&", "4120051539"]], ids=["ping", "one", "three"])
def test_the_batch_query_envelope_is_zeeps_bytes(client: SoapKmsClient, cards: list[str]) -> None:
    reference, action = zeeps(client, "queryClients", {"operatorTag": client._operator_tag, "card": cards})
    assert query_clients_envelope(client._envelopes.tag, cards) == reference
    assert client._envelopes.actions["queryClients"] == action


# XML-safe text (what the records admit: no C0 controls but tab/CR/LF, no surrogates, no U+FFFE/U+FFFF)
_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\ufffe\uffff",
                              min_codepoint=0x09).filter(lambda c: c in "\t\r\n" or ord(c) >= 0x20),
                min_size=1, max_size=40)
_WHEN = st.none() | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                 timezones=st.sampled_from([UTC, PLUS_TWO]))
_PRODUCT_ID = st.text(st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\ufffe\uffff"),
                      min_size=1, max_size=32)
_PRODUCT = st.builds(Product, product_id=_PRODUCT_ID,
                     valid_from=_WHEN, valid_until=_WHEN)


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, products=st.lists(_PRODUCT, max_size=4), kind=st.sampled_from(list(MessageKind)))
def test_drawn_texts_and_product_lists_give_zeeps_bytes(client: SoapKmsClient, text: str,
                                                        products: list[Product], kind: MessageKind) -> None:
    assert_same_as_zeep(client, command(Operation.SEND_MAIL if kind is MessageKind.MAIL else Operation.SEND_MESSAGE,
                                        message=mail(kind, text, TextMode.UNICODE)))
    assert_same_as_zeep(client, command(Operation.SYNC_ENTITLEMENTS, products=products))
