"""The wire contract pinned by the test vector published in docs/uplink-api.md.

Both ends import :mod:`agent.uplink.wire`, so a change to the canonical form would pass every
other test while breaking every third-party platform. This test reads the vector from the
document itself and checks it three ways: the agent's signing code, the platform's verification
(the same module), and an HMAC written here, apart from both, as an integrator would.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from agent.uplink.wire import (
    canonical_request,
    sha256_hex,
    signature_headers,
    verify_request_signature,
)

ROOT = Path(__file__).resolve().parent.parent


def published_vector() -> tuple[dict[str, str], str, dict[str, str]]:
    doc = (ROOT / "docs" / "uplink-api.md").read_text(encoding="utf-8")
    section = doc[doc.index("Test vector") :]
    setting = re.search(
        r"gateway `(?P<gw>[^`]+)`, key id `(?P<key>[^`]+)`, secret\s+`(?P<secret>[^`]+)`, "
        r"signed at `(?P<ts>\d+)`",
        section,
    )
    assert setting is not None, "the test vector's setting is not where the doc says"
    blocks = re.findall(r"```\n(.*?)\n```", section, flags=re.DOTALL)
    canonical, headers_block = blocks[0], blocks[1]
    headers = dict(line.split(": ", 1) for line in headers_block.splitlines())
    return setting.groupdict(), canonical, headers


def test_the_published_vector_is_what_the_agent_signs() -> None:
    setting, canonical, headers = published_vector()
    method, target, ts, digest = canonical.split("\n")
    assert digest == sha256_hex(b"")  # a GET has an empty body
    assert canonical_request(method, target, int(ts), digest) == canonical.encode()
    signed = signature_headers(
        setting["key"], setting["secret"].encode(), method, target, int(setting["ts"]), b""
    )
    assert signed == headers


def test_an_integrator_computing_the_hmac_by_hand_gets_the_same() -> None:
    setting, canonical, headers = published_vector()
    by_hand = hmac.new(setting["secret"].encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert headers["Authorization"] == f"EA1-HMAC-SHA256 Signature={by_hand}"
    assert headers["X-Content-SHA256"] == hashlib.sha256(b"").hexdigest()
    method, target, ts, digest = canonical.split("\n")
    assert verify_request_signature(
        setting["secret"].encode(), method, target, int(ts), digest, by_hand
    )
    assert not verify_request_signature(
        setting["secret"].encode(), method, target + "1", int(ts), digest, by_hand
    )
