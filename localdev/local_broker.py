"""A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) for dev and tests.

The broker's jars are resolved from Maven Central by ``tools/kafka/pom.xml`` into ``.cache/kafka/libs``
(see :func:`ensure_jars`); Java 17+ runs them. Nothing here mocks Kafka: tests that exercise commits,
transactions, rebalances or lag get the real thing (docs/architecture.md §6).

Lifecycle, as :func:`start_broker` does it:

1. pick free loopback ports (client listener, controller, a SASL_PLAINTEXT listener when SCRAM users are
   asked, and a SASL_SSL listener when a server certificate is given too);
2. write ``server.properties`` (the certificate and key inline, PEM) and a small ``log4j2.properties``
   under ``data_dir``;
3. format the storage with Kafka's ``StorageTool`` (``--standalone`` dynamic quorum, plus one
   ``--add-scram`` per SCRAM user, so credentials exist before the first client connects);
4. start ``kafka.Kafka`` detached in its own session, stdout/stderr to ``log_file``;
5. wait until the port answers *and* an AdminClient metadata call succeeds; on failure kill the process
   and raise :class:`BrokerStartError` with the tail of the log.

:func:`restart_broker` repeats steps 4-5 on an existing data dir (same ports, topics and offsets), for
drills that stop the broker mid-stream and start it again; :func:`resume_broker` does the same from the
data dir alone (``kmsbridge stack up --keep``).

This module is stdlib-only except for the readiness probe, which imports ``confluent_kafka`` lazily.
Command line (for scripts and the Makefile)::

    python -m localdev.local_broker start --data-dir var/kafka [--port 9092] [--json]
        [--scram-user NAME=PASSWORD ... [--tls-cert chain.pem --tls-key key.pem]]
    python -m localdev.local_broker stop --pid 12345
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "JVM_OPTS_ENV",
    "BrokerError",
    "BrokerHandle",
    "BrokerPorts",
    "BrokerStartError",
    "BrokerTls",
    "broker_properties",
    "ensure_jars",
    "free_port",
    "has_storage",
    "libs_dir",
    "main",
    "render_properties",
    "repo_root",
    "restart_broker",
    "resume_broker",
    "start_broker",
    "stop_broker",
]

#: Heap and JIT flags. The C1-only JIT cuts start-up by about a second on a 2-core machine (measured:
#: ~3.9 s to ready vs ~5.1 s with default flags); the serial collector keeps GC threads off the shared
#: cores. 512 MiB is plenty for tests and the demo. ``KMSBRIDGE_LOCAL_BROKER_JVM_OPTS`` appends flags
#: (later flags win), e.g. ``-XX:TieredStopAtLevel=4`` for throughput benchmarks.
_JVM_FLAGS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-Djava.awt.headless=true",
)

JVM_OPTS_ENV = "KMSBRIDGE_LOCAL_BROKER_JVM_OPTS"

_SCRAM_MECHANISM = "SCRAM-SHA-512"

# Brokers started by this process, kept referenced so a garbage-collected Popen never warns that its
# child "is still running"; stop_broker() forgets them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_LOOPBACK = "127.0.0.1"

# Warnings and errors only, plus the one INFO line that says the server started: a test session
# should not leave megabytes of broker logs behind, but a failed start must still explain itself.
_LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


class BrokerError(RuntimeError):
    """The local broker could not be prepared, started or stopped."""


class BrokerStartError(BrokerError):
    """The broker process did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class BrokerHandle:
    """A running local broker. ``pid`` is the JVM itself (not a wrapper), so stopping it stops all."""

    bootstrap: str
    pid: int
    data_dir: Path
    log_file: Path
    sasl_bootstrap: str | None = None
    sasl_ssl_bootstrap: str | None = None

    def stop(self, timeout: float = 30) -> None:
        stop_broker(self.pid, timeout=timeout)

    def restart(self, timeout: float = 60) -> BrokerHandle:
        """Start this (stopped) broker again on its data dir and ports; see :func:`restart_broker`."""
        return restart_broker(self, timeout=timeout)

    def to_json(self) -> str:
        data = asdict(self)
        data["data_dir"] = str(self.data_dir)
        data["log_file"] = str(self.log_file)
        return json.dumps(data)


@dataclass(frozen=True)
class BrokerPorts:
    """Loopback ports of one broker: the PLAINTEXT client listener, the controller, the SASL_PLAINTEXT
    listener and the SASL_SSL listener."""

    plaintext: int
    controller: int
    sasl: int | None = None
    sasl_ssl: int | None = None


@dataclass(frozen=True)
class BrokerTls:
    """The server certificate of the SASL_SSL listener, as PEM files: ``certificate_chain`` holds the
    broker's certificate first, then any intermediates; ``private_key`` its PKCS#8 key, unencrypted or
    encrypted with ``key_password``. Clients trust the CA that signed it (librdkafka ``ssl.ca.location``).
    The broker asks no client certificate: clients authenticate with SCRAM inside the TLS session."""

    certificate_chain: Path
    private_key: Path
    key_password: str | None = None

    def keystore_properties(self, listener: str) -> dict[str, str]:
        """The listener's PEM keystore, inline (Kafka's ``ssl.keystore.type=PEM``)."""
        prefix = f"listener.name.{listener}."
        props = {
            f"{prefix}ssl.keystore.type": "PEM",
            f"{prefix}ssl.keystore.certificate.chain": _read_pem(self.certificate_chain, "CERTIFICATE"),
            f"{prefix}ssl.keystore.key": _read_pem(self.private_key, "PRIVATE KEY"),
            f"{prefix}ssl.client.auth": "none",
        }
        if self.key_password is not None:
            props[f"{prefix}ssl.key.password"] = self.key_password
        return props


def _read_pem(path: Path, kind: str) -> str:
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"cannot read the broker's TLS {kind.lower()} file {path}: {exc}") from exc
    if f"-----BEGIN {kind}-----" not in text and f"-----BEGIN ENCRYPTED {kind}-----" not in text:
        raise BrokerError(f"{path} holds no PEM {kind} block (Kafka's PEM keystore needs PKCS#8 keys)")
    return text


# --------------------------------------------------------------------------------------------------
# Locating the repo and the jars


def repo_root() -> Path:
    """The repository root: the nearest parent of this file holding ``pyproject.toml``."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "tools" / "kafka" / "pom.xml").is_file():
            return parent
    raise BrokerError(f"cannot locate the kmsbridge repository above {here} (no pyproject.toml + tools/kafka)")


def libs_dir() -> Path:
    """Where the broker's jars are cached (ignored by git)."""
    return repo_root() / ".cache" / "kafka" / "libs"


def _has_jars(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("kafka_2.13-*.jar"))


def ensure_jars(quiet: bool = True) -> Path:
    """Resolve the broker's jars with Maven if the cache folder is missing or empty; idempotent.

    Returns the libs folder. Raises :class:`BrokerError` naming what to install when Maven is absent.
    """
    folder = libs_dir()
    if _has_jars(folder):
        return folder
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "the local Kafka broker needs Maven to fetch its jars (install Maven, e.g. `apt-get install "
            "maven`), or set KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS to use an existing cluster"
        )
    root = repo_root()
    cmd = [
        mvn,
        *(["-q"] if quiet else []),
        "-B",
        "-f",
        str(root / "tools" / "kafka" / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={folder}",
    ]
    result = subprocess.run(cmd, cwd=root, capture_output=quiet, text=True, check=False)
    if result.returncode != 0 or not _has_jars(folder):
        detail = (result.stderr or result.stdout or "").strip()[-2000:] if quiet else ""
        raise BrokerError(f"resolving Kafka jars failed (exit {result.returncode}): {' '.join(cmd)}\n{detail}")
    return folder


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "the local Kafka broker needs Java 17+ (e.g. `apt-get install openjdk-17-jre-headless`), "
            "or set KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS to use an existing cluster"
        )
    return java


# --------------------------------------------------------------------------------------------------
# Pure parts: ports, properties


def free_port(host: str = _LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the kernel picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int, host: str = _LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the JVM does: a port whose old connections linger in TIME_WAIT is still usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _new_cluster_id() -> str:
    # Kafka's Uuid.toString(): URL-safe base64 of the 16 bytes, no padding (22 characters). Like Kafka's
    # Uuid.randomUuid(), never one starting with "-": the storage tool would read it as an option.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def broker_properties(data_dir: Path, ports: BrokerPorts, tls: BrokerTls | None = None) -> dict[str, str]:
    """The ``server.properties`` of a single-node combined broker+controller under ``data_dir``.

    Internal topics get replication factor 1 (one node) and few partitions (fast first use of groups and
    transactions); topics are never auto-created, so code and tests must create what they use. With
    ``ports.sasl_ssl`` the SASL_SSL listener serves ``tls``'s certificate.
    """
    if (ports.sasl_ssl is None) != (tls is None):
        raise BrokerError("a SASL_SSL listener needs both its port and its certificate (BrokerTls)")
    listeners = [f"PLAINTEXT://{_LOOPBACK}:{ports.plaintext}", f"CONTROLLER://{_LOOPBACK}:{ports.controller}"]
    advertised = [f"PLAINTEXT://{_LOOPBACK}:{ports.plaintext}"]
    protocol_map = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    if ports.sasl is not None:
        listeners.append(f"SASL_PLAINTEXT://{_LOOPBACK}:{ports.sasl}")
        advertised.append(f"SASL_PLAINTEXT://{_LOOPBACK}:{ports.sasl}")
        protocol_map.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
    if ports.sasl_ssl is not None:
        listeners.append(f"SASL_SSL://{_LOOPBACK}:{ports.sasl_ssl}")
        advertised.append(f"SASL_SSL://{_LOOPBACK}:{ports.sasl_ssl}")
        protocol_map.append("SASL_SSL:SASL_SSL")
    props: dict[str, str] = {
        # KRaft, one node doing both jobs; `--standalone` format makes it a one-voter dynamic quorum.
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{_LOOPBACK}:{ports.controller}",
        "controller.listener.names": "CONTROLLER",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "listener.security.protocol.map": ",".join(protocol_map),
        # Broker-to-broker (and to the controller) stays PLAINTEXT even when clients use SASL.
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir / "kraft-logs"),
        # One node: every internal topic has replication factor 1.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        # Small footprint: two cores shared with the tests.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "background.threads": "2",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": "60000",
    }
    sasl_listeners = [name for name, port in (("sasl_plaintext", ports.sasl), ("sasl_ssl", ports.sasl_ssl))
                      if port is not None]
    if sasl_listeners:
        props["sasl.enabled.mechanisms"] = _SCRAM_MECHANISM
    for listener in sasl_listeners:
        props[f"listener.name.{listener}.sasl.enabled.mechanisms"] = _SCRAM_MECHANISM
        props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        )
    if tls is not None:
        props.update(tls.keystore_properties("sasl_ssl"))
    return props


def render_properties(props: Mapping[str, str]) -> str:
    """Java ``.properties`` text: backslashes and newlines in values escaped (``\\n``: a PEM block stays
    one logical line); a newline in a key is refused."""
    lines = []
    for key, value in props.items():
        if "\n" in key:
            raise ValueError(f"property {key!r} contains a newline")
        escaped = value.replace(chr(92), chr(92) * 2).replace("\r", "").replace("\n", chr(92) + "n")
        lines.append(f"{key}={escaped}")
    return "\n".join(lines) + "\n"


def _scram_argument(name: str, password: str) -> str:
    for ch in ',=[]"':
        if ch in name or ch in password:
            raise ValueError(f"SCRAM user {name!r}: name and password must not contain {ch!r}")
    return f"{_SCRAM_MECHANISM}=[name={name},password={password}]"


def _jvm_flags() -> list[str]:
    return [*_JVM_FLAGS, *shlex.split(os.environ.get(JVM_OPTS_ENV, ""))]


def _classpath(libs: Path) -> str:
    return str(libs / "*")


# --------------------------------------------------------------------------------------------------
# Process control


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-limit:].decode("utf-8", errors="replace") or "(empty log)"


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _metadata_ok(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient  # function-level: keeps this module stdlib-importable

    # log_level 0: a broker that is still starting makes librdkafka log timeouts; they are expected here.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": "2000", "log_level": "0"})
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:  # KafkaException while the broker is still starting: keep polling
        return False
    return bool(metadata.brokers)


def _format_storage(java: str, libs: Path, props_file: Path, scram_users: Mapping[str, str], log: Path) -> None:
    cmd = [
        java,
        *_jvm_flags(),
        "-cp",
        _classpath(libs),
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        _new_cluster_id(),
        "--config",
        str(props_file),
        "--standalone",
    ]
    for name, password in scram_users.items():
        cmd += ["--add-scram", _scram_argument(name, password)]
    with log.open("ab") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise BrokerStartError(f"formatting Kafka storage failed (exit {result.returncode}):\n{_tail(log)}")


def start_broker(
    data_dir: Path,
    port: int | None = None,
    scram_users: dict[str, str] | None = None,
    log_file: Path | None = None,
    timeout: float = 60,
    tls: BrokerTls | None = None,
) -> BrokerHandle:
    """Format a fresh single-node KRaft broker under ``data_dir``, start it detached, wait until ready.

    ``data_dir`` must not hold a previous broker's data (each start formats new storage). With
    ``scram_users`` a second listener, SASL_PLAINTEXT with SCRAM-SHA-512, is opened and its address is
    ``sasl_bootstrap``; with ``tls`` too, a third, SASL_SSL with SCRAM-SHA-512 serving that certificate,
    at ``sasl_ssl_bootstrap``. The caller owns the process: stop it with :func:`stop_broker`.
    """
    if tls is not None and not scram_users:
        raise BrokerError("the SASL_SSL listener authenticates SCRAM users: pass scram_users with tls")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if (data_dir / "kraft-logs" / "meta.properties").exists():
        raise BrokerError(f"{data_dir} already holds a formatted broker; use an empty data dir")
    log_file = Path(log_file).resolve() if log_file is not None else data_dir / "broker.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # 1. ports (a taken client port is reported here: the broker's own message would be in its log only)
    if port is not None and not _port_free(port):
        raise BrokerError(f"port {port} on {_LOOPBACK} is in use; pick another or omit it for a free one")
    libs = ensure_jars()
    java = _java()
    ports = BrokerPorts(
        plaintext=port if port is not None else free_port(),
        controller=free_port(),
        sasl=free_port() if scram_users else None,
        sasl_ssl=free_port() if tls is not None else None,
    )
    # 2. configuration files (private: with tls the file holds the broker's private key)
    props_file = data_dir / "server.properties"
    props_file.touch(mode=0o600)
    props_file.write_text(render_properties(broker_properties(data_dir, ports, tls)), encoding="utf-8")
    log4j_file = data_dir / "log4j2.properties"
    log4j_file.write_text(_LOG4J2_PROPERTIES, encoding="utf-8")
    log_file.write_bytes(b"")
    # 3. storage, with SCRAM credentials written into the bootstrap metadata
    _format_storage(java, libs, props_file, scram_users or {}, log_file)
    return _launch(java, libs, data_dir, props_file, log4j_file, log_file, ports, timeout)


def restart_broker(handle: BrokerHandle, timeout: float = 60) -> BrokerHandle:
    """Start a stopped broker again on its own data dir: the same ports, cluster id, topics, committed
    offsets and SCRAM users (for broker-outage drills). Returns the new handle (a new ``pid``).

    Raises :class:`BrokerError` while the old process still runs, or when ``handle.data_dir`` holds
    no formatted broker.
    """
    if _reap_or_probe(handle.pid):
        raise BrokerError(f"the broker (pid {handle.pid}) is still running; stop it first")
    return resume_broker(handle.data_dir, log_file=handle.log_file, timeout=timeout)


def has_storage(data_dir: Path) -> bool:
    """True when ``data_dir`` holds a broker formatted by :func:`start_broker`."""
    data_dir = Path(data_dir)
    return (data_dir / "kraft-logs" / "meta.properties").exists() and (data_dir / "server.properties").is_file()


def resume_broker(data_dir: Path, log_file: Path | None = None, timeout: float = 60) -> BrokerHandle:
    """Start a broker on the storage a stopped broker left in ``data_dir`` (its ports, cluster id, topics,
    committed offsets and SCRAM users), e.g. a local stack brought up again with its data. The caller
    knows no broker runs on it (:func:`restart_broker` checks a known pid first).

    Raises :class:`BrokerError` when ``data_dir`` holds no formatted broker.
    """
    data_dir = Path(data_dir).resolve()
    props_file = data_dir / "server.properties"
    log4j_file = data_dir / "log4j2.properties"
    if not has_storage(data_dir):
        raise BrokerError(f"{data_dir} holds no formatted broker to restart; use start_broker()")
    log_file = Path(log_file).resolve() if log_file is not None else data_dir / "broker.log"
    ports = _ports_of(props_file)
    # The old JVM has exited, but its listening sockets may take a moment to be released.
    deadline = time.monotonic() + 10
    for port in (ports.plaintext, ports.controller, ports.sasl, ports.sasl_ssl):
        while port is not None and not _port_free(port):
            if time.monotonic() > deadline:
                raise BrokerError(f"port {port} on {_LOOPBACK} is still in use; cannot restart the broker")
            time.sleep(0.1)
    return _launch(_java(), ensure_jars(), data_dir, props_file, log4j_file, log_file, ports, timeout)


def _ports_of(props_file: Path) -> BrokerPorts:
    """The ports a ``server.properties`` written by :func:`start_broker` listens on."""
    listeners = ""
    for line in props_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("listeners="):
            listeners = line.partition("=")[2]
    by_name = {}
    for listener in listeners.split(","):
        name, _, address = listener.partition("://")
        by_name[name] = int(address.rpartition(":")[2])
    try:
        return BrokerPorts(plaintext=by_name["PLAINTEXT"], controller=by_name["CONTROLLER"],
                           sasl=by_name.get("SASL_PLAINTEXT"), sasl_ssl=by_name.get("SASL_SSL"))
    except KeyError as exc:
        raise BrokerError(f"{props_file}: no {exc.args[0]} listener in 'listeners'") from None


def _launch(java: str, libs: Path, data_dir: Path, props_file: Path, log4j_file: Path, log_file: Path,
            ports: BrokerPorts, timeout: float) -> BrokerHandle:
    # 4. the broker, in its own session so a Ctrl-C in the terminal that started it does not reach it
    cmd = [
        java,
        *_jvm_flags(),
        f"-Dlog4j2.configurationFile={log4j_file}",
        "-cp",
        _classpath(libs),
        "kafka.Kafka",
        str(props_file),
    ]
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    _CHILDREN[proc.pid] = proc
    handle = BrokerHandle(
        bootstrap=f"{_LOOPBACK}:{ports.plaintext}",
        pid=proc.pid,
        data_dir=data_dir,
        log_file=log_file,
        sasl_bootstrap=f"{_LOOPBACK}:{ports.sasl}" if ports.sasl is not None else None,
        sasl_ssl_bootstrap=f"{_LOOPBACK}:{ports.sasl_ssl}" if ports.sasl_ssl is not None else None,
    )
    # 5. readiness: the port answers and the broker serves metadata (it has joined its own quorum)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise BrokerStartError(f"Kafka exited with code {proc.returncode} during start:\n{_tail(log_file)}")
            if (
                all(_port_answers(_LOOPBACK, p) for p in (ports.plaintext, ports.sasl, ports.sasl_ssl) if p is not None)
                and _metadata_ok(handle.bootstrap)
            ):
                return handle
            if time.monotonic() > deadline:
                raise BrokerStartError(f"Kafka not ready after {timeout:.0f}s:\n{_tail(log_file)}")
            time.sleep(0.2)
    except BaseException:
        stop_broker(proc.pid, timeout=10)
        raise


def _reap_or_probe(pid: int) -> bool:
    """True while ``pid`` is alive. Reaps it when it is our child (so no zombie is left behind)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (e.g. started by the CLI): probe it instead
    else:
        # Our child: only waitpid knows. (A JVM whose main thread has exited shows state Z while its
        # other threads are still shutting down, so /proc says "zombie" too early.)
        return reaped != pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _all_threads_dead(pid)


def _all_threads_dead(pid: int) -> bool:
    """True when every thread of ``pid`` is a zombie: exited, waiting for its parent to reap it."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except OSError:
        return False  # no /proc (not Linux) or a race: assume alive, the signal probe decides next time
    return all(state in ("Z", "X") for state in states)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _reap_or_probe(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_broker(pid: int, timeout: float = 30) -> None:
    """Stop the broker JVM ``pid``: SIGTERM (controlled shutdown), then SIGKILL after ``timeout`` s.

    Works for a broker started by this process (it is reaped) or by another one (e.g. the CLI).
    """
    proc = _CHILDREN.pop(pid, None)
    try:
        _terminate(pid, timeout)
    finally:
        if proc is not None:
            proc.poll()  # settles the Popen's returncode (the child was reaped above)


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _reap_or_probe(pid)
        return
    if _wait_gone(pid, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 10):
        raise BrokerError(f"Kafka broker pid {pid} survived SIGKILL")


# --------------------------------------------------------------------------------------------------
# Command line


def _parse_user(value: str) -> tuple[str, str]:
    name, sep, password = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=PASSWORD")
    return name, password


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.local_broker", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="format and start a broker; prints its address and pid")
    start.add_argument("--data-dir", type=Path, required=True)
    start.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    start.add_argument("--log-file", type=Path, default=None)
    start.add_argument(
        "--scram-user",
        type=_parse_user,
        action="append",
        default=[],
        metavar="NAME=PASSWORD",
        help="add a SCRAM-SHA-512 user and a SASL_PLAINTEXT listener (repeatable)",
    )
    start.add_argument("--tls-cert", type=Path, default=None, metavar="CHAIN.pem",
                       help="with --scram-user: open a SASL_SSL listener serving this PEM certificate chain")
    start.add_argument("--tls-key", type=Path, default=None, metavar="KEY.pem",
                       help="the PKCS#8 PEM private key of --tls-cert (unencrypted)")
    start.add_argument("--timeout", type=float, default=60)
    start.add_argument("--json", action="store_true", help="print the handle as JSON")
    stop = sub.add_parser("stop", help="stop a broker by pid")
    stop.add_argument("--pid", type=int, required=True)
    stop.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)
    if args.command == "start" and (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")

    try:
        if args.command == "start":
            began = time.monotonic()
            handle = start_broker(
                args.data_dir,
                port=args.port,
                scram_users=dict(args.scram_user) or None,
                log_file=args.log_file,
                timeout=args.timeout,
                tls=BrokerTls(args.tls_cert, args.tls_key) if args.tls_cert is not None else None,
            )
            if args.json:
                print(handle.to_json())
            else:
                sasl = f" sasl={handle.sasl_bootstrap}" if handle.sasl_bootstrap else ""
                sasl += f" sasl_ssl={handle.sasl_ssl_bootstrap}" if handle.sasl_ssl_bootstrap else ""
                print(
                    f"kafka ready bootstrap={handle.bootstrap}{sasl} pid={handle.pid} "
                    f"log={handle.log_file} in {time.monotonic() - began:.1f}s"
                )
        else:
            stop_broker(args.pid, timeout=args.timeout)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
