"""Errors raised by the record codec and the JSON reader (STYLE.md: wrap errors at the edge).

``PoisonMessage`` means *these bytes will never decode*: retrying cannot help, so a consumer sends the
message to ``<topic>.dlq`` with ``reason`` in a header and moves on. ``SchemaRegistryUnavailable`` is
the opposite: the bytes may be fine but the registry could not be asked, so the consumer retries.

Messages name the problem and the input (framing, fingerprint, schema id, field path) but never
the payload: at most the first two bytes, to show a wrong magic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

from schemas.limits import error_message

__all__ = [
    "BadMagic",
    "EmptyMessage",
    "IncompatibleSchema",
    "InvalidRecord",
    "JsonLinesError",
    "PoisonMessage",
    "PoisonReason",
    "RecordEncodeError",
    "SchemaRegistryRefused",
    "SchemaRegistryUnavailable",
    "TruncatedMessage",
    "UnknownFingerprint",
    "UnknownSchemaId",
    "WrongRecordType",
    "describe_validation_error",
    "format_loc",
]

PoisonReason = Literal[
    "empty",
    "truncated",
    "bad_magic",
    "unknown_fingerprint",
    "unknown_schema_id",
    "wrong_record_type",
    "incompatible_schema",
    "corrupt",
    "invalid_record",
    "oversized",
    "future_timestamp",
    "sealed_pin",
]


class PoisonMessage(Exception):
    """A message that can never be decoded into the expected record; terminal, not retried.

    ``reason`` is a short machine word for the DLQ header and the metrics label; ``str()`` is a
    sentence for people.
    """

    retryable = False

    def __init__(self, reason: PoisonReason, message: str) -> None:
        super().__init__(message)
        self.reason: PoisonReason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={str(self)!r})"


class EmptyMessage(PoisonMessage):
    def __init__(self) -> None:
        super().__init__("empty", "message value is empty (null or zero bytes)")


class TruncatedMessage(PoisonMessage):
    def __init__(self, message: str) -> None:
        super().__init__("truncated", message)


class BadMagic(PoisonMessage):
    def __init__(self, message: str) -> None:
        super().__init__("bad_magic", message)


class UnknownFingerprint(PoisonMessage):
    def __init__(self, message: str) -> None:
        super().__init__("unknown_fingerprint", message)


class UnknownSchemaId(PoisonMessage):
    def __init__(self, message: str) -> None:
        super().__init__("unknown_schema_id", message)


class WrongRecordType(PoisonMessage):
    def __init__(self, message: str) -> None:
        super().__init__("wrong_record_type", message)


class IncompatibleSchema(PoisonMessage):
    """The writer schema cannot be resolved to the current reader schema (Avro resolution rules)."""

    def __init__(self, message: str) -> None:
        super().__init__("incompatible_schema", message)


class InvalidRecord(PoisonMessage):
    """The Avro body decoded but the record breaks a rule of its pydantic model (or is corrupt)."""

    def __init__(self, message: str, *, reason: PoisonReason = "invalid_record") -> None:
        super().__init__(reason, message)


class SchemaRegistryUnavailable(Exception):
    """The Schema Registry could not be reached or answered with a server error; retryable."""

    retryable = True


class SchemaRegistryRefused(Exception):
    """The Schema Registry refused us (HTTP 401/403), or holds no schema a writer without
    auto-registration may use: no retry helps, so the process ends naming the setting to fix."""

    retryable = False


class RecordEncodeError(Exception):
    """A record could not be written with its own schema: a bug in the schema or the model, terminal."""

    retryable = False


class JsonLinesError(ValueError):
    """One or more JSON lines are invalid; ``problems`` lists every one as ``line N: path: message``."""

    retryable = False

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        count = len(problems)
        super().__init__(f"{count} invalid line{'s' if count != 1 else ''}:\n" + "\n".join(problems))


def describe_validation_error(exc: ValidationError) -> str:
    """``field.path: message`` for every error, joined by ``; `` (never the offending value)."""
    return "; ".join(f"{format_loc(err['loc'])}: {error_message(err)}" for err in exc.errors(include_input=False))


def format_loc(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path: ``devices[0].secure_client_id``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(record)"
