"""A rate limit per API key: ``KMSBRIDGE_API__RATE_LIMIT`` requests (default ``300/minute``) per caller.

The limiter is the ``limits`` library's moving window over in-memory storage: each replica counts its
own callers (N replicas behind a load balancer allow up to N times the limit in total). The caller is
the key id :func:`producers.api.auth.require_api_key` found, so a request is counted once it is
authenticated; one without a valid key is a 401 and counts for nobody. Over the limit: **429** with
``Retry-After`` (whole seconds until the window frees a request), and nothing is queued.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from producers.api.auth import require_api_key

__all__ = ["KeyRateLimit", "limited_caller"]


class KeyRateLimit:
    """``hit(caller)``: ``None`` while ``caller`` is within the limit, else the seconds to wait."""

    def __init__(self, rate: str) -> None:
        self._item: RateLimitItem = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def __repr__(self) -> str:
        return f"KeyRateLimit({self._item})"

    def hit(self, caller: str) -> int | None:
        if self._limiter.hit(self._item, caller):
            return None
        reset_at = self._limiter.get_window_stats(self._item, caller).reset_time
        return max(1, math.ceil(reset_at - time.time()))


def limited_caller(request: Request, caller: Annotated[str, Depends(require_api_key)]) -> str:
    """FastAPI dependency: the caller's key id, or 429 with ``Retry-After`` when it is over its limit."""
    limit: KeyRateLimit = request.app.state.rate_limit
    wait = limit.hit(caller)
    if wait is not None:
        raise HTTPException(status_code=status.HTTP_429_TOO_MANY_REQUESTS, detail="rate limit of this API key exceeded",
                            headers={"Retry-After": str(wait)})
    return caller
