"""Test certificates, made at run time with ``cryptography``: a CA and a server certificate it signed for
the loopback address (SAN ``127.0.0.1`` and ``localhost``), as PEM files. Nothing is checked in."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ServerCertificate", "write_ca", "write_ca_and_server_cert"]

_VALIDITY = dt.timedelta(days=1)
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files: the CA certificate clients trust, the server's certificate and its PKCS#8 key."""

    ca: Path
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


def write_ca_and_server_cert(folder: Path, common_name: str = "kmsbridge test CA") -> ServerCertificate:
    """A self-signed CA and a server certificate it signed for 127.0.0.1 and localhost, under ``folder``
    as ``ca.pem``, ``server.pem`` and ``server.key`` (unencrypted PKCS#8, mode 0600)."""
    ca_key, ca = _self_signed_ca(common_name)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = ServerCertificate(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    paths.ca.write_bytes(_pem(ca))
    paths.cert.write_bytes(_pem(cert))
    paths.key.touch(mode=0o600)
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths
