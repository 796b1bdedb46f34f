"""The parental-PIN rule, in one place: exactly four ASCII digits (docs/architecture.md §1, feature 7).

Used by the provider file (its ``default_pin``) and by SET_PIN requests. Descriptions never contain
the PIN itself.
"""

from __future__ import annotations

import re
from typing import Final

from provisioning.errors import INVALID_PIN, Rejection

__all__ = ["DEFAULT_PIN", "PIN_RULE", "is_valid_pin", "validate_pin"]

#: The PIN a provider gets when its file sets none (docs/architecture.md §1, feature 1).
DEFAULT_PIN: Final = "0001"
#: The rule in words, for error messages.
PIN_RULE: Final = "must be exactly 4 ASCII digits"

# [0-9], not \d: \d also matches other scripts' digits, which a set-top box cannot type.
_PIN = re.compile(r"[0-9]{4}")


def is_valid_pin(pin: str) -> bool:
    """True when ``pin`` is exactly four ASCII digits (``fullmatch``: no trailing newline slips in)."""
    return _PIN.fullmatch(pin) is not None


def validate_pin(pin: str) -> Rejection | None:
    """``None`` for a valid PIN, else an ``INVALID_PIN`` rejection that does not reveal the value."""
    if is_valid_pin(pin):
        return None
    return Rejection(INVALID_PIN, f"PIN {PIN_RULE}")
