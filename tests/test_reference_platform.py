"""The reference platform over real HTTP: authentication, storage, inventory, commands, faults,
and agreement between its routes and docs/openapi.yaml / docs/uplink-api.md."""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_uplink_support import (
    ADMIN,
    GW,
    KEYS,
    OTHER_GW,
    OTHER_KEY_ID,
    OTHER_SECRET,
    batch_body,
    reading,
    running_platform,
    signed,
)

from agent.uplink.wire import (
    canonical_command,
    load_ed25519_public_key,
    open_envelope,
    parse_http_date_ms,
    sign_command,
    verify_command,
)
from reference_platform import build_app, load_keys, parse_keys

ROOT = Path(__file__).resolve().parent.parent
RECORDS = f"/v1/gateways/{GW}/records"


# --------------------------------------------------------------------------- authentication


async def test_good_signature_is_accepted_and_stored(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        status, doc, headers = await signed(
            p.session,
            p.url,
            "POST",
            RECORDS,
            batch_body("ep1", [reading(1), reading(2)]),
            headers={"Content-Encoding": "gzip"},
        )
        assert status == 200, doc
        assert doc == {"accepted": 2, "duplicates": 0, "last_seq": 2, "epoch": "ep1"}
        assert parse_http_date_ms(headers["Date"]) is not None
        stored = await p.records()
        assert [r["seq"] for r in stored] == [1, 2]
        assert stored[0]["record"] == reading(1)
        assert stored[0]["epoch"] == "ep1"


@pytest.mark.parametrize(
    ("variant", "status", "code"),
    [
        ("bad_signature", 401, "bad_signature"),
        ("unknown_key", 401, "unknown_key"),
        ("stale_timestamp", 401, "stale_timestamp"),
        ("other_gateways_key", 403, "wrong_gateway"),
        ("body_swapped", 401, "digest_mismatch"),
        ("no_auth", 401, "missing_auth"),
    ],
)
async def test_bad_requests_are_rejected(
    tmp_path: Path, variant: str, status: int, code: str
) -> None:
    body = batch_body("ep1", [reading(1)])
    kwargs: dict[str, Any] = {"headers": {"Content-Encoding": "gzip"}}
    if variant == "bad_signature":
        kwargs["secret"] = "wrong secret"
    elif variant == "unknown_key":
        kwargs["key_id"] = "nobody"
    elif variant == "stale_timestamp":
        kwargs["ts_ms"] = int(time.time() * 1000) - 301_000
    elif variant == "other_gateways_key":
        kwargs.update(key_id=OTHER_KEY_ID, secret=OTHER_SECRET)
    elif variant == "no_auth":
        kwargs["tamper"] = lambda h: h.pop("Authorization")
    async with running_platform(tmp_path) as p:
        if variant == "body_swapped":
            # Signed for one body, sent with another: the digest header no longer matches.
            good = signed_headers_for(body)
            async with p.session.post(
                p.url + RECORDS,
                data=batch_body("ep1", [reading(9)]),
                headers={**good, "Content-Encoding": "gzip"},
            ) as resp:
                got_status, doc, headers = resp.status, await resp.json(), resp.headers
        else:
            got_status, doc, headers = await signed(
                p.session, p.url, "POST", RECORDS, body, **kwargs
            )
        assert (got_status, doc["error"]) == (status, code), doc
        assert "Date" in headers
        assert await p.records() == []


def signed_headers_for(body: bytes) -> dict[str, str]:
    from test_uplink_support import KEY_ID, SECRET

    from agent.uplink.wire import signature_headers

    return signature_headers(
        KEY_ID, SECRET.encode(), "POST", RECORDS, int(time.time() * 1000), body
    )


async def test_query_string_is_part_of_the_signature(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        path = f"/v1/gateways/{GW}/commands?wait_s=0"
        status, doc, _ = await signed(p.session, p.url, "GET", path)
        assert (status, doc) == (200, {"commands": []})
        # Signed without the query, sent with it: rejected.
        from test_uplink_support import KEY_ID, SECRET

        from agent.uplink.wire import signature_headers

        hdrs = signature_headers(
            KEY_ID,
            SECRET.encode(),
            "GET",
            path.split("?", maxsplit=1)[0],
            int(time.time() * 1000),
            b"",
        )
        async with p.session.get(p.url + path, headers=hdrs) as resp:
            assert resp.status == 401


async def test_admin_endpoints_need_the_token(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        async with p.session.get(p.url + "/v1/gateways") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
        async with p.session.get(
            p.url + "/v1/gateways", headers={"Authorization": "Bearer nope"}
        ) as resp:
            assert resp.status == 401
        status, doc = await p.admin("GET", "/v1/gateways")
        assert status == 200
        assert [g["id"] for g in doc["gateways"]] == [GW, OTHER_GW]


async def test_errors_are_json_even_for_unknown_routes(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p, p.session.get(p.url + "/nowhere") as resp:
        assert resp.status == 404
        doc = await resp.json()
        assert set(doc) >= {"error", "message"}
        assert "Date" in resp.headers


# --------------------------------------------------------------------------- storage


async def test_same_batch_twice_is_stored_once(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        body = batch_body("ep1", [reading(1), reading(2), reading(3)])
        hdrs = {"Content-Encoding": "gzip"}
        first = await signed(p.session, p.url, "POST", RECORDS, body, headers=hdrs)
        second = await signed(p.session, p.url, "POST", RECORDS, body, headers=hdrs)
        assert first[:2] == (200, {"accepted": 3, "duplicates": 0, "last_seq": 3, "epoch": "ep1"})
        assert second[:2] == (200, {"accepted": 0, "duplicates": 3, "last_seq": 3, "epoch": "ep1"})
        # Overlapping batch: 2 and 3 are duplicates, 4 is new; another epoch is separate.
        third = await signed(
            p.session,
            p.url,
            "POST",
            RECORDS,
            batch_body("ep1", [reading(2), reading(3), reading(4)]),
            headers=hdrs,
        )
        assert third[:2] == (200, {"accepted": 1, "duplicates": 2, "last_seq": 4, "epoch": "ep1"})
        fourth = await signed(
            p.session, p.url, "POST", RECORDS, batch_body("ep2", [reading(1)]), headers=hdrs
        )
        assert fourth[1]["accepted"] == 1
        assert [(r["epoch"], r["seq"]) for r in await p.records()] == [
            ("ep1", 1),
            ("ep1", 2),
            ("ep1", 3),
            ("ep1", 4),
            ("ep2", 1),
        ]
        _, doc = await p.admin("GET", "/v1/gateways")
        assert doc["gateways"][0]["records"] == 5


async def test_invalid_record_is_400_with_its_seq_and_nothing_stored(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        bad = {**reading(2), "value": {"nested": True}}
        status, doc, _ = await signed(
            p.session,
            p.url,
            "POST",
            RECORDS,
            batch_body("ep1", [reading(1), bad, reading(3)]),
            headers={"Content-Encoding": "gzip"},
        )
        assert status == 400
        assert doc["error"] == "invalid_record"
        assert doc["seqs"] == [2]
        assert await p.records() == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (gzip.compress(b"not json"), "malformed_batch"),
        (gzip.compress(b'{"records": []}'), "malformed_batch"),
        (b"\x1f\x8bnot really gzip", "bad_encoding"),
        (b"plain", "bad_encoding"),
    ],
)
async def test_malformed_batches_are_400(tmp_path: Path, body: bytes, code: str) -> None:
    async with running_platform(tmp_path) as p:
        status, doc, _ = await signed(
            p.session, p.url, "POST", RECORDS, body, headers={"Content-Encoding": "gzip"}
        )
        assert (status, doc["error"]) == (400, code)


async def test_records_can_be_filtered(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        records = [reading(i, device="a" if i % 2 else "b") for i in range(1, 11)]
        await signed(
            p.session,
            p.url,
            "POST",
            RECORDS,
            batch_body("ep", records),
            headers={"Content-Encoding": "gzip"},
        )
        assert [r["seq"] for r in await p.records(device="a")] == [1, 3, 5, 7, 9]
        assert [r["seq"] for r in await p.records(after_seq=7)] == [8, 9, 10]
        _, doc = await p.admin("GET", f"/v1/gateways/{GW}/records?limit=3")
        assert [r["seq"] for r in doc["records"]] == [1, 2, 3]
        _, doc = await p.admin(
            "GET", f"/v1/gateways/{GW}/records?limit=3&after_id={doc['next_after_id']}"
        )
        assert [r["seq"] for r in doc["records"]] == [4, 5, 6]


# --------------------------------------------------------------------------- inventory


async def test_inventory_round_trip(tmp_path: Path) -> None:
    inventory: dict[str, Any] = {
        "gateway": {
            "id": GW,
            "code": None,
            "community": {"code": "350102001001", "name": "东街社区"},
            "timezone": "Asia/Shanghai",
            "agent_version": "0.1.0",
        },
        "devices": [{"id": "meter-1", "driver": "modbus", "kind": "electricity_meter"}],
    }
    path = f"/v1/gateways/{GW}/inventory"
    async with running_platform(tmp_path) as p:
        status, doc = await p.admin("GET", path)
        assert status == 404
        body = orjson.dumps(inventory)
        status, doc, _ = await signed(p.session, p.url, "PUT", path, body)
        assert (status, doc) == (200, {"devices": 1, "revision": 1, "changed": True})
        status, doc, _ = await signed(p.session, p.url, "PUT", path, body)
        assert doc == {"devices": 1, "revision": 1, "changed": False}
        status, doc = await p.admin("GET", path)
        assert doc["inventory"] == inventory
        assert doc["inventory"]["gateway"]["community"]["name"] == "东街社区"
        wrong = orjson.dumps({**inventory, "gateway": {**inventory["gateway"], "id": OTHER_GW}})
        status, doc, _ = await signed(p.session, p.url, "PUT", path, wrong)
        assert (status, doc["error"]) == (400, "malformed_inventory")


# --------------------------------------------------------------------------- commands


async def test_commands_are_signed_long_polled_and_resulted(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        poll = f"/v1/gateways/{GW}/commands?wait_s=10"
        waiting = asyncio.create_task(signed(p.session, p.url, "GET", poll))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        status, queued = await p.admin(
            "POST",
            f"/v1/gateways/{GW}/commands",
            {"device": "door-1", "action": "open", "args": {"seconds": 5}, "expires_in_s": 60},
        )
        assert status == 201
        status, doc, _ = await asyncio.wait_for(waiting, 5)
        assert status == 200
        (envelope,) = doc["commands"]
        assert set(envelope) == {"id", "payload", "signature"}
        _, key_doc = await p.admin("GET", "/v1/command-key")
        key = load_ed25519_public_key(key_doc["public_key_pem"].encode())
        command = open_envelope(key, envelope)
        assert isinstance(command, dict), command
        assert command == {k: v for k, v in queued["command"].items() if k != "signature"}
        assert envelope["signature"] == queued["command"]["signature"]
        assert verify_command(key, queued["command"])
        assert command["key_id"] == key_doc["key_id"]
        # The payload is the exact bytes signed: one changed byte and it no longer verifies.
        raw = bytearray(base64.b64decode(envelope["payload"]))
        raw[raw.index(b"open")] = ord("O")
        bent = {**envelope, "payload": base64.b64encode(bytes(raw)).decode()}
        assert open_envelope(key, bent) == "bad_signature"
        # Delivered once: the next poll is empty.
        status, doc, _ = await signed(
            p.session, p.url, "GET", f"/v1/gateways/{GW}/commands?wait_s=0"
        )
        assert doc == {"commands": []}
        status, doc = await p.admin("GET", f"/v1/gateways/{GW}/commands/{command['id']}")
        assert doc["status"] == "delivered"
        result_path = f"/v1/gateways/{GW}/commands/{command['id']}/result"
        result = orjson.dumps({"status": "ok", "result": {"opened": True}, "ts": 1})
        status, doc, _ = await signed(p.session, p.url, "POST", result_path, result)
        assert (status, doc) == (200, {"stored": True, "duplicate": False})
        status, doc, _ = await signed(p.session, p.url, "POST", result_path, result)
        assert doc == {"stored": False, "duplicate": True}
        status, doc = await p.admin("GET", f"/v1/gateways/{GW}/commands/{command['id']}")
        assert (doc["status"], doc["result"]) == ("ok", {"opened": True})
        # Another gateway's key cannot report on this gateway's command.
        status, doc, _ = await signed(
            p.session,
            p.url,
            "POST",
            result_path,
            result,
            key_id=OTHER_KEY_ID,
            secret=OTHER_SECRET,
        )
        assert status == 403


def test_canonical_command_and_signature() -> None:
    key = Ed25519PrivateKey.generate()
    command = {
        "id": "c1",
        "gateway": GW,
        "device": "门-1",
        "action": "open",
        "args": {"b": 1, "a": 2},
    }
    assert (
        canonical_command({**command, "signature": "x"})
        == (
            '{"action":"open","args":{"a":2,"b":1},"device":"门-1","gateway":"gw-0001","id":"c1"}'
        ).encode()
    )
    signed_command = {**command, "signature": sign_command(key, command)}
    assert len(base64.b64decode(str(signed_command["signature"]))) == 64
    assert verify_command(key.public_key(), signed_command)
    assert not verify_command(key.public_key(), {**signed_command, "device": "门-2"})
    assert not verify_command(key.public_key(), command)
    assert not verify_command(key.public_key(), {**command, "signature": "!!"})


# --------------------------------------------------------------------------- faults


async def test_fault_modes(tmp_path: Path) -> None:
    body = batch_body("ep", [reading(1)])
    hdrs = {"Content-Encoding": "gzip"}
    async with running_platform(tmp_path) as p:
        await p.fault(mode="503", retry_after_s=7, count=1)
        status, doc, headers = await signed(p.session, p.url, "POST", RECORDS, body, headers=hdrs)
        assert (status, headers["Retry-After"], doc["error"]) == (503, "7", "unavailable")
        # count=1: back to normal.
        status, _, _ = await signed(p.session, p.url, "POST", RECORDS, body, headers=hdrs)
        assert status == 200
        await p.fault(mode="refuse")
        with pytest.raises(aiohttp.ClientError):
            await signed(p.session, p.url, "POST", RECORDS, body, headers=hdrs)
        await p.fault(mode="hang")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                signed(p.session, p.url, "POST", RECORDS, body, headers=hdrs), 0.5
            )
        await p.fault(mode="none", max_records=1)
        status, doc, _ = await signed(
            p.session,
            p.url,
            "POST",
            RECORDS,
            batch_body("ep", [reading(2), reading(3)]),
            headers=hdrs,
        )
        assert (status, doc["error"]) == (413, "batch_too_large")
        status, doc = await p.admin("GET", "/admin/requests?path_contains=/records")
        assert [r["status"] for r in doc["requests"]] == [503, 200, None, None, 413]
        assert doc["requests"][0]["fault"] == "503"
        status, doc = await p.admin("POST", "/admin/fault", {"mode": "teapot"})
        assert status == 400


# --------------------------------------------------------------------------- keys file


def test_keys_file_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump(KEYS))
    (tmp_path / "keys.json").write_bytes(orjson.dumps(KEYS))
    for name in ("keys.yaml", "keys.json"):
        keys = load_keys(tmp_path / name)
        assert keys[OTHER_KEY_ID].gateway == OTHER_GW
        assert "secret" not in repr(keys[OTHER_KEY_ID]).replace("secret=", "")
    with pytest.raises(ValueError, match="secret"):
        parse_keys({"k": {"gateway": GW}})


# --------------------------------------------------------------------------- docs agree


def _app_routes() -> set[tuple[str, str | None]]:
    app = build_app(Path("/nonexistent/never-opened.db"), KEYS, admin_token=ADMIN)
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        routes.add((route.method.lower(), path))
    return routes


def _openapi() -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    assert isinstance(spec, dict)
    return spec


def test_openapi_is_valid_openapi_3_1() -> None:
    spec = _openapi()
    assert spec["openapi"].startswith("3.1")
    try:
        from openapi_spec_validator import validate
    except ImportError:  # pragma: no cover - structural checks when the validator is absent
        assert {"info", "paths", "components"} <= set(spec)
        for path, item in spec["paths"].items():
            assert path.startswith("/")
            for method, op in item.items():
                if method != "parameters":
                    assert "responses" in op, (path, method)
        return
    validate(spec)


def test_openapi_paths_match_the_reference_platform() -> None:
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    documented = {
        (method, path)
        for path, item in _openapi()["paths"].items()
        for method in item
        if method in methods
    }
    assert _app_routes() == documented


def test_uplink_api_md_mentions_every_path() -> None:
    text = (ROOT / "docs" / "uplink-api.md").read_text(encoding="utf-8")
    missing = [path for path in _openapi()["paths"] if path not in text]
    assert not missing, f"docs/uplink-api.md does not mention {missing}"


async def test_a_small_inventory_bomb_is_refused_unexpanded(tmp_path: Path) -> None:
    """1 MB of gzip that would expand to about 1 GB: refused at the bound, not inflated."""
    import zlib

    import psutil

    squeezer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    bomb = b"".join(squeezer.compress(block) for _ in range(1000)) + squeezer.flush()
    assert len(bomb) < 2 << 20
    before = psutil.Process().memory_info().rss
    async with running_platform(tmp_path) as p:
        status, doc, _ = await signed(
            p.session,
            p.url,
            "PUT",
            f"/v1/gateways/{GW}/inventory",
            bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert (status, doc["error"]) == (413, "inventory_too_large")
    assert psutil.Process().memory_info().rss - before < 200 << 20


@pytest.mark.parametrize(
    ("field", "value"), [("seq", 2**63), ("ts", 2**63), ("ts", 2**70), ("seq", -1)]
)
async def test_integers_beyond_64_bits_are_400_not_500(
    tmp_path: Path, field: str, value: int
) -> None:
    import json

    record = {**reading(1), field: value}
    body = gzip.compress(json.dumps({"epoch": "ep1", "records": [record]}).encode())
    async with running_platform(tmp_path) as p:
        status, doc, _ = await signed(
            p.session,
            p.url,
            "POST",
            f"/v1/gateways/{GW}/records",
            body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert (status, doc["error"]) == (400, "invalid_record"), doc
        assert await p.records() == []


@pytest.mark.parametrize("query", ["after_id=99999999999999999999999", "after_id=-9e99"])
async def test_an_after_id_beyond_64_bits_is_400(tmp_path: Path, query: str) -> None:
    async with running_platform(tmp_path) as p:
        status, doc = await p.admin("GET", f"/v1/gateways/{GW}/records?{query}")
        assert status == 400, doc
        assert doc["error"] == "bad_parameter"


@pytest.mark.parametrize("wait", ["nan", "inf", "-inf"])
async def test_a_wait_that_is_not_finite_is_400_not_a_hang(tmp_path: Path, wait: str) -> None:
    async with running_platform(tmp_path) as p:
        status, doc, _ = await asyncio.wait_for(
            signed(p.session, p.url, "GET", f"/v1/gateways/{GW}/commands?wait_s={wait}"), 10
        )
        assert (status, doc["error"]) == (400, "bad_parameter")


async def test_a_replayed_request_is_refused(tmp_path: Path) -> None:
    """A captured long poll replayed would take the gateway's queued door command."""
    from test_uplink_support import KEY_ID, SECRET

    from agent.uplink.wire import signature_headers

    async with running_platform(tmp_path) as p:
        path = f"/v1/gateways/{GW}/commands?wait_s=0"
        captured = signature_headers(
            KEY_ID, SECRET.encode(), "GET", path, int(time.time() * 1000), b""
        )
        async with p.session.get(p.url + path, headers=captured) as resp:
            assert resp.status == 200
        _, queued = await p.admin(
            "POST", f"/v1/gateways/{GW}/commands", {"device": "d", "action": "open"}
        )
        async with p.session.get(p.url + path, headers=captured) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "replayed_request"
        # The real gateway, with a fresh nonce, still gets the command.
        status, doc, _ = await signed(p.session, p.url, "GET", path)
        assert status == 200
        assert [c["id"] for c in doc["commands"]] == [queued["command"]["id"]]


@pytest.mark.parametrize(
    ("nonce", "code"), [(None, "missing_auth"), ("short", "bad_nonce"), ("a b" * 8, "bad_nonce")]
)
async def test_a_missing_or_malformed_nonce_is_refused(
    tmp_path: Path, nonce: str | None, code: str
) -> None:
    def change(headers: dict[str, str]) -> None:
        if nonce is None:
            del headers["X-Nonce"]
        else:
            headers["X-Nonce"] = nonce

    async with running_platform(tmp_path) as p:
        path = f"/v1/gateways/{GW}/commands?wait_s=0"
        status, doc, _ = await signed(p.session, p.url, "GET", path, tamper=change)
        assert (status, doc["error"]) == (401, code)


async def test_a_command_counts_as_delivered_only_once_its_result_arrives(
    tmp_path: Path,
) -> None:
    async with running_platform(tmp_path, redeliver_after_s=0.5) as p:
        _, doc = await p.admin(
            "POST", f"/v1/gateways/{GW}/commands", {"device": "d", "action": "open"}
        )
        command_id = doc["command"]["id"]
        path = f"/v1/gateways/{GW}/commands?wait_s=0"

        async def poll() -> list[str]:
            status, answer, _ = await signed(p.session, p.url, "GET", path)
            assert status == 200
            return [c["id"] for c in answer["commands"]]

        assert await poll() == [command_id]
        assert await poll() == [], "not again at once"
        await asyncio.sleep(0.6)
        assert await poll() == [command_id], "no result came: delivered again"
        result = orjson.dumps({"status": "ok", "result": {}, "ts": int(time.time() * 1000)})
        status, _, _ = await signed(
            p.session,
            p.url,
            "POST",
            f"/v1/gateways/{GW}/commands/{command_id}/result",
            result,
            headers={"Content-Type": "application/json"},
        )
        assert status == 200
        await asyncio.sleep(0.6)
        assert await poll() == []


async def test_records_newest_first_page(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as p:
        status, _, _ = await signed(
            p.session,
            p.url,
            "POST",
            f"/v1/gateways/{GW}/records",
            batch_body("ep1", [reading(i) for i in range(1, 11)]),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert status == 200
        _, doc = await p.admin("GET", f"/v1/gateways/{GW}/records?limit=3&order=newest")
        assert [r["seq"] for r in doc["records"]] == [8, 9, 10]
        _, doc = await p.admin("GET", f"/v1/gateways/{GW}/records?limit=3")
        assert [r["seq"] for r in doc["records"]] == [1, 2, 3]
        status, doc = await p.admin("GET", f"/v1/gateways/{GW}/records?order=sideways")
        assert (status, doc["error"]) == (400, "bad_parameter")
