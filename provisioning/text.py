"""Message texts for Mail and on-screen Message (docs/architecture.md §1 features 5-6): the text-mode rules.

* **ANSI**: the text must encode in Windows-1252 (``cp1252``); its length is in characters, which
  are also its bytes.
* **UNICODE**: any text; its length is counted in UTF-16 code units (a character outside the Basic
  Multilingual Plane, e.g. an emoji, counts twice), because that is how it travels and what a
  byte budget on the box limits.
* **RAW**: bytes written as a hexadecimal string of even length (upper or lower case, no spaces or
  ``0x``); its length is the number of decoded bytes.

Default limits (:class:`TextLimits`): ANSI 1024 characters, UNICODE 512 code units, RAW 1024 bytes:
the same 1 KiB on the wire in every mode, a conservative bound for a set-top box mailbox entry.
Deployments with other limits pass their own ``TextLimits``.

Descriptions never quote the text (STYLE.md: never print a payload); they name the position and code
point of an offending character and the limit that was exceeded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provisioning.errors import INVALID_RAW_TEXT, TEXT_EMPTY, TEXT_NOT_ENCODABLE, TEXT_TOO_LONG, Rejection
from schemas.records import TextMode

__all__ = ["ANSI_CODEC", "TextLimits", "text_length", "validate_text"]

#: The code page of ANSI texts.
ANSI_CODEC = "cp1252"

_HEX_PAIRS = re.compile(r"(?:[0-9A-Fa-f]{2})+")


@dataclass(frozen=True, slots=True)
class TextLimits:
    """Longest accepted text per mode (see the module docstring for the units)."""

    ansi_max_chars: int = 1024
    unicode_max_units: int = 512
    raw_max_bytes: int = 1024

    def limit(self, mode: TextMode) -> int:
        return {
            TextMode.ANSI: self.ansi_max_chars,
            TextMode.UNICODE: self.unicode_max_units,
            TextMode.RAW: self.raw_max_bytes,
        }[mode]


_UNITS = {TextMode.ANSI: "characters", TextMode.UNICODE: "UTF-16 code units", TextMode.RAW: "bytes"}


def text_length(mode: TextMode, text: str) -> int:
    """The length of a (valid) text in its mode's unit."""
    if mode is TextMode.RAW:
        return len(text) // 2
    if mode is TextMode.UNICODE:
        return len(text.encode("utf-16-le")) // 2
    return len(text)


def validate_text(mode: TextMode, text: str, limits: TextLimits | None = None) -> Rejection | None:
    """``None`` when ``text`` may be sent in ``mode``, else why not (empty, not encodable, too long)."""
    limits = limits or TextLimits()
    if not text.strip():
        return Rejection(TEXT_EMPTY, f"{mode.value} text is empty")
    rejection = _representable(mode, text)
    if rejection is not None:
        return rejection
    length, limit = text_length(mode, text), limits.limit(mode)
    if length > limit:
        unit = _UNITS[mode]
        return Rejection(
            TEXT_TOO_LONG, f"{mode.value} text is {length} {unit}, the limit is {limit} {unit}"
        )
    return None


def _representable(mode: TextMode, text: str) -> Rejection | None:
    if mode is TextMode.RAW:
        if _HEX_PAIRS.fullmatch(text) is None:
            bad = re.search(r"[^0-9A-Fa-f]", text)
            reason = f"non-hex character at position {bad.start()}" if bad else f"odd length {len(text)}"
            return Rejection(INVALID_RAW_TEXT, f"RAW text must be an even-length hexadecimal string ({reason})")
        return None
    if mode is TextMode.ANSI:
        try:
            text.encode(ANSI_CODEC)
        except UnicodeEncodeError as exc:
            return Rejection(
                TEXT_NOT_ENCODABLE,
                f"ANSI text has character U+{ord(text[exc.start]):04X} at position {exc.start}, "
                f"which Windows-1252 cannot encode",
            )
    if mode is TextMode.UNICODE:
        try:
            text.encode("utf-16-le")
        except UnicodeEncodeError as exc:  # a lone surrogate, which no encoding can carry
            return Rejection(
                TEXT_NOT_ENCODABLE,
                f"UNICODE text has unpaired surrogate U+{ord(text[exc.start]):04X} at position {exc.start}",
            )
    return None
