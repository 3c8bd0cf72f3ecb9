"""TLS between the uplink and the reference platform, with a throwaway CA made here."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_uplink import readings, running_agent
from test_uplink_support import Platform, running_platform, wait_for

from reference_platform import server_ssl_context

Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: Key, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


class CA:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn: str, *, server: bool) -> tuple[x509.Certificate, Key]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256()), key

    def files(self, tmp_path: Path, cn: str, *, server: bool) -> tuple[Path, Path]:
        cert, key = self.issue(cn, server=server)
        return _write_cert(cert, tmp_path / f"{cn}.pem"), _write_key(key, tmp_path / f"{cn}.key")


def _server_context(tmp_path: Path, ca: CA, client_ca: CA | None) -> ssl.SSLContext:
    cert, key = ca.files(tmp_path, "platform", server=True)
    client_ca_file = None
    if client_ca is not None:
        client_ca_file = _write_cert(client_ca.cert, tmp_path / "clients-ca.pem")
    ctx = server_ssl_context(cert, key, client_ca_file)
    assert ctx is not None
    return ctx


async def _stored(p: Platform) -> int:
    rows = await p.platform.store.run(p.platform.store.query, "SELECT count(*) FROM records")
    return int(rows[0][0])


async def test_mutual_tls_works(tmp_path: Path) -> None:
    ca = CA("test platform CA")
    ca_file = _write_cert(ca.cert, tmp_path / "ca.pem")
    client_cert, client_key = ca.files(tmp_path, "gw-0001", server=False)
    async with (
        running_platform(tmp_path, ssl_context=_server_context(tmp_path, ca, ca)) as p,
        running_agent(
            p, tmp_path, ca_file=ca_file, cert_file=client_cert, key_file=client_key
        ) as agent,
    ):
        await agent.buffer.append(readings(25))

        async def arrived() -> bool:
            return await _stored(p) == 25

        await wait_for(arrived)
        assert agent.state.connected


async def test_server_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    trusted, impostor = CA("the real CA"), CA("someone else")
    ca_file = _write_cert(trusted.cert, tmp_path / "ca.pem")
    async with (
        running_platform(tmp_path, ssl_context=_server_context(tmp_path, impostor, None)) as p,
        running_agent(p, tmp_path, ca_file=ca_file) as agent,
    ):
        await agent.buffer.append(readings(3))

        async def failed() -> bool:
            return agent.state.batches_failed >= 2

        await wait_for(failed)
        assert "certificate" in (agent.state.last_error or "").lower()
        assert not agent.state.connected
        assert await _stored(p) == 0


async def test_client_without_certificate_is_refused_by_the_server(tmp_path: Path) -> None:
    ca = CA("test platform CA")
    ca_file = _write_cert(ca.cert, tmp_path / "ca.pem")
    async with (
        running_platform(tmp_path, ssl_context=_server_context(tmp_path, ca, ca)) as p,
        running_agent(p, tmp_path, ca_file=ca_file) as agent,
    ):
        await agent.buffer.append(readings(3))

        async def failed() -> bool:
            return agent.state.batches_failed >= 2

        await wait_for(failed)
        assert not agent.state.connected
        assert await _stored(p) == 0
