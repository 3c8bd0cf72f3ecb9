"""``python -m reference_platform`` as a real process: start, serve, stop."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from test_uplink_support import GW, KEY_ID, KEYS, SECRET, reading, signed
from test_uplink_tls import CA, _write_cert

from agent.uplink.wire import sha256_hex, sign_request
from reference_platform import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@contextmanager
def platform_process(tmp_path: Path, *extra: str) -> Iterator[tuple[dict[str, Any], Any]]:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump(KEYS), encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reference_platform",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "platform.db"),
            "--keys",
            str(keys),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "EDGE_PLATFORM_ADMIN_TOKEN"}
        | {"PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "no output"
        yield json.loads(line), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_serves_stores_and_stops_on_sigterm(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "command.pem"
    with platform_process(tmp_path, "--command-key", str(key_file)) as (info, proc):
        url = f"http://127.0.0.1:{info['port']}"
        token = info["admin_token"]
        assert len(token) >= 24
        assert key_file.exists()
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        assert Path(f"{key_file}.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")

        async def talk() -> None:
            async with aiohttp.ClientSession() as session:
                status, doc, _ = await signed(
                    session,
                    url,
                    "POST",
                    f"/v1/gateways/{GW}/records",
                    gzip.compress(orjson.dumps({"epoch": "e", "records": [reading(1)]})),
                    headers={"Content-Encoding": "gzip"},
                )
                assert (status, doc["accepted"]) == (200, 1)
                async with session.get(
                    f"{url}/v1/gateways", headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    assert (await resp.json())["gateways"][0]["records"] == 1
                async with session.get(f"{url}/v1/command-key") as resp:
                    doc = await resp.json()
                    assert doc["key_id"] == info["command_key_id"]
                    assert doc["public_key_pem"] == Path(f"{key_file}.pub").read_text()

        asyncio.run(talk())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    # The same key file next time: the same command key.
    with platform_process(tmp_path, "--command-key", str(key_file)) as (again, _):
        assert again["command_key_id"] == info["command_key_id"]


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    ca = CA("cli test CA")
    server_cert, server_key = ca.files(tmp_path, "platform", server=True)
    client_cert, client_key = ca.files(tmp_path, "gw-0001", server=False)
    ca_file = _write_cert(ca.cert, tmp_path / "ca.pem")
    with platform_process(
        tmp_path,
        "--tls-cert",
        str(server_cert),
        "--tls-key",
        str(server_key),
        "--client-ca",
        str(ca_file),
        "--admin-token",
        "t0ken",
    ) as (info, _):
        assert info["listening"].startswith("https://")
        url = f"https://127.0.0.1:{info['port']}/v1/health"

        async def health(with_cert: bool) -> int:
            ctx = ssl.create_default_context(cafile=ca_file)
            if with_cert:
                ctx.load_cert_chain(client_cert, client_key)
            async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as resp:
                return resp.status

        assert asyncio.run(health(with_cert=True)) == 200
        with pytest.raises(aiohttp.ClientError):
            asyncio.run(health(with_cert=False))


def test_bad_keys_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "keys.yaml"
    bad.write_text("gw-0001-k1: {gateway: gw-0001}\n")
    assert main(["--db", str(tmp_path / "p.db"), "--keys", str(bad)]) == 2
    assert "secret" in capsys.readouterr().err


def test_documented_signature_test_vector() -> None:
    text = (ROOT / "docs" / "uplink-api.md").read_text(encoding="utf-8")
    expected = sign_request(
        SECRET.encode(),
        "GET",
        f"/v1/gateways/{GW}/commands?wait_s=25",
        1_700_000_000_000,
        "5f0c3b6e9a2d4c718e1f2a3b4c5d6e7f",
        sha256_hex(b""),
    )
    assert f"Signature={expected}" in text
    assert f"X-Key-Id: {KEY_ID}" in text
