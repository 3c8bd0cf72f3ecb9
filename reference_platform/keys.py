"""Gateway keys (HMAC secrets bound to gateway ids) and the platform's command key."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.uplink.wire import (
    load_ed25519_private_key,
)


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayKey:
    key_id: str
    gateway: str
    secret: bytes = dataclasses.field(repr=False)


def load_keys(path: Path) -> dict[str, GatewayKey]:
    """Read a keys file: YAML or JSON mapping ``key_id -> {gateway: id, secret: text}``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return parse_keys(data, source=str(path))


def parse_keys(data: Any, *, source: str = "keys") -> dict[str, GatewayKey]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping key_id -> {{gateway, secret}}")
    keys: dict[str, GatewayKey] = {}
    for key_id, entry in data.items():
        if isinstance(entry, GatewayKey):
            keys[str(key_id)] = entry
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"{source}: {key_id}: expected {{gateway: ..., secret: ...}}")
        gateway, secret = entry.get("gateway"), entry.get("secret")
        if not isinstance(gateway, str) or not gateway:
            raise ValueError(f"{source}: {key_id}.gateway: a gateway id is required")
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"{source}: {key_id}.secret: a non-empty secret is required")
        keys[str(key_id)] = GatewayKey(str(key_id), gateway, secret.encode("utf-8"))
    return keys


def load_command_key(path: Path | None) -> Ed25519PrivateKey:
    """Load the platform's Ed25519 signing key; generate and save it (and FILE.pub) if missing."""
    if path is None:
        return Ed25519PrivateKey.generate()
    if path.exists():
        return load_ed25519_private_key(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    Path(f"{path}.pub").write_bytes(public_pem(key))
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
