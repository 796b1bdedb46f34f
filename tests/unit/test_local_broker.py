"""The pure parts of the local broker: configuration, ports, process stopping. No JVM is started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from localdev.local_broker import (
    BrokerError,
    BrokerHandle,
    BrokerPorts,
    BrokerTls,
    _new_cluster_id,
    _ports_of,
    _scram_argument,
    broker_properties,
    free_port,
    render_properties,
    repo_root,
    start_broker,
    stop_broker,
)


def _parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_single_node_properties_are_kraft_combined_with_replication_one(tmp_path: Path) -> None:
    props = broker_properties(tmp_path, BrokerPorts(plaintext=9092, controller=9093))

    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert props[key] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert Path(props["log.dirs"]).is_relative_to(tmp_path)
    assert "sasl.enabled.mechanisms" not in props


def test_scram_users_add_a_sasl_listener_while_brokers_talk_plaintext(tmp_path: Path) -> None:
    props = broker_properties(tmp_path, BrokerPorts(plaintext=1, controller=2, sasl=3))

    assert "SASL_PLAINTEXT://127.0.0.1:3" in props["listeners"].split(",")
    assert "SASL_PLAINTEXT://127.0.0.1:3" in props["advertised.listeners"].split(",")
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["listener.name.sasl_plaintext.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "ScramLoginModule" in props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]


def _pem_files(tmp_path: Path) -> BrokerTls:
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n")
    return BrokerTls(certificate_chain=chain, private_key=key)


def test_a_certificate_adds_a_sasl_ssl_listener_with_scram_and_an_inline_pem_keystore(tmp_path: Path) -> None:
    tls = _pem_files(tmp_path)
    props = broker_properties(tmp_path, BrokerPorts(plaintext=1, controller=2, sasl=3, sasl_ssl=4), tls)

    assert "SASL_SSL://127.0.0.1:4" in props["listeners"].split(",")
    assert "SASL_SSL://127.0.0.1:4" in props["advertised.listeners"].split(",")
    assert "SASL_SSL:SASL_SSL" in props["listener.security.protocol.map"].split(",")
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "ScramLoginModule" in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert props["listener.name.sasl_ssl.ssl.keystore.type"] == "PEM"
    assert props["listener.name.sasl_ssl.ssl.keystore.certificate.chain"] == tls.certificate_chain.read_text().strip()
    assert props["listener.name.sasl_ssl.ssl.keystore.key"] == tls.private_key.read_text().strip()
    assert "listener.name.sasl_ssl.ssl.key.password" not in props


def test_a_sasl_ssl_listener_needs_its_certificate_and_a_pem_file(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="certificate"):
        broker_properties(tmp_path, BrokerPorts(plaintext=1, controller=2, sasl_ssl=4))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(BrokerError, match="no PEM CERTIFICATE"):
        broker_properties(tmp_path, BrokerPorts(plaintext=1, controller=2, sasl_ssl=4),
                          BrokerTls(certificate_chain=not_pem, private_key=not_pem))


def test_a_restart_finds_the_sasl_ssl_port_in_the_written_properties(tmp_path: Path) -> None:
    ports = BrokerPorts(plaintext=1, controller=2, sasl=3, sasl_ssl=4)
    props_file = tmp_path / "server.properties"
    props_file.write_text(render_properties(broker_properties(tmp_path, ports, _pem_files(tmp_path))))

    assert _ports_of(props_file) == ports


def test_rendered_properties_round_trip_and_escape_backslashes_and_newlines(tmp_path: Path) -> None:
    props = broker_properties(tmp_path, BrokerPorts(plaintext=1, controller=2))
    assert _parse(render_properties(props)) == props
    assert render_properties({"log.dirs": r"C:\kafka"}) == "log.dirs=C:\\\\kafka\n"
    assert render_properties({"pem": "-----BEGIN X-----\r\nAB\n-----END X-----"}) == (
        "pem=-----BEGIN X-----\\nAB\\n-----END X-----\n")  # one logical line: Java reads backslash-n as a newline
    with pytest.raises(ValueError, match="newline"):
        render_properties({"a\nb": "c"})


def test_scram_argument_rejects_characters_that_would_break_the_storage_tool_syntax() -> None:
    assert _scram_argument("kmsbridge", "s3cret") == "SCRAM-SHA-512=[name=kmsbridge,password=s3cret]"
    with pytest.raises(ValueError):
        _scram_argument("kmsbridge", "a,b")


def test_cluster_id_is_kafka_base64_uuid() -> None:
    cluster_id = _new_cluster_id()
    assert len(cluster_id) == 22
    assert cluster_id != _new_cluster_id()


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_repo_root_holds_the_kafka_pom() -> None:
    assert (repo_root() / "tools" / "kafka" / "pom.xml").is_file()


def test_handle_serialises_to_json_for_scripts(tmp_path: Path) -> None:
    handle = BrokerHandle("127.0.0.1:1", 42, tmp_path, tmp_path / "b.log", None)
    assert f'"data_dir": "{tmp_path}"' in handle.to_json()


def _ignoring_sigterm() -> subprocess.Popen[str]:
    code = "import signal,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)"
    proc = subprocess.Popen([sys.executable, "-c", code + "; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _assert_reaped(proc: subprocess.Popen[str]) -> None:
    with pytest.raises(ChildProcessError):  # neither running nor a zombie: already waited for
        os.waitpid(proc.pid, os.WNOHANG)
    proc.wait(timeout=1)
    if proc.stdout is not None:
        proc.stdout.close()


def test_stop_terminates_and_reaps_a_child_without_leaving_a_zombie() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], text=True)
    stop_broker(proc.pid, timeout=10)
    _assert_reaped(proc)


def test_stop_kills_a_process_that_ignores_sigterm_after_the_timeout() -> None:
    proc = _ignoring_sigterm()
    stop_broker(proc.pid, timeout=0.5)
    _assert_reaped(proc)


def test_stopping_a_process_that_is_gone_is_not_an_error() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stop_broker(proc.pid, timeout=1)


def test_starting_on_a_port_in_use_fails_with_a_message_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} .* in use"):
            start_broker(tmp_path, port=port)
