"""Shared pytest set-up for the test suite."""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_per_test() -> Iterator[None]:
    # A leaked file or socket is reported (ResourceWarning, an error here) when the garbage
    # collector finds it. Collecting after every test pins the report on the test that leaked,
    # instead of whichever test happens to be running when the collector comes by.
    yield
    gc.collect()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs mounted for the test: a real filesystem that fills up, or that a test
    remounts read-only (``mount -o remount,ro``) as the kernel does a failing card."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to mount a tmpfs (as root): {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
