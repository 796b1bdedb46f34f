"""The local stack's ``state.json``: what ``kmsbridge stack up`` (``localdev.stack``) started and where,
so that every other CLI verb defaults to those addresses while the stack is up. The runtime reads it; the
local tooling writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from producers.topics import min_insync_replicas_for

__all__ = ["StackState", "load_state", "save_state", "stack_dir"]


def stack_dir() -> Path:
    return Path(os.environ.get("KMSBRIDGE_STACK_DIR", "var/stack")).resolve()


@dataclass
class StackState:
    bootstrap: str = ""
    broker_pid: int | None = None  # the single broker; None for a cluster or when bootstrap servers were given
    #: the nodes of the stack's own cluster (``stack up --brokers 3``), each ``node_id``, ``pid``, ``port``;
    #: empty for the single broker
    brokers: list[dict[str, Any]] = field(default_factory=list)
    simulator_url: str = ""
    api_url: str = ""
    token_file: str = ""
    api_key_file: str = ""
    pin_keys_file: str = ""
    provider_file: str = ""
    database_url: str = ""
    logs: str = ""
    #: ``stack up --replicas N``: each of translator, executor and projector runs N times (1: once)
    replicas: int = 1
    #: by name: each process, or each replica of one (``translator-0``), ``pid`` and ``port``
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def topic_settings(self) -> dict[str, str]:
        """The topic settings of the stack's Kafka: replication 3 and ``min.insync.replicas=2`` on its
        cluster, nothing (the settings' defaults) on the single broker or a configured cluster."""
        if not self.brokers:
            return {}
        replication = min(3, len(self.brokers))
        return {"KMSBRIDGE_TOPICS__REPLICATION_FACTOR": str(replication),
                "KMSBRIDGE_TOPICS__MIN_INSYNC_REPLICAS": str(min_insync_replicas_for(replication))}

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
    known = {f.name for f in fields(StackState)}  # a field added later defaults; one dropped is ignored
    return StackState(**{k: v for k, v in data.items() if k in known})


def save_state(state: StackState, folder: Path) -> None:
    """Write ``state`` to ``folder/state.json``, mode 0600: its database URL may hold a password."""
    tmp = folder / "state.json.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(asdict(state), indent=2))
    tmp.replace(folder / "state.json")
