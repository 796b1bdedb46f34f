"""The KMS port, its SOAP adapter, error mapping, an in-memory fake and the KMS simulator (docs/architecture.md §4).

- :mod:`.port`: ``KmsPort`` (Protocol), ``KmsOutcome``, ``ClientState``, ``QUERY_SECTIONS``
- :mod:`.errors`: ``KmsError`` and its retryable/terminal subclasses
- :mod:`.soap_client`: ``SoapKmsClient``, SOAP over :mod:`.http11` (keep-alive HTTP/1.1, answers parsed by
  httptools) with the template envelopes of :mod:`.envelopes`
- :mod:`.fake`: ``InMemoryKms`` for unit tests
- :mod:`.simulator`: the HTTP KMS simulator (``kmsbridge simulator``)

``SoapKmsClient`` is imported lazily so that importing the port does not load zeep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import KmsAuthError, KmsError, KmsRejected, KmsUnavailable
from .fake import InMemoryKms
from .port import QUERY_SECTIONS, ClientState, KmsOutcome, KmsPort

if TYPE_CHECKING:
    from .soap_client import SoapKmsClient

__all__ = [
    "QUERY_SECTIONS",
    "ClientState",
    "InMemoryKms",
    "KmsAuthError",
    "KmsError",
    "KmsOutcome",
    "KmsPort",
    "KmsRejected",
    "KmsUnavailable",
    "SoapKmsClient",
]


def __getattr__(name: str) -> Any:
    if name == "SoapKmsClient":
        from .soap_client import SoapKmsClient

        return SoapKmsClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
