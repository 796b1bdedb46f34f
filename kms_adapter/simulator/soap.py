"""SOAP 1.1 on the simulator side: parse requests with lxml, build responses as strings.

Deliberately not zeep: the simulator must answer thousands of calls a second on one core, and a
hand-written parser of this small, fixed vocabulary costs a few tens of microseconds a call.
Responses are assembled from escaped strings for the same reason.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from lxml import etree

from kms_adapter.wsdl import NAMESPACE, OPERATION_OF_SOAP

from .state import Answer, ClientSummary

__all__ = [
    "SoapParseError",
    "SoapRequest",
    "fault_response",
    "mutation_response",
    "parse_request",
    "query_client_response",
    "query_clients_response",
]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_BODY = f"{{{SOAP_ENV}}}Body"
_NS_PREFIX = f"{{{NAMESPACE}}}"
_HEAD = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>'
)
_TAIL = "</soap:Body></soap:Envelope>"

_local = threading.local()


class SoapParseError(ValueError):
    """The request is not a SOAP envelope of this WSDL (answered with a SOAP Client fault)."""


@dataclass(slots=True)
class SoapRequest:
    """One parsed request; fields absent from the envelope are ``None`` / empty."""

    soap_operation: str  # e.g. "overwriteEntitlements"
    operation: str  # the matching Operation name, e.g. "SYNC_ENTITLEMENTS"
    operator_tag: str | None = None
    idempotency_key: str | None = None
    card: str | None = None
    chipset: str | None = None
    pin: str | None = None
    text: str | None = None
    text_mode: str | None = None
    products: list[dict[str, str | None]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)


def _parser() -> etree.XMLParser:
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        # No DTDs, no entities, no network: the body comes from the outside.
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
        _local.parser = parser
    return parser


def _local_name(tag: object) -> str:
    if not isinstance(tag, str):  # comments, processing instructions
        return ""
    return tag.rpartition("}")[2]


_SCALARS = {
    "operatorTag": "operator_tag",
    "idempotencyKey": "idempotency_key",
    "chipset": "chipset",
    "pin": "pin",
    "text": "text",
    "textMode": "text_mode",
}


def parse_request(body: bytes) -> SoapRequest:
    """Parse a request envelope; raises :class:`SoapParseError` (no payload in the message)."""
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise SoapParseError("request is not well-formed XML") from exc
    body_el = root.find(_BODY)
    if body_el is None:
        raise SoapParseError("request has no SOAP 1.1 Body")
    op_el = next((el for el in body_el if isinstance(el.tag, str)), None)
    if op_el is None or not op_el.tag.startswith(_NS_PREFIX):
        raise SoapParseError(f"Body must hold one operation element in namespace {NAMESPACE}")
    soap_op = op_el.tag[len(_NS_PREFIX):]
    operation = OPERATION_OF_SOAP.get(soap_op)
    if operation is None:
        raise SoapParseError(f"unknown operation {soap_op!r}")

    req = SoapRequest(soap_operation=soap_op, operation=operation)
    for child in op_el:
        name = _local_name(child.tag)
        if name == "card":
            card = child.text or ""
            req.cards.append(card)
            req.card = card
        elif name in _SCALARS:
            setattr(req, _SCALARS[name], child.text or "")
        elif name == "section":
            req.sections.append(child.text or "")
        elif name == "products":
            req.products = [_product(p) for p in child if _local_name(p.tag) == "product"]
    return req


def _product(el: etree._Element) -> dict[str, str | None]:
    out: dict[str, str | None] = {"product_id": None, "valid_from": None, "valid_until": None}
    for child in el:
        name = _local_name(child.tag)
        if name == "productId":
            out["product_id"] = child.text or ""
        elif name == "validFrom":
            out["valid_from"] = child.text
        elif name == "validUntil":
            out["valid_until"] = child.text
    return out


# --- responses --------------------------------------------------------------------------------------


def _result(answer: Answer) -> str:
    return (f"<k:resultCode>{escape(answer.code)}</k:resultCode>"
            f"<k:resultText>{escape(answer.text)}</k:resultText>")


def mutation_response(soap_operation: str, answer: Answer) -> bytes:
    dup = "true" if answer.duplicate else "false"
    return (
        f'{_HEAD}<k:{soap_operation}Response xmlns:k="{NAMESPACE}">{_result(answer)}'
        f"<k:duplicate>{dup}</k:duplicate></k:{soap_operation}Response>{_TAIL}"
    ).encode()


def query_client_response(answer: Answer, sections: Mapping[str, Mapping[str, str]]) -> bytes:
    parts = [f'{_HEAD}<k:queryClientResponse xmlns:k="{NAMESPACE}">', _result(answer)]
    for name, entries in sections.items():
        parts.append(f"<k:section><k:name>{escape(name)}</k:name>")
        for key, value in entries.items():
            parts.append(f"<k:entry><k:key>{escape(key)}</k:key><k:value>{escape(value)}</k:value></k:entry>")
        parts.append("</k:section>")
    parts.append(f"</k:queryClientResponse>{_TAIL}")
    return "".join(parts).encode()


def _products_xml(entitlements: Iterable[Mapping[str, str | None]]) -> str:
    parts = ["<k:products>"]
    for e in entitlements:
        parts.append(f"<k:product><k:productId>{escape(e['product_id'] or '')}</k:productId>")
        if e.get("valid_from"):
            parts.append(f"<k:validFrom>{escape(e['valid_from'] or '')}</k:validFrom>")
        if e.get("valid_until"):
            parts.append(f"<k:validUntil>{escape(e['valid_until'] or '')}</k:validUntil>")
        parts.append("</k:product>")
    parts.append("</k:products>")
    return "".join(parts)


def query_clients_response(answer: Answer, clients: Iterable[ClientSummary]) -> bytes:
    parts = [f'{_HEAD}<k:queryClientsResponse xmlns:k="{NAMESPACE}">', _result(answer)]
    for c in clients:
        parts.append(f"<k:client><k:card>{escape(c.card)}</k:card>")
        parts.append(f"<k:known>{'true' if c.known else 'false'}</k:known>")
        parts.append(_products_xml(c.entitlements))
        if c.paired_chipset is not None:
            parts.append(f"<k:pairedChipset>{escape(c.paired_chipset)}</k:pairedChipset>")
        parts.append(f"<k:pinSet>{'true' if c.pin_set else 'false'}</k:pinSet></k:client>")
    parts.append(f"</k:queryClientsResponse>{_TAIL}")
    return "".join(parts).encode()


def fault_response(fault_code: str, fault_string: str) -> bytes:
    """A SOAP 1.1 Fault; ``fault_code`` is ``Client`` (our request was bad) or ``Server``."""
    return (
        f"{_HEAD}<soap:Fault><faultcode>soap:{escape(fault_code)}</faultcode>"
        f"<faultstring>{escape(fault_string)}</faultstring></soap:Fault>{_TAIL}"
    ).encode()
