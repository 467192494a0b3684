"""Certificate making with `cryptography`: a local CA and leaf certificates signed by it (dev TLS and tests)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vlm_service.server.keypair import KeyPair, ensure_private_dir  # noqa: F401  (KeyPair re-exported)

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write through a temp file created with `mode` and chmod-ed to it (the umask could only narrow or, at 000,
    leave it; either way the file ends with exactly `mode`); folders made here are 0700."""
    ensure_private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o600)  # never readable by others while written
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_private(path: Path, data: bytes) -> None:
    """A secret: mode 0600 from the first byte (never world-readable, even briefly)."""
    _write(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    """A certificate: mode 0644."""
    _write(path, data, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: str, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def make_ca(out: Path, common_name: str = "vlm-service dev CA", days: int = 3650) -> KeyPair:
    """A self-signed CA written to out.crt / out.key (key 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(common_name, _name(common_name), key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    pair = KeyPair(out.with_suffix(".crt"), out.with_suffix(".key"))
    _write_private(pair.key, _key_pem(key))
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def make_leaf(ca: KeyPair, out: Path, common_name: str, names: tuple[str, ...] = (), client: bool = False,
              days: int = 825) -> KeyPair:
    """A certificate signed by `ca`: server (SANs `names`) or client auth; written to out.crt / out.key."""
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (_builder(common_name, ca_cert.subject, key.public_key(), days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = KeyPair(out.with_suffix(".crt"), out.with_suffix(".key"))
    _write_private(pair.key, _key_pem(key))
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def ensure_dev_pki(tls_dir: Path) -> tuple[KeyPair, KeyPair]:
    """The dev CA and a localhost server certificate under tls_dir, made once and reused on later starts.

    Returns (ca, server). The bundled client trusts tls_dir/ca.crt by default.
    """
    ca = KeyPair(tls_dir / "ca.crt", tls_dir / "ca.key")
    server = KeyPair(tls_dir / "server.crt", tls_dir / "server.key")
    if not (ca.cert.exists() and ca.key.exists()):
        ca = make_ca(tls_dir / "ca")
        server = make_leaf(ca, tls_dir / "server", "localhost", LOCAL_NAMES)
    elif not (server.cert.exists() and server.key.exists()):
        server = make_leaf(ca, tls_dir / "server", "localhost", LOCAL_NAMES)
    return ca, server
