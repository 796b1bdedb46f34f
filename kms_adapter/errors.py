"""Errors the KMS adapter raises, each marked retryable or terminal (STYLE.md "wrap errors at the edge").

The executor decides what to do from the type and :attr:`KmsError.retryable` alone:

- :class:`KmsUnavailable`: the KMS could not be reached or answered "not now" (timeout, refused or
  reset connection, HTTP 5xx, HTTP 429, a SOAP *Server* fault). Retry with backoff; many in a row
  open the circuit breaker.
- :class:`KmsRejected`: the KMS (or the adapter, for a command it cannot express) answered with a
  business error code. Terminal: the command becomes a REJECTED result at once.
- :class:`KmsAuthError`: HTTP 401/403. This is a configuration problem (wrong or expired token), not a
  verdict on the command, so it is marked ``retryable=True``: the executor keeps the command, the
  breaker opens and lag grows (which alerts) while an operator fixes ``KMSBRIDGE_KMS__TOKEN``.
  Treating it as terminal would reject every command that arrived during the misconfiguration, and
  those could only be recovered by a reset run.

Messages name the operation, the secure client and the cause; they never carry a request or response
payload (PINs and message texts live there).
"""

from __future__ import annotations

__all__ = ["KmsAuthError", "KmsError", "KmsRejected", "KmsUnavailable"]


class KmsError(Exception):
    """Base of every error the KMS port raises."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class KmsUnavailable(KmsError):
    """Transient: the KMS did not answer usefully. ``kind`` says how, for metrics and logs.

    Kinds: ``timeout``, ``connect``, ``network`` (reset or protocol error after connecting),
    ``http_<status>`` (5xx, 429), ``soap_fault`` (a SOAP Server fault), ``bad_response``,
    ``response_too_large``. ``retry_after`` holds the server's ``Retry-After`` in seconds when it
    sent one. ``maybe_applied`` is true when the request was sent and no complete answer came back
    (a timeout, a reset or a broken answer after the request was written): the KMS may have applied
    it, which matters for an effect (``EFFECT_OPERATIONS``) on a KMS that does not deduplicate.
    """

    retryable = True

    def __init__(self, kind: str, message: str = "", *, retry_after: float | None = None,
                 maybe_applied: bool = False) -> None:
        super().__init__(message or f"KMS unavailable ({kind})")
        self.kind = kind
        self.retry_after = retry_after
        self.maybe_applied = maybe_applied


class KmsRejected(KmsError):
    """Terminal business error: the KMS answered a ``resultCode`` other than ``OK``.

    ``code`` is the provider's code (e.g. ``UNKNOWN_CLIENT``); ``description`` its text. The adapter
    raises it too for a command it cannot express (codes ``INVALID_COMMAND``,
    ``UNSUPPORTED_OPERATION``, ``INVALID_SECTION``), before anything is sent.
    """

    retryable = False

    def __init__(self, code: str, description: str = "", *, operation: str | None = None) -> None:
        where = f" on {operation}" if operation else ""
        super().__init__(f"KMS rejected{where}: {code}" + (f" ({description})" if description else ""))
        self.code = code
        self.description = description
        self.operation = operation


class KmsAuthError(KmsError):
    """HTTP 401/403: the KMS refused our credentials. Fix the setting ``KMSBRIDGE_KMS__TOKEN``.

    Retryable on purpose (see the module docstring): nothing is lost while the token is fixed.
    """

    retryable = True

    def __init__(self, status_code: int, message: str = "") -> None:
        super().__init__(
            message
            or f"KMS refused the credentials (HTTP {status_code}); check the setting KMSBRIDGE_KMS__TOKEN"
        )
        self.status_code = status_code
