"""Test certificates, made at run time with ``cryptography``: a CA and a server certificate it signed for
the loopback address (SAN ``127.0.0.1`` and ``localhost``), and for mutual TLS a client certificate
the same CA signed, as PEM files. Nothing is checked in."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ClientCertificate", "ServerCertificate", "write_ca", "write_ca_and_server_cert", "write_mutual_tls"]

_VALIDITY = dt.timedelta(days=1)
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files: the CA certificate clients trust, the server's certificate and its PKCS#8 key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClientCertificate:
    """PEM files of a client certificate and its PKCS#8 key (encrypted when a password was given)."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _self_signed_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_ca(path: Path, common_name: str = "kmsbridge test CA") -> Path:
    """A self-signed CA certificate alone (e.g. one that signed nothing a server presents)."""
    _key, cert = _self_signed_ca(common_name)
    path.write_bytes(_pem(cert))
    return path


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, common_name: str,
          usage: x509.ObjectIdentifier) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate ``ca`` signed for ``common_name`` (SAN 127.0.0.1 and localhost), for ``usage``."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> None:
    path.touch(mode=0o600)
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def _write_server(folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> ServerCertificate:
    key, cert = _leaf(ca_key, ca, "127.0.0.1", x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)
    folder.mkdir(parents=True, exist_ok=True)
    paths = ServerCertificate(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    paths.ca.write_bytes(_pem(ca))
    paths.cert.write_bytes(_pem(cert))
    _write_key(paths.key, key)
    return paths


def write_ca_and_server_cert(folder: Path, common_name: str = "kmsbridge test CA") -> ServerCertificate:
    """A self-signed CA and a server certificate it signed for 127.0.0.1 and localhost, under ``folder``
    as ``ca.pem``, ``server.pem`` and ``server.key`` (unencrypted PKCS#8, mode 0600)."""
    ca_key, ca = _self_signed_ca(common_name)
    return _write_server(folder, ca_key, ca)


def write_mutual_tls(folder: Path, *, key_password: bytes | None = None,
                     common_name: str = "kmsbridge test CA") -> tuple[ServerCertificate, ClientCertificate]:
    """What :func:`write_ca_and_server_cert` writes, and a client certificate of the same CA as
    ``client.pem`` and ``client.key`` (encrypted with ``key_password`` when given)."""
    ca_key, ca = _self_signed_ca(common_name)
    server = _write_server(folder, ca_key, ca)
    key, cert = _leaf(ca_key, ca, "kmsbridge executor", x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
    client = ClientCertificate(cert=folder / "client.pem", key=folder / "client.key")
    client.cert.write_bytes(_pem(cert))
    _write_key(client.key, key, key_password)
    return server, client
