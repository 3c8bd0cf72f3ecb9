"""Secrets are read only on request, with errors that name the source and never the value."""

from __future__ import annotations

import io
import json
import re
import typing
from pathlib import Path

import pytest
import structlog
from pydantic import BaseModel

import drivers
from agent.config import SecretError, SecretRef, load_config, read_secret, redact
from agent.config.models import AgentConfig, Community, Gateway, HttpUplink, UplinkConfig
from agent.logs import configure_logging, get_logger
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


def _config_models() -> list[type[BaseModel]]:
    """Every model a configuration can contain: AgentConfig's and each driver's device model,
    with the models nested in them."""
    from agent.config._validate import device_model

    found: dict[type[BaseModel], None] = {}

    def visit(annotation: object) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in found:
                return
            found[annotation] = None
            for field in annotation.model_fields.values():
                visit(field.annotation)
        for arg in typing.get_args(annotation):
            visit(arg)

    visit(AgentConfig)
    for name in drivers.DRIVERS:
        visit(device_model(name))
    return list(found)


SECRET_WORDS = ("psk", "api_key", "credential", "token", "key", "password", "secret", "scbk")


def _logged(name: str, value: str) -> str:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        get_logger().info("test.secret", **{name: value})
    finally:
        structlog.reset_defaults()
    return out.getvalue()


def test_every_secret_the_config_knows_is_hidden_from_logs_and_the_page() -> None:
    secret_fields = [
        (model.__name__, name)
        for model in _config_models()
        for name, field in model.model_fields.items()
        if SecretRef in (field.annotation, *typing.get_args(field.annotation))
        or any(word in name.lower() for word in SECRET_WORDS)
    ]
    assert ("HttpUplink", "secret") in secret_fields, "the walk must reach the uplink"
    value = "s3cr3t-Value-42"
    leaked = []
    for model, name in secret_fields:
        if name.endswith(("_file", "_id", "_env", "_path")):
            continue  # where a secret lives, not the secret
        if value in _logged(name, value):
            leaked.append(f"{model}.{name} (log)")
        if redact_value(name, value) != "***":
            leaked.append(f"{model}.{name} (page)")
    assert leaked == []


def test_the_issue_s_secret_words_and_url_passwords_never_reach_a_log_line() -> None:
    value = "s3cr3t-Value-42"
    for word in (*SECRET_WORDS, "master_key", "API_KEY", "Authorization", "password_hash"):
        assert value not in _logged(word, value), word
    for harmless in ("key_id", "key_file", "monkey", "keyboard"):
        assert value in _logged(harmless, value), harmless
    line = _logged("url", f"rtsp://admin:{value}@10.0.0.9/live")
    assert value not in line
    assert "rtsp://admin:***@10.0.0.9/live" in line


def redact_value(name: str, value: str) -> object:
    from agent.config.secrets import _plain

    return _plain(value, name)
