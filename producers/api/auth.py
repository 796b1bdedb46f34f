"""Bearer API keys for the Web API: no key, no access (401).

Keys come from settings (``KMSBRIDGE_API__API_KEYS`` or the secret file ``KMSBRIDGE_API__API_KEYS_FILE``).
Only their SHA-256 digests are kept; a presented key is hashed and compared with every digest by
``hmac.compare_digest`` (constant time, and no early exit, so the position of a match does not show in
the timing). Comparing digests of equal length also hides the keys' lengths.

A caller is named by a *key id*, ``key-`` + the first 8 hex digits of its key's digest: enough to tell
keys apart in ``requested_by`` and logs, useless for recovering the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

__all__ = ["NO_KEYS_MESSAGE", "ApiKeyAuth", "bearer", "require_api_key"]

NO_KEYS_MESSAGE = ("the Web API needs at least one API key: set KMSBRIDGE_API__API_KEYS (a JSON list) "
                   "or KMSBRIDGE_API__API_KEYS_FILE (a file with one key a line)")

#: The OpenAPI security scheme; ``auto_error=False`` so that we answer 401 (not 403) ourselves.
bearer = HTTPBearer(auto_error=False, description="an API key from KMSBRIDGE_API__API_KEYS(_FILE)")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyAuth:
    """The accepted keys, as digests. Raises ``ValueError`` when there is none (refuse to start)."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._digests = tuple(_digest(k.get_secret_value()) for k in keys if k.get_secret_value().strip())
        if not self._digests:
            raise ValueError(NO_KEYS_MESSAGE)

    def __repr__(self) -> str:
        return f"ApiKeyAuth({len(self._digests)} keys)"

    def identify(self, presented: str | None) -> str | None:
        """The key id of ``presented`` when it is an accepted key, else ``None``."""
        if not presented:
            return None
        digest = _digest(presented)
        match: bytes | None = None
        for known in self._digests:  # every digest is compared, match or not
            if hmac.compare_digest(known, digest):
                match = known
        return None if match is None else "key-" + match.hex()[:8]


def require_api_key(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """FastAPI dependency: the caller's key id, or 401 with ``WWW-Authenticate: Bearer``."""
    auth: ApiKeyAuth = request.app.state.auth
    caller = auth.identify(credentials.credentials if credentials is not None else None)
    if caller is None:
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="missing or unknown API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return caller
