"""The request envelopes of the KMS calls, written from templates, and their answers read with lxml.

:class:`Envelopes` writes every mutating operation's request, and :func:`query_clients_envelope`
the batch query's, byte for byte as zeep writes them from ``irdeto.wsdl`` (element order and
SOAPAction are read through zeep's binding once, at start-up): ``tests/unit/test_soap_envelopes.py``
pins every operation to zeep's bytes. Answers are read with lxml (no DTD, no entities, no network):
:func:`mutation_result` for a ``MutationResult``, :func:`client_states` for ``queryClients``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from lxml import etree
from zeep.exceptions import ValidationError as ZeepValidationError
from zeep.xsd.types.builtins import DateTime as XsdDateTime

from schemas.records import Product

from .commands import CommandFields
from .errors import KmsRejected, KmsUnavailable
from .port import ClientState
from .wsdl import NAMESPACE

__all__ = [
    "SOAP_ENV",
    "Envelopes",
    "answer_element",
    "aware",
    "client_states",
    "mutation_result",
    "query_clients_envelope",
    "soap_fault",
]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ENVELOPE_HEAD = ("<?xml version='1.0' encoding='utf-8'?>\n<soap-env:Envelope xmlns:soap-env=\""
                  f"{SOAP_ENV}\"><soap-env:Body>")
_ENVELOPE_TAIL = "</soap-env:Body></soap-env:Envelope>"
_XSD_DATETIME = XsdDateTime()


def _text(value: str) -> str:
    """Text content escaped as lxml serialises it (so the bytes equal zeep's)."""
    return value.translate(_ESCAPES)


class Envelopes:
    """Request envelopes of the mutating operations, in the element order the WSDL gives (read through
    zeep's binding once), written as zeep writes them: ``soap-env``/``ns0`` prefixes, ``<x/>`` for an
    empty product list, text escaped like lxml. A unit test pins them to zeep's bytes."""

    def __init__(self, binding: Any, operator_tag: str) -> None:
        self.tag = f"<ns0:operatorTag>{_text(operator_tag)}</ns0:operatorTag>"
        self.actions: dict[str, str] = {}
        self.fields: dict[str, tuple[str, ...]] = {}
        for name, operation in binding._operations.items():
            self.actions[name] = operation.soapaction or ""
            self.fields[name] = tuple(element_name for element_name, _ in operation.input.body.type.elements)

    def build(self, soap_op: str, f: CommandFields) -> bytes:
        parts = [_ENVELOPE_HEAD, f'<ns0:{soap_op} xmlns:ns0="{NAMESPACE}">']
        for name in self.fields[soap_op]:
            if name == "operatorTag":
                parts.append(self.tag)
                continue
            if name == "products":
                parts.append(_products(f.products))
                continue
            value = _FIELD_OF[name](f)
            if value is None:
                raise ZeepValidationError(f"missing {name}")  # the WSDL requires it (zeep says the same)
            parts.append(f"<ns0:{name}>{_text(value)}</ns0:{name}>")
        parts.append(f"</ns0:{soap_op}>{_ENVELOPE_TAIL}")
        return "".join(parts).encode()


def query_clients_envelope(tag: str, cards: Sequence[str]) -> bytes:
    """The ``queryClients`` request as zeep writes it (one ``card`` element per card)."""
    body = "".join(f"<ns0:card>{_text(card)}</ns0:card>" for card in cards)
    return (f'{_ENVELOPE_HEAD}<ns0:queryClients xmlns:ns0="{NAMESPACE}">{tag}{body}</ns0:queryClients>'
            f"{_ENVELOPE_TAIL}").encode()


_FIELD_OF: dict[str, Callable[[CommandFields], str | None]] = {
    "idempotencyKey": lambda f: f.idempotency_key,
    "card": lambda f: f.card,
    "chipset": lambda f: f.chipset,
    "pin": lambda f: f.pin,
    "text": lambda f: f.text,
    "textMode": lambda f: f.text_mode,
}


def _products(products: Sequence[Product]) -> str:
    if not products:
        return "<ns0:products/>"
    parts = ["<ns0:products>"]
    for p in products:
        parts.append(f"<ns0:product><ns0:productId>{_text(p.product_id)}</ns0:productId>")
        if p.valid_from is not None:
            parts.append(f"<ns0:validFrom>{_XSD_DATETIME.xmlvalue(p.valid_from)}</ns0:validFrom>")
        if p.valid_until is not None:
            parts.append(f"<ns0:validUntil>{_XSD_DATETIME.xmlvalue(p.valid_until)}</ns0:validUntil>")
        parts.append("</ns0:product>")
    parts.append("</ns0:products>")
    return "".join(parts)


_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
_BODY = f"{{{SOAP_ENV}}}Body"
_FAULT = f"{{{SOAP_ENV}}}Fault"
_RESULT_CODE = f"{{{NAMESPACE}}}resultCode"
_RESULT_TEXT = f"{{{NAMESPACE}}}resultText"
_DUPLICATE = f"{{{NAMESPACE}}}duplicate"
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def answer_element(content: bytes, soap_op: str) -> etree._Element:
    """The ``<soap_op>Response`` element of an answer. A SOAP fault raises as a zeep ``Fault`` is
    mapped (``Client``: rejected, else transient); anything else unexpected is a ``bad_response``."""
    try:
        root = etree.fromstring(content, _XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something that is "
                             "not the WSDL's XML") from exc
    if root.getroottree().docinfo.internalDTD is not None:  # SOAP 1.1 forbids a DTD (zeep: EntitiesForbidden)
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered XML with a DTD")
    body = root.find(_BODY)
    answer = None if body is None else next((el for el in body if isinstance(el.tag, str)), None)
    if answer is not None and answer.tag == _FAULT:
        code = (answer.findtext("faultcode") or "").strip()
        if code.endswith("Client"):
            raise KmsRejected("SOAP_CLIENT_FAULT", (answer.findtext("faultstring") or "").strip(), operation=soap_op)
        raise KmsUnavailable("soap_fault", f"KMS call {soap_op} answered a SOAP fault ({code})")
    if answer is None or answer.tag != f"{{{NAMESPACE}}}{soap_op}Response" or answer.find(_RESULT_CODE) is None:
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something that is not the WSDL's XML")
    return answer


def _boolean(element: etree._Element, tag: str, soap_op: str) -> bool:
    value = _BOOLEANS.get((element.findtext(tag) or "").strip())
    if value is None:
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something that is not the WSDL's XML")
    return value


def mutation_result(content: bytes, soap_op: str) -> tuple[str, str, bool]:
    """``(resultCode, resultText, duplicate)`` of a ``MutationResult`` answer."""
    answer = answer_element(content, soap_op)
    return (answer.findtext(_RESULT_CODE) or "", answer.findtext(_RESULT_TEXT) or "",
            _boolean(answer, _DUPLICATE, soap_op))


_NS = f"{{{NAMESPACE}}}"


def client_states(content: bytes) -> list[ClientState]:
    """The ``ClientSummary`` entries of a ``queryClients`` answer, read with lxml (zeep's deserialisation
    costs most of a reset run's CPU, docs/benchmarks.md "Reconciler")."""
    answer = answer_element(content, "queryClients")
    code = answer.findtext(_RESULT_CODE) or ""
    if code != "OK":
        raise KmsRejected(code, answer.findtext(_RESULT_TEXT) or "", operation="QUERY_CLIENTS")
    states = []
    for client in answer.iterchildren(f"{_NS}client"):
        products = client.find(f"{_NS}products")
        states.append(ClientState(
            secure_client_id=client.findtext(f"{_NS}card") or "",
            known=_boolean(client, f"{_NS}known", "queryClients"),
            entitlements=tuple(
                Product(product_id=p.findtext(f"{_NS}productId") or "",
                        valid_from=_xsd_datetime(p.findtext(f"{_NS}validFrom")),
                        valid_until=_xsd_datetime(p.findtext(f"{_NS}validUntil")))
                for p in (products.iterchildren(f"{_NS}product") if products is not None else ())
            ),
            paired_chipset=client.findtext(f"{_NS}pairedChipset") or None,
            pin_set=_boolean(client, f"{_NS}pinSet", "queryClients"),
        ))
    return states


def _xsd_datetime(text: str | None) -> datetime | None:
    """An ``xsd:dateTime`` as zeep reads it, then in UTC (:func:`aware`)."""
    if text is None:
        return None
    try:
        value = _XSD_DATETIME.pythonvalue(text.strip())
    except (ValueError, TypeError) as exc:
        raise KmsUnavailable("bad_response", "KMS call queryClients answered a date that is not "
                             "xsd:dateTime") from exc
    return aware(value)


def soap_fault(content: bytes) -> tuple[str, str] | None:
    """``(faultcode, faultstring)`` of a SOAP 1.1 fault body, else ``None`` (only on the error path)."""
    if b"Fault" not in content:
        return None
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        root = etree.fromstring(content, parser)
    except etree.XMLSyntaxError:
        return None
    fault = root.find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    if fault is None:
        return None
    return (fault.findtext("faultcode") or "").strip(), (fault.findtext("faultstring") or "").strip()


def aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


