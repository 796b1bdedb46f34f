"""Records as JSON for people: what ``kmsbridge produce --file`` reads and ``tail --json`` prints.

Input is JSON Lines, one record a line, validated all at once: either every line is good and you
get every record, or ``JsonLinesError`` lists every bad line (``line N: field.path: message``) and
you get nothing, so a half-produced file never happens.

Output is one line of JSON a record: times ISO 8601 (UTC as ``Z``), enums as their names, and the
PIN shown as ``"****"``. This output is for eyes, not for re-reading: a masked PIN stays masked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from schemas.errors import JsonLinesError, format_loc
from schemas.limits import error_message

__all__ = ["MASK", "JsonLinesError", "parse_jsonl", "to_json", "to_jsonable"]

R = TypeVar("R", bound=BaseModel)

MASK = "****"


def parse_jsonl(lines: str | Iterable[str], model: type[R]) -> list[R]:
    """Every non-blank line as a ``model``; raises ``JsonLinesError`` naming each bad line and field.

    ``lines`` is the text of a file or its lines. A text is split at ``\n`` only: JSON Lines ends a
    line there, while ``str.splitlines`` also breaks at characters a JSON string may hold as they are
    (U+2028, U+0085, ...). Line numbers count every line read, blank ones included, as an editor
    shows them.
    """
    if isinstance(lines, str):
        lines = lines.split("\n")
    records: list[R] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(model.model_validate_json(line))
        except ValidationError as exc:
            for err in exc.errors(include_input=False):
                if err["type"] == "json_invalid":
                    problems.append(f"line {number}: not valid JSON: {err['msg']}")
                else:
                    problems.append(f"line {number}: {format_loc(err['loc'])}: {error_message(err)}")
    if problems:
        raise JsonLinesError(problems)
    return records


def to_json(record: BaseModel) -> str:
    """One line of JSON for people: ISO 8601 times, enum names, and every secret as ``"****"``."""
    return json.dumps(to_jsonable(record), ensure_ascii=False)


def to_jsonable(record: BaseModel) -> dict[str, Any]:
    """The dict ``to_json`` prints (for callers that embed records in a larger JSON document)."""
    return {name: _jsonable(getattr(record, name)) for name in type(record).model_fields}


def _jsonable(value: Any) -> Any:
    # Walk the model rather than model_dump(): the SecretStr objects are still there to be masked,
    # whatever the field is called and however deep it sits.
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, BaseModel):
        return to_jsonable(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


def _iso(moment: datetime) -> str:
    """ISO 8601 with the shortest exact fraction (none, ms or µs) and ``Z`` for UTC."""
    if moment.microsecond == 0:
        text = moment.isoformat(timespec="seconds")
    elif moment.microsecond % 1000 == 0:
        text = moment.isoformat(timespec="milliseconds")
    else:
        text = moment.isoformat(timespec="microseconds")
    if moment.utcoffset() == timedelta(0):
        text = text.removesuffix("+00:00") + "Z"
    return text
