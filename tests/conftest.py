"""Shared pytest set-up for the test suite."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_per_test() -> Iterator[None]:
    # A leaked file or socket is reported (ResourceWarning, an error here) when the garbage
    # collector finds it. Collecting after every test pins the report on the test that leaked,
    # instead of whichever test happens to be running when the collector comes by.
    yield
    gc.collect()
