"""``edge-agent web make-cert``: a self-signed certificate for the diagnostic page's HTTPS.

A gateway on a community LAN has no public name for a CA to vouch for; a self-signed
certificate still keeps passwords and session cookies out of clear text. The technician checks
the SHA-256 fingerprint the command prints against the one the browser shows the first time.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["MadeCert", "make_cert"]


@dataclass(frozen=True, slots=True)
class MadeCert:
    cert_file: Path
    key_file: Path
    names: tuple[str, ...]
    fingerprint: str
    """SHA-256 of the DER certificate, as browsers show it (AA:BB:…)."""
    not_after: datetime.datetime


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_cert(
    directory: Path,
    names: list[str],
    *,
    days: int = 825,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> MadeCert:
    """Write ``web-cert.pem`` and ``web-key.pem`` (0600) into ``directory`` for ``names`` (host
    names and IP addresses; the host's own name and localhost are always in). Refuses to
    overwrite an existing key unless ``force``: browsers that trusted the old one would warn."""
    cert_file, key_file = directory / "web-cert.pem", directory / "web-key.pem"
    if not force and (cert_file.exists() or key_file.exists()):
        raise FileExistsError(f"{key_file} or {cert_file} exists: pass --force to replace them")
    wanted = [*names, socket.gethostname(), "localhost", "127.0.0.1"]
    unique = tuple(dict.fromkeys(n.strip().lower() for n in wanted if n.strip()))
    key = ec.generate_private_key(ec.SECP256R1())
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique[0][:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in unique]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(key_file, key_pem, 0o600)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return MadeCert(
        cert_file=cert_file,
        key_file=key_file,
        names=unique,
        fingerprint=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
        not_after=cert.not_valid_after_utc,
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file created with ``mode``: the key is never readable by others,
    not even for a moment, and a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
