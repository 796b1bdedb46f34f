"""Sealed PINs: the ``pin`` of a ``ServiceRequest`` or ``KmsCommand`` is AES-GCM ciphertext on Kafka.

The records keep the PIN as a ``SecretStr``; the codec seals it where bytes are written and opens
it where bytes are read, so nothing else ever handles ciphertext. On the wire the Avro field ``pin``
is null and ``pin_sealed`` holds a :class:`SealedPin`:

- ``key_id``: which key of the ring sealed it, so keys can rotate (seal with the current key, open
  with any key the ring still holds);
- ``nonce``: 12 bytes, *synthetic*: HMAC-SHA256 under a subkey of the sealing key over the associated
  data and the PIN, cut to 96 bits. Sealing the same PIN of the same record twice gives the same
  bytes (a replayed translator batch stays byte-identical), while two different (record, PIN) pairs
  share a nonce only by an HMAC collision, never by chance of a random draw;
- ``ciphertext``: the PIN's UTF-8 bytes followed by the 16-byte GCM tag.

The associated data is the record type and the record's own id (``request_id`` of a request, the
``idempotency_key`` of a command), so a sealed PIN copied into another record does not open there.
Opening fails closed with :class:`UnreadablePin` (a poison message: the record goes to its DLQ with
the original bytes, still sealed); its message names the key id and the record, never the PIN or
the ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import NamedTuple, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.errors import PoisonMessage

__all__ = [
    "KEY_BYTES",
    "KEY_ID_PATTERN",
    "MASKED_PINS",
    "PinCipher",
    "PinKeyError",
    "PinKeyRing",
    "SealedPin",
    "UnreadablePin",
    "generate_key",
]

#: AES-256: every key of the ring is 32 bytes, written as standard base64 in settings and key files.
KEY_BYTES = 32
#: What a key id may look like (it travels in every sealed record, so it stays short and plain).
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NONCE_BYTES = 12
_NONCE_LABEL = b"kmsbridge pin nonce v1"


class SealedPin(NamedTuple):
    """The ``pin_sealed`` Avro record (attribute names are its field names)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


class PinKeyError(ValueError):
    """A key ring that cannot be built (unknown current key, a key that is not 32 bytes of base64)."""


class UnreadablePin(PoisonMessage):
    """A sealed PIN that does not open: unknown key id, or ciphertext not made for this record."""

    def __init__(self, message: str) -> None:
        super().__init__("sealed_pin", message)


class PinCipher(Protocol):
    """What the codec needs: seal a PIN for a record, open it again."""

    def seal(self, pin: str, context: bytes) -> SealedPin: ...

    def open(self, sealed: SealedPin, context: bytes) -> str: ...


def generate_key() -> str:
    """A fresh random key, base64 as settings and key files hold it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class _Key:
    __slots__ = ("aead", "nonce_key")

    def __init__(self, key: bytes) -> None:
        self.aead = AESGCM(key)
        self.nonce_key = hmac.new(key, _NONCE_LABEL, hashlib.sha256).digest()


class PinKeyRing:
    """One current key that seals, and every key (current and older ones) that may still open."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        for key_id, key in keys.items():
            if not KEY_ID_PATTERN.match(key_id):
                raise PinKeyError(f"key id {key_id!r} is not 1 to 64 of A-Z a-z 0-9 . _ -")
            if len(key) != KEY_BYTES:
                raise PinKeyError(f"key {key_id!r} is {len(key)} bytes; AES-256 keys are {KEY_BYTES} bytes")
        if current not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise PinKeyError(f"the current key id {current!r} is not among the keys (known: {known})")
        self._keys = {key_id: _Key(key) for key_id, key in keys.items()}
        self.current = current

    @classmethod
    def from_base64(cls, keys: Mapping[str, str], current: str) -> PinKeyRing:
        """A ring from base64 text keys (settings, key files); errors name the key id, never the key."""
        raw: dict[str, bytes] = {}
        for key_id, text in keys.items():
            try:
                raw[key_id] = base64.b64decode(text.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise PinKeyError(f"key {key_id!r} is not base64") from None
        return cls(raw, current)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def __repr__(self) -> str:
        return f"PinKeyRing(current={self.current!r}, key_ids={self.key_ids!r})"

    def seal(self, pin: str, context: bytes) -> SealedPin:
        key = self._keys[self.current]
        clear = pin.encode()
        nonce = hmac.new(key.nonce_key, len(context).to_bytes(4, "big") + context + clear,
                         hashlib.sha256).digest()[:_NONCE_BYTES]
        return SealedPin(self.current, nonce, key.aead.encrypt(nonce, clear, context))

    def open(self, sealed: SealedPin, context: bytes) -> str:
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise UnreadablePin(
                f"the PIN is sealed with key id {sealed.key_id!r}, which the PIN key ring does not hold"
                f" (it holds {', '.join(self.key_ids)}); keep retired keys in the ring while records"
                " sealed with them may still be read"
            )
        if len(sealed.nonce) != _NONCE_BYTES:
            raise UnreadablePin(f"the sealed PIN's nonce is {len(sealed.nonce)} bytes, not {_NONCE_BYTES}")
        try:
            clear = key.aead.decrypt(sealed.nonce, sealed.ciphertext, context)
            return clear.decode()
        except (InvalidTag, UnicodeDecodeError):
            raise UnreadablePin(
                f"the sealed PIN does not open with key id {sealed.key_id!r}: it was altered, or sealed"
                " for another record"
            ) from None


class _MaskedPins:
    """For readers that show records to people (``kmsbridge tail``): a sealed PIN reads as a mask,
    without any key; such a codec cannot write a PIN."""

    MASK = "****"

    def seal(self, pin: str, context: bytes) -> SealedPin:
        raise PinKeyError("this codec only masks PINs; it cannot seal one")

    def open(self, sealed: SealedPin, context: bytes) -> str:
        return self.MASK

    def __repr__(self) -> str:
        return "MASKED_PINS"


#: A :class:`PinCipher` that reads every sealed PIN as ``"****"`` and never needs a key.
MASKED_PINS: PinCipher = _MaskedPins()
