"""The local stack's ``state.json``: what ``kmsbridge stack up`` (``localdev.stack``) started and where,
so that every other CLI verb defaults to those addresses while the stack is up. The runtime reads it; the
local tooling writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StackState", "load_state", "save_state", "stack_dir"]


def stack_dir() -> Path:
    return Path(os.environ.get("KMSBRIDGE_STACK_DIR", "var/stack")).resolve()


@dataclass
class StackState:
    bootstrap: str = ""
    broker_pid: int | None = None  # None when bootstrap servers were given
    simulator_url: str = ""
    api_url: str = ""
    token_file: str = ""
    api_key_file: str = ""
    pin_keys_file: str = ""
    provider_file: str = ""
    database_url: str = ""
    logs: str = ""
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def metrics(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{p['port']}/metrics" for name, p in self.processes.items()
                if p.get("port") and name not in ("simulator", "api")}

    def summary(self) -> dict[str, Any]:
        return {"bootstrap": self.bootstrap, "simulator_url": self.simulator_url, "api_url": self.api_url,
                "metrics": self.metrics(), "logs": self.logs}


def load_state(folder: Path | None = None) -> StackState | None:
    path = (folder or stack_dir()) / "state.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return StackState(**data)


def save_state(state: StackState, folder: Path) -> None:
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(folder / "state.json")
