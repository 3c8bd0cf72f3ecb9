"""The reference platform as a real child process, for end-to-end tests."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from agent_proc import ROOT

GATEWAY = "gw-test"


class PlatformProcess:
    """``edge-agent reference-platform`` on 127.0.0.1, an ephemeral port, a fresh key."""

    def __init__(self, directory: Path, *, token: str | None = None) -> None:
        self.directory = directory
        self.db = directory / "platform.db"
        self.secret = secrets.token_hex(32)
        # token_urlsafe starts with "-" one time in 64: it goes in as --admin-token=VALUE, the
        # one spelling argparse never mistakes for an option.
        self.token = token if token is not None else secrets.token_urlsafe(16)
        (directory / "uplink.key").write_text(self.secret)
        keys = directory / "platform-keys.yaml"
        keys.write_text(yaml.safe_dump({GATEWAY: {"gateway": GATEWAY, "secret": self.secret}}))
        stderr = (directory / "platform.stderr").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "reference-platform",
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(self.db),
                "--keys",
                str(keys),
                "--command-key",
                str(directory / "command.pem"),
                f"--admin-token={self.token}",
                "--durability",
                "normal",
                # Contract mode: every body must match docs/openapi.yaml as well.
                "--contract",
                str(ROOT / "docs" / "openapi.yaml"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        stderr.close()
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            self.proc.wait(10)
            self.proc.stdout.close()
            said = (directory / "platform.stderr").read_text(errors="replace").strip()
            raise RuntimeError(
                f"the reference platform did not start (exit {self.proc.returncode}): {said}"
            )
        self.port = int(json.loads(first)["port"])
        self.url = f"http://127.0.0.1:{self.port}"

    def uplink_config(self, **extra: Any) -> dict[str, Any]:
        http = {
            "url": self.url,
            "key_id": GATEWAY,
            "secret": {"file": str(self.directory / "uplink.key")},
            "command_key_file": str(self.directory / "command.pem.pub"),
            "first_attempt_jitter_s": 0,
            "backoff_cap_s": 1,
            "timeout_s": 5,
        }
        http.update(extra)
        return {"http": http}

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - a loopback URL we built
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return json.loads(answer.read())

    def fault(self, mode: str, **extra: Any) -> None:
        self.admin("POST", "/admin/fault", {"mode": mode, **extra})

    def records(self) -> list[dict[str, Any]]:
        """Everything stored, straight from the platform's database, in seq order."""
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT epoch, seq, body FROM records WHERE gateway = ? ORDER BY epoch, seq",
                (GATEWAY,),
            ).fetchall()
        out = []
        for epoch, seq, body in rows:
            record = json.loads(body)
            record.update(epoch=epoch, seq=seq)
            out.append(record)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
