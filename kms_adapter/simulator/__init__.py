"""The KMS simulator: a real HTTP server implementing ``irdeto.wsdl`` with state and fault injection.

Modules: :mod:`.state` (the state model, audit, dedup), :mod:`.faults` (injected faults),
:mod:`.soap` (envelopes), :mod:`.app` (the Starlette app), :mod:`.server` (uvicorn runners),
:mod:`.testing` (an admin client for tests and scripts), :mod:`.loadtest` (throughput measurement).

The HTTP parts are imported on first use, so the in-memory fake (which uses :mod:`.state`) does not
load Starlette and uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .faults import Faults
from .state import SimulatorState

if TYPE_CHECKING:
    from .app import create_app
    from .server import serve, start_in_thread

__all__ = ["Faults", "SimulatorState", "create_app", "serve", "start_in_thread"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("serve", "start_in_thread"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
