"""The KMS simulator: a real HTTP server implementing ``irdeto.wsdl`` with state and fault injection.

Modules: :mod:`.state` (the state model, audit, dedup), :mod:`.faults` (injected faults),
:mod:`.soap` (envelopes), :mod:`.app` (the Starlette app), :mod:`.server` (uvicorn runners).
"""

from __future__ import annotations

from .app import create_app
from .faults import Faults
from .server import serve, start_in_thread
from .state import SimulatorState

__all__ = ["Faults", "SimulatorState", "create_app", "serve", "start_in_thread"]
