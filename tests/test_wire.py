"""The wire contract pinned by the test vector published in docs/uplink-api.md.

Both ends import :mod:`agent.uplink.wire`, so a change to the canonical form would pass every
other test while breaking every third-party platform. This test reads the vector from the
document itself and checks it three ways: the agent's signing code, the platform's verification
(the same module), and an HMAC written here, apart from both, as an integrator would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path

import orjson

from agent.uplink.wire import (
    ack_document,
    ack_problem,
    batch_document,
    canonical_request,
    command_envelope,
    command_problem,
    open_envelope,
    result_document,
    sha256_hex,
    sign_command,
    signature_headers,
    verify_request_signature,
)

ROOT = Path(__file__).resolve().parent.parent


def published_vector() -> tuple[dict[str, str], str, dict[str, str]]:
    doc = (ROOT / "docs" / "uplink-api.md").read_text(encoding="utf-8")
    section = doc[doc.index("Test vector") :]
    setting = re.search(
        r"gateway `(?P<gw>[^`]+)`, key id `(?P<key>[^`]+)`, secret\s+`(?P<secret>[^`]+)`, "
        r"signed at `(?P<ts>\d+)` with nonce\s+`(?P<nonce>[^`]+)`",
        section,
    )
    assert setting is not None, "the test vector's setting is not where the doc says"
    blocks = re.findall(r"```\n(.*?)\n```", section, flags=re.DOTALL)
    canonical, headers_block = blocks[0], blocks[1]
    headers = dict(line.split(": ", 1) for line in headers_block.splitlines())
    return setting.groupdict(), canonical, headers


def test_the_published_vector_is_what_the_agent_signs() -> None:
    setting, canonical, headers = published_vector()
    method, target, ts, nonce, digest = canonical.split("\n")
    assert digest == sha256_hex(b"")  # a GET has an empty body
    assert nonce == setting["nonce"]
    assert canonical_request(method, target, int(ts), nonce, digest) == canonical.encode()
    signed = signature_headers(
        setting["key"],
        setting["secret"].encode(),
        method,
        target,
        int(setting["ts"]),
        b"",
        nonce=setting["nonce"],
    )
    assert signed == headers


def test_an_integrator_computing_the_hmac_by_hand_gets_the_same() -> None:
    setting, canonical, headers = published_vector()
    by_hand = hmac.new(setting["secret"].encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert headers["Authorization"] == f"EA1-HMAC-SHA256 Signature={by_hand}"
    assert headers["X-Content-SHA256"] == hashlib.sha256(b"").hexdigest()
    method, target, ts, nonce, digest = canonical.split("\n")
    assert verify_request_signature(
        setting["secret"].encode(), method, target, int(ts), nonce, digest, by_hand
    )
    assert not verify_request_signature(
        setting["secret"].encode(), method, target + "1", int(ts), nonce, digest, by_hand
    )
    # The nonce is signed: a replay under a fresh nonce does not verify.
    assert not verify_request_signature(
        setting["secret"].encode(), method, target, int(ts), nonce[::-1], digest, by_hand
    )


def test_the_documented_acknowledgement_acknowledges_the_documented_batch() -> None:
    """The example batch and its answer in docs/uplink-api.md agree with :func:`ack_problem`."""
    doc = (ROOT / "docs" / "uplink-api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)\n```", doc, flags=re.DOTALL)
    batch = next(orjson.loads(b) for b in blocks if b.startswith('{"epoch"'))
    answer = next(orjson.loads(b) for b in blocks if b.startswith('{"accepted"'))
    seqs = [r["seq"] for r in batch["records"]]
    assert ack_problem(answer, epoch=batch["epoch"], records=len(seqs), last_seq=max(seqs)) is None


def test_only_an_answer_that_counts_the_batch_acknowledges_it() -> None:
    good = ack_document("e1", 3, 2, 17)
    assert ack_problem(good, epoch="e1", records=5, last_seq=17) is None
    assert (
        ack_problem(
            {k: v for k, v in good.items() if k != "epoch"}, epoch="e1", records=5, last_seq=17
        )
        is None
    )
    for answer, why in [
        (None, "not a JSON object"),
        ({"ok": True}, "no integer"),
        ({**good, "accepted": True}, "no integer"),
        ({**good, "accepted": 2}, "2 accepted + 2 duplicates for a batch of 5"),
        ({**good, "duplicates": -1, "accepted": 6}, "for a batch of 5"),
        ({**good, "last_seq": 16}, "last_seq 16"),
        ({**good, "last_seq": None}, "last_seq None"),
        ({**good, "epoch": "e0"}, "epoch 'e0'"),
    ]:
        problem = ack_problem(answer, epoch="e1", records=5, last_seq=17)
        assert problem is not None, answer
        assert why in problem


def test_command_shapes_and_result_documents() -> None:
    command = {
        "id": "c1",
        "device": "d",
        "action": "open",
        "args": {},
        "issued_ms": 1,
        "expires_ms": 5,
    }
    assert command_problem(command) is None
    assert "issued_ms" in (command_problem({**command, "issued_ms": None}) or "")
    assert "id" in (command_problem({**command, "id": ""}) or "")
    assert "args" in (command_problem({**command, "args": []}) or "")
    assert "expires_ms" in (command_problem({**command, "expires_ms": True}) or "")
    assert orjson.loads(result_document("failed", 9, reason="timeout", error="no answer")) == {
        "status": "failed",
        "result": {},
        "ts": 9,
        "reason": "timeout",
        "error": "no answer",
    }
    assert batch_document("e", b"[]") == b'{"epoch":"e","records":[]}'


def test_the_published_command_vector_verifies_and_opens() -> None:
    """Detached signatures over exact bytes (docs/uplink-api.md, "Command test vector")."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    doc = (ROOT / "docs" / "uplink-api.md").read_text(encoding="utf-8")
    section = doc[doc.index("Each command travels as the exact bytes") :]
    blocks = re.findall(r"```json\n(.*?)\n```", section, flags=re.DOTALL)
    poll, payload = orjson.loads(blocks[0]), orjson.loads(blocks[1])
    published = re.search(r"has the public key\s+`([0-9a-f]{64})`", section)
    assert published is not None
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == published.group(1)
    (envelope,) = poll["commands"]
    assert open_envelope(public, envelope) == payload
    assert command_envelope({**payload, "signature": sign_command(key, payload)}) == envelope
    # Verified over the bytes as sent, before parsing: the same JSON re-spaced is refused.
    respaced = base64.b64encode(orjson.dumps(payload) + b" ").decode()
    assert open_envelope(public, {**envelope, "payload": respaced}) == "bad_signature"
    assert open_envelope(public, {**envelope, "id": "other"}) == "id_mismatch"
    assert open_envelope(public, {k: v for k, v in envelope.items() if k != "signature"}) == (
        "unsigned"
    )
