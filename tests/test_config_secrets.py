"""Secrets are read only on request, with errors that name the source and never the value."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.config import SecretError, SecretRef, load_config, read_secret, redact
from agent.config.models import AgentConfig, Community, Gateway, HttpUplink, UplinkConfig
from drivers.simulated.config import SimulatedDevice

VALUE = "s3cr3t-Value-42"


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "uplink.key"
    path.write_text(f"{VALUE}\n", encoding="utf-8")
    assert read_secret(SecretRef(file=path)) == VALUE


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_TEST_KEY", VALUE)
    assert read_secret(SecretRef(env="EDGE_TEST_KEY")) == VALUE


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(SecretError, match=rf"^secret file {re.escape(str(path))} does not exist$"):
        read_secret(SecretRef(file=path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.key"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(SecretError, match=rf"^secret file {re.escape(str(path))} is empty$"):
        read_secret(SecretRef(file=path))


def test_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(
        SecretError, match=rf"^secret file {re.escape(str(tmp_path))} cannot be read: "
    ):
        read_secret(SecretRef(file=tmp_path))


def test_unset_and_empty_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_TEST_KEY", raising=False)
    with pytest.raises(SecretError, match=r"^environment variable EDGE_TEST_KEY is not set$"):
        read_secret(SecretRef(env="EDGE_TEST_KEY"))
    monkeypatch.setenv("EDGE_TEST_KEY", "  ")
    with pytest.raises(SecretError, match=r"^environment variable EDGE_TEST_KEY is empty$"):
        read_secret(SecretRef(env="EDGE_TEST_KEY"))


def test_validation_reads_no_secret(tmp_path: Path) -> None:
    text = (
        'gateway: {id: gw-1, community: {code: "350102001001"}}\n'
        "uplink:\n  http:\n    url: https://p.example.gov.cn\n    key_id: gw-1\n"
        "    secret: {file: /nonexistent/uplink.key}\n"
    )
    (tmp_path / "a.yaml").write_text(text, encoding="utf-8")
    config = load_config(tmp_path / "a.yaml")
    assert config.uplink.http is not None
    assert config.uplink.http.secret.file == Path("/nonexistent/uplink.key")


def test_redact() -> None:
    device = SimulatedDevice.model_validate(
        {
            "id": "cam-1",
            "driver": "simulated",
            "points": [
                {"name": "url", "kind": "constant", "value": f"rtsp://admin:{VALUE}@10.0.0.9/live"}
            ],
            "events": [{"type": "a.b", "every_polls": 1, "data": {"password": VALUE, "zone": 3}}],
        }
    )
    config = AgentConfig(
        gateway=Gateway(id="gw-1", community=Community(code="350102001001")),
        uplink=UplinkConfig(
            http=HttpUplink(
                url="https://platform.example.gov.cn/api",
                key_id="gw-1",
                secret=SecretRef(env="EDGE_UPLINK_KEY"),
                key_file=Path("/etc/edge-agent/client.key"),
                cert_file=Path("/etc/edge-agent/client.pem"),
            )
        ),
        devices=[device],
    )
    plain = redact(config)
    text = json.dumps(plain, ensure_ascii=False)  # plain data, JSON-ready
    assert VALUE not in text
    assert "EDGE_UPLINK_KEY" not in text
    http = plain["uplink"]["http"]
    assert http["secret"] == "***"
    assert http["key_id"] == "gw-1"
    assert http["key_file"] == "/etc/edge-agent/client.key"
    assert plain["buffer"]["durability"] == "full"
    assert plain["devices"][0]["events"][0]["data"] == {"password": "***", "zone": 3}
    assert plain["devices"][0]["points"][0]["value"] == "rtsp://admin:***@10.0.0.9/live"
    assert plain["devices"][0]["kind"] == "sensor"
