"""The local stack (``kmsbridge stack up|status|down``): broker, topics, simulator and every process.

Everything lives in ``$KMSBRIDGE_STACK_DIR`` (default ``./var/stack``): ``state.json`` records pids,
ports and addresses so every other CLI verb can default to them; logs go to ``logs/``; the data of a
run is Kafka's storage (``kafka/``), the database (``kmsbridge.db``) and, once the stack is down, the
simulator's state (``simulator-state.json``, written by ``down``).

The three belong together: the database holds the desired state projected from Kafka and the ledger of
what the KMS was sent, the simulator holds what the KMS applied. ``up`` on a stack that is down starts
all three empty, so every start is consistent and trying the product again needs no new folder.
``up(keep=True)`` (``stack up --keep``) keeps all three instead: the broker starts on its storage (same
ports, topics, committed offsets), the database stays and the simulator's clients, mail and messages are
loaded back (not its audit or dedup keys, which a restarted KMS would not keep either). With
``KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS`` set, the stack never touches that cluster's data.

``up`` is idempotent: on a stack that is (partly) running it starts only what is not running (so it
also restarts a process that died) and discards nothing. The API key, KMS token and PIN key files are
kept across runs.

Kafka is one node (``local_broker``) or, with ``up(brokers=3)`` (``stack up --brokers 3``), a three-node
KRaft cluster of the same jars (``localdev.cluster``) in ``kafka/``: each node broker and controller,
every topic created with replication factor 3 and ``min.insync.replicas=2``, which every process the
stack starts gets in its environment (``KMSBRIDGE_TOPICS__*``, :meth:`StackState.topic_settings`) with
the three nodes as its bootstrap list. The broker count belongs to the data: a running stack, or a kept
one brought up with ``keep``, has the count it was started with, and asking for another is refused
(:class:`StackConflict`) rather than discarding or reusing Kafka's storage.

Each process runs once, under its own name, or with ``up(replicas=N)`` (``stack up --replicas N``, N > 1)
as N translators, N executors and N projectors and two reconcilers (which share the reconcile lease);
the api and the request log run once. A replica is named ``<process>-<i>`` (:func:`plan`), has its own
metrics port and gets that name as ``POD_NAME``, from which the product derives its Kafka
``group.instance.id`` and transactional id (``Settings.instance_id``): replicas of one process never
fence each other. ``KMSBRIDGE_GROUP_INSTANCE_ID``, which would win over ``POD_NAME`` and give every
replica the same id, is left out of a replica's environment. A running stack has the replica count it
was started with; asking for another is refused (:class:`StackConflict`).

The database is ``KMSBRIDGE_DATABASE_URL`` when it is set (PostgreSQL, as in production), else the
SQLite file ``kmsbridge.db`` of the stack folder. The stack empties only its own SQLite file; a database
it is given is never emptied (a fresh start wants an empty one). Replicas on the SQLite file share it
and contend for its write lock; ``up`` says so once and starts them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from kmsbridge.settings import mask_url
from kmsbridge.stack_state import StackState, load_state, save_state, stack_dir
from localdev import cluster as local_cluster
from localdev import local_broker
from schemas.pin_seal import generate_key

__all__ = ["BROKER_COUNTS", "DATABASE", "KAFKA_DIR", "PROCESSES", "RECONCILER_REPLICAS", "REPLICATED",
           "SIMULATOR_STATE", "Replica", "StackConflict", "StackState", "available_processes", "broker_count",
           "database_note", "discard_data", "down", "kept_broker_count", "load_state", "plan", "replica_env",
           "stack_dir", "status", "up"]

PROCESSES = ("translator", "executor", "projector", "reconciler", "api", "request-log")
#: The data of a run, under the stack folder (discarded together, or kept together with ``keep``).
KAFKA_DIR = "kafka"
DATABASE = "kmsbridge.db"
SIMULATOR_STATE = "simulator-state.json"
#: The sizes of the stack's own Kafka: one node, or a three-node cluster.
BROKER_COUNTS = (1, 3)
#: The processes ``--replicas N`` runs N times; the reconciler runs :data:`RECONCILER_REPLICAS` times
#: (its runs take a lease, so a second one is a standby that takes over), every other process once.
REPLICATED = ("translator", "executor", "projector")
RECONCILER_REPLICAS = 2
#: The settings that name a process's Kafka static membership; a replica gets its own ``POD_NAME``.
POD_NAME = "POD_NAME"
GROUP_INSTANCE_ID = "KMSBRIDGE_GROUP_INSTANCE_ID"


class StackConflict(ValueError):
    """What ``up`` is asked for contradicts the stack as it runs or was kept (e.g. its broker count)."""


@dataclass(frozen=True)
class Replica:
    """One process the stack starts: ``name`` (its key in ``state.json``, its log file), the ``process``
    it runs (``kmsbridge run PROCESS``) and the ``POD_NAME`` it gets (``None``: the environment's)."""

    name: str
    process: str
    pod_name: str | None = None


def plan(processes: tuple[str, ...], replicas: int = 1) -> list[Replica]:
    """The processes to start for ``processes`` at ``replicas`` (module docstring): with 1, each process
    once under its plain name; with more, ``<process>-<i>`` for each replica, named so as its POD_NAME."""
    if replicas < 1:
        raise StackConflict(f"--replicas must be at least 1, not {replicas}")
    out: list[Replica] = []
    for process in processes:
        count = replicas if process in REPLICATED else RECONCILER_REPLICAS if process == "reconciler" else 1
        if replicas == 1 or count == 1:
            out.append(Replica(process, process))
        else:
            out.extend(Replica(f"{process}-{i}", process, f"{process}-{i}") for i in range(count))
    return out


def replica_env(env: dict[str, str], replica: Replica) -> dict[str, str]:
    """``env`` for ``replica``: its own ``POD_NAME`` (and no group instance id setting, which would win
    over it) when it is one of several replicas, ``env`` unchanged otherwise."""
    if replica.pod_name is None:
        return dict(env)
    # the settings are case-insensitive: drop every spelling of the setting
    out = {k: v for k, v in env.items() if k.upper() != GROUP_INSTANCE_ID}
    out[POD_NAME] = replica.pod_name
    return out


def available_processes() -> tuple[str, ...]:
    """The processes this build can run (``kmsbridge run NAME``)."""
    from kmsbridge.cli.run import resolve_runner

    return tuple(p for p in PROCESSES if resolve_runner(p) is not None)


@dataclass
class Proc:
    pid: int
    port: int | None = None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _secret_file(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> Path:
    """``path``, created with ``make()`` and mode 0600 unless it exists (a restarted stack keeps it)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(make())
    return path


def write_pin_keys(path: Path) -> Path:
    """A PIN key file (``KMSBRIDGE_PIN_KEYS__FILE``) with one fresh key, unless ``path`` exists."""
    return _secret_file(path, lambda: json.dumps({"current": "local-1", "keys": {"local-1": generate_key()}}))


def _spawn(args: list[str], env: dict[str, str], log_file: Path) -> int:
    log = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    return proc.pid


def _wait_http(url: str, timeout: float, pid: int) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def process_env(state: StackState, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(base if base is not None else os.environ)
    env.update({
        "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": state.bootstrap,
        "KMSBRIDGE_KMS__ENDPOINT": state.simulator_url + "/kms",
        "KMSBRIDGE_KMS__TOKEN_FILE": state.token_file,
        "KMSBRIDGE_API__API_KEYS_FILE": state.api_key_file,
        "KMSBRIDGE_PIN_KEYS__FILE": state.pin_keys_file,
        "KMSBRIDGE_PROVIDER_FILE": state.provider_file,
        "KMSBRIDGE_DATABASE_URL": state.database_url,
        **state.topic_settings(),
    })
    return env


def _running(state: StackState | None) -> bool:
    """Whether any part of the stack ``state`` records is still alive."""
    if state is None:
        return False
    return (_alive(state.broker_pid) or any(_alive(n.get("pid")) for n in state.brokers)
            or any(_alive(p.get("pid")) for p in state.processes.values()))


def broker_count(state: StackState) -> int | None:
    """How many broker nodes the stack ``state`` records: None when it uses configured bootstrap servers."""
    if state.brokers:
        return len(state.brokers)
    return 1 if state.broker_pid is not None else None


def kept_broker_count(folder: Path) -> int | None:
    """How many broker nodes the Kafka storage kept in ``folder`` holds (None: none kept)."""
    kafka = folder / KAFKA_DIR
    if local_cluster.has_cluster(kafka):
        return len(local_cluster.load_cluster(kafka).nodes)
    return 1 if local_broker.has_storage(kafka) else None


def _check_brokers(brokers: int, previous: StackState | None, running: bool, keep: bool, folder: Path) -> None:
    """Refuse a broker count the running or kept stack does not have (:class:`StackConflict`)."""
    if brokers not in BROKER_COUNTS:
        raise StackConflict(f"--brokers must be one of {', '.join(map(str, BROKER_COUNTS))}, not {brokers}")
    if os.environ.get("KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS"):
        if brokers != 1:
            raise StackConflict(f"--brokers {brokers} starts the stack's own cluster, but "
                                "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS is set: the stack uses that cluster")
        return
    have = broker_count(previous) if running and previous is not None else (
        kept_broker_count(folder) if not running and keep else None)
    if have is not None and have != brokers:
        which = "the running stack" if running else f"the stack kept in {folder}"
        fix = ("`kmsbridge stack down` first" if running
               else f"bring it up with --brokers {have}, or without --keep to start empty")
        raise StackConflict(f"--brokers {brokers}: {which} has {have} broker node{'s' if have != 1 else ''}; {fix}")


def _check_replicas(replicas: int, previous: StackState | None, running: bool) -> None:
    """Refuse a replica count the running stack does not have (:class:`StackConflict`)."""
    if running and previous is not None and previous.replicas != replicas:
        raise StackConflict(f"--replicas {replicas}: the running stack has {previous.replicas} "
                            f"replica{'s' if previous.replicas != 1 else ''} of each process; "
                            "`kmsbridge stack down` first")


def _database_url(previous: StackState | None, running: bool, folder: Path) -> str:
    """The stack's database: ``KMSBRIDGE_DATABASE_URL`` when set, else its SQLite file; a running stack
    keeps the one it runs on, and another one configured is refused (:class:`StackConflict`)."""
    configured = os.environ.get("KMSBRIDGE_DATABASE_URL", "")
    if running and previous is not None and previous.database_url:
        if configured and configured != previous.database_url:
            raise StackConflict(f"KMSBRIDGE_DATABASE_URL is {mask_url(configured)}, but the running stack "
                                f"uses {mask_url(previous.database_url)}; `kmsbridge stack down` first")
        return previous.database_url
    return configured or f"sqlite:///{folder / DATABASE}"


def database_note(database_url: str, replicas: list[Replica]) -> str | None:
    """The line ``up`` logs about its database: replicas sharing the SQLite file, or the configured one."""
    if not database_url.startswith("sqlite"):
        return f"  database {mask_url(database_url)} (KMSBRIDGE_DATABASE_URL; the stack does not empty it)"
    if any(r.pod_name for r in replicas):
        return (f"  {len(replicas)} processes share the SQLite file {database_url.removeprefix('sqlite:///')} "
                "and contend for its write lock; production runs on PostgreSQL (set KMSBRIDGE_DATABASE_URL)")
    return None


def discard_data(folder: Path) -> None:
    """Remove a stopped stack's data: Kafka's storage, the database and the simulator's saved state."""
    shutil.rmtree(folder / KAFKA_DIR, ignore_errors=True)
    for name in (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal", SIMULATOR_STATE):
        (folder / name).unlink(missing_ok=True)


def up(*, provider_file: Path, processes: tuple[str, ...] | None = None, keep: bool = False, brokers: int = 1,
       replicas: int = 1, log: Callable[[str], object] = print) -> StackState:
    """Start what is not running; on a stack that is down, from empty data unless ``keep`` (module docstring).
    ``brokers`` is 1 or 3; a count the running or kept stack does not have raises :class:`StackConflict`,
    as does a ``replicas`` count the running stack does not have, or another database than it runs on."""
    folder = stack_dir()
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    previous = load_state(folder)
    running = _running(previous)
    _check_brokers(brokers, previous, running, keep, folder)
    _check_replicas(replicas, previous, running)
    replicas_of = plan(processes or available_processes(), replicas)
    database_url = _database_url(previous, running, folder)
    note = database_note(database_url, replicas_of)
    # 0. a stack that is down starts from one consistent state: all of its data, or none of it
    if not running and not keep:
        discard_data(folder)
    state = previous if previous is not None and running else StackState()
    state.logs = str(logs)
    state.provider_file = str(provider_file.resolve())
    state.database_url = database_url
    state.replicas = replicas
    state.token_file = str(_secret_file(folder / "kms.token"))
    state.api_key_file = str(_secret_file(folder / "api.key"))
    state.pin_keys_file = str(write_pin_keys(folder / "pin-keys.json"))

    # 1. the broker or the cluster, unless bootstrap servers are configured
    configured = os.environ.get("KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS")
    if configured:
        state.bootstrap, state.broker_pid = configured, None
    elif brokers > 1:
        _up_cluster(state, folder / KAFKA_DIR, brokers, log)
    elif not _alive(state.broker_pid):
        t0 = time.monotonic()
        kafka = folder / KAFKA_DIR
        if local_broker.has_storage(kafka):  # kept (--keep), or the rest of the stack still runs on it
            log("starting Kafka broker on its storage ...")
            handle = local_broker.resume_broker(kafka, log_file=logs / "kafka.log")
        else:
            log("starting Kafka broker ...")
            shutil.rmtree(kafka, ignore_errors=True)  # what a start that failed before formatting left
            handle = local_broker.start_broker(kafka, log_file=logs / "kafka.log")
        state.bootstrap, state.broker_pid = handle.bootstrap, handle.pid
        log(f"  Kafka {handle.bootstrap} (pid {handle.pid}) in {time.monotonic() - t0:.1f}s")
    save_state(state, folder)

    # 2. topics (idempotent)
    env = process_env(state)
    subprocess.run([sys.executable, "-m", "kmsbridge.cli", "topics", "create"], env=env, check=True,
                   stdout=subprocess.DEVNULL)

    # 3. the KMS simulator
    sim = state.processes.get("simulator", {})
    if not _alive(sim.get("pid")):
        port = local_broker.free_port()
        pid = _spawn([sys.executable, "-m", "kmsbridge.cli", "simulator", "--host", "127.0.0.1", "--port",
                      str(port), "--token-file", state.token_file], env, logs / "simulator.log")
        state.simulator_url = f"http://127.0.0.1:{port}"
        state.processes["simulator"] = {"pid": pid, "port": port}
        if not _wait_http(state.simulator_url + "/healthz", 30, pid):
            raise RuntimeError(f"the KMS simulator did not start; see {logs / 'simulator.log'}")
        restored = _restore_simulator(state, folder / SIMULATOR_STATE)
        log(f"  KMS simulator {state.simulator_url} (pid {pid})"
            + (f", {restored} secure clients loaded back" if restored is not None else ""))
    save_state(state, folder)
    env = process_env(state)

    # 4. every process (each replica of it)
    if note:
        log(note)
    for replica in replicas_of:
        name = replica.name
        cur = state.processes.get(name, {})
        if _alive(cur.get("pid")):
            continue
        port = local_broker.free_port()
        penv = replica_env(env, replica)
        if replica.process == "api":
            penv["KMSBRIDGE_API__PORT"] = str(port)
            state.api_url = f"http://127.0.0.1:{port}"
        else:
            penv["KMSBRIDGE_METRICS_PORT"] = str(port)
        pid = _spawn([sys.executable, "-m", "kmsbridge.cli", "run", replica.process], penv, logs / f"{name}.log")
        state.processes[name] = {"pid": pid, "port": port}
        save_state(state, folder)
        probe = f"http://127.0.0.1:{port}/healthz"
        if not _wait_http(probe, 60, pid):
            raise RuntimeError(f"{name} did not become healthy; see {logs / (name + '.log')}")
        log(f"  {name} (pid {pid}, port {port})")
    save_state(state, folder)
    return state


def _up_cluster(state: StackState, kafka: Path, nodes: int, log: Callable[[str], object]) -> None:
    """Start the stack's cluster in ``kafka`` (on its storage when it has one: ``keep``, or nodes of a
    running stack died) unless every node runs; record its nodes and bootstrap list in ``state``."""
    if state.brokers and all(_alive(n.get("pid")) for n in state.brokers):
        return
    t0 = time.monotonic()
    if local_cluster.has_cluster(kafka):
        log(f"starting the {nodes}-node Kafka cluster on its storage ...")
        cluster = local_cluster.resume_cluster(kafka)
    else:
        log(f"starting a {nodes}-node Kafka cluster ...")
        shutil.rmtree(kafka, ignore_errors=True)  # what a start that failed before formatting left
        cluster = local_cluster.start_cluster(kafka, nodes=nodes)
    state.bootstrap, state.broker_pid = cluster.bootstrap, None
    state.brokers = [{"node_id": n.node_id, "pid": n.pid, "port": n.ports.plaintext} for n in cluster.nodes]
    log(f"  Kafka {cluster.bootstrap} (pids {', '.join(str(n.pid) for n in cluster.nodes)}; logs "
        f"{kafka}/node-*/broker.log) in {time.monotonic() - t0:.1f}s")


def status() -> list[dict[str, Any]]:
    state = load_state()
    if state is None:
        return []
    rows: list[dict[str, Any]] = []
    if state.broker_pid is not None:
        rows.append({"name": "kafka", "pid": state.broker_pid, "port": state.bootstrap.rsplit(":", 1)[-1],
                     "alive": _alive(state.broker_pid), "health": "ok" if _alive(state.broker_pid) else "down"})
    for node in state.brokers:
        alive = _alive(node.get("pid"))
        rows.append({"name": f"kafka-{node['node_id']}", "pid": node.get("pid"), "port": node.get("port"),
                     "alive": alive, "health": "ok" if alive else "down"})
    for name, p in state.processes.items():
        alive = _alive(p.get("pid"))
        health = "down"
        if alive and p.get("port"):
            try:
                r = httpx.get(f"http://127.0.0.1:{p['port']}/healthz", timeout=2.0)
                health = "ok" if r.status_code == 200 else f"unhealthy ({r.status_code})"
            except httpx.HTTPError:
                health = "unreachable"
        rows.append({"name": name, "pid": p.get("pid"), "port": p.get("port"), "alive": alive, "health": health})
    return rows


def _terminate(pid: int, timeout: float) -> None:
    if not _alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _admin(state: StackState) -> httpx.Client:
    token = Path(state.token_file).read_text().strip()
    return httpx.Client(base_url=state.simulator_url, timeout=30.0, headers={"Authorization": f"Bearer {token}"})


def _save_simulator(state: StackState, path: Path) -> None:
    """Write the simulator's state (without its audit) to ``path``, mode 0600 (it holds PINs)."""
    with _admin(state) as http:
        response = http.get("/admin/state")
        response.raise_for_status()
        snapshot = {k: v for k, v in response.json().items() if k != "audit"}
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(snapshot, out)
    tmp.replace(path)


def _restore_simulator(state: StackState, path: Path) -> int | None:
    """Load a state saved by ``down`` into the freshly started simulator, once (the file is removed);
    the number of secure clients, or ``None`` when there was nothing to load."""
    if not path.exists():
        return None
    snapshot = json.loads(path.read_text())
    with _admin(state) as http:
        http.post("/admin/state", json=snapshot).raise_for_status()
    path.unlink()
    return len(snapshot.get("secure_clients", {}))


def down(log: Callable[[str], object] = print) -> None:
    """Stop every process, the simulator (its state saved first, for ``up --keep``) and the broker."""
    folder = stack_dir()
    state = load_state(folder)
    if state is None:
        log("no stack is running")
        return
    # the simulator last: once nothing calls it any more, its state is the KMS's final state
    order = [name for name in reversed(list(state.processes)) if name != "simulator"]
    if "simulator" in state.processes:
        order.append("simulator")
    for name in order:
        pid = state.processes[name].get("pid")
        if name == "simulator":
            if _alive(pid):
                try:
                    _save_simulator(state, folder / SIMULATOR_STATE)
                except (OSError, httpx.HTTPError, ValueError) as exc:
                    log(f"  the simulator's state was not saved ({exc}); `stack up --keep` starts it empty")
            else:
                log("  the simulator was not running; `stack up --keep` starts it empty")
        if pid:
            _terminate(int(pid), 25)
            log(f"  stopped {name}")
    if state.broker_pid:
        local_broker.stop_broker(state.broker_pid)
        log("  stopped kafka")
    if state.brokers:
        _down_cluster(state, folder / KAFKA_DIR)
        log(f"  stopped kafka ({len(state.brokers)} nodes)")
    (folder / "state.json").unlink(missing_ok=True)


def _down_cluster(state: StackState, kafka: Path) -> None:
    """Stop every node of the stack's cluster (all at once, :meth:`LocalCluster.close`); the cluster's
    state file then records them stopped, for ``up --keep``. Without that file, the pids ``state`` has."""
    try:
        cluster = local_cluster.load_cluster(kafka)
    except local_broker.BrokerError:
        for node in state.brokers:
            if node.get("pid"):
                local_broker.stop_broker(int(node["pid"]))
        return
    cluster.close()
