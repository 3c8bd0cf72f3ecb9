"""The BCD helpers both Chinese meter codecs stand on, against a nibble-by-nibble definition."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.driver.bcd import from_bcd, is_bcd, sum8, to_bcd


def nibbles_decimal(data: bytes) -> bool:
    return all(b >> 4 <= 9 and b & 0x0F <= 9 for b in data)


@given(
    st.integers(1, 8).flatmap(lambda size: st.tuples(st.integers(0, 100**size - 1), st.just(size)))
)
def test_round_trip(case: tuple[int, int]) -> None:
    value, size = case
    raw = to_bcd(value, size)
    assert len(raw) == size
    assert is_bcd(raw)
    assert from_bcd(raw) == value


@given(st.binary(max_size=12))
def test_is_bcd_and_from_bcd_agree_with_the_nibbles(data: bytes) -> None:
    assert is_bcd(data) == nibbles_decimal(data)
    if nibbles_decimal(data):
        # Low byte first: the last byte holds the highest digits.
        assert from_bcd(data) == int("".join(f"{b:02x}" for b in reversed(data)) or "0")
    else:
        with pytest.raises(ValueError, match="not BCD"):
            from_bcd(data)


def test_known_values() -> None:
    assert from_bcd(bytes.fromhex("78563412")) == 12345678
    assert to_bcd(12345678, 4) == bytes.fromhex("78563412")
    assert from_bcd(b"") == 0
    assert not is_bcd(b"\x1a")
    assert not is_bcd(b"\xa1")
    assert sum8(b"\xff\x02") == 0x01
    with pytest.raises(ValueError, match="does not fit"):
        to_bcd(100, 1)
