"""The ``edge-agent`` command line as a newcomer meets it: help that says what, the defaults and
the exit codes; one way to name the config; and ``web make-cert``."""

from __future__ import annotations

import argparse
import os
import re
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from agent_proc import ROOT
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.cli import build_parser, main
from agent.tools import DEFAULT_CONFIG

HELPED = [
    ["run"],
    ["check-config"],
    ["buffer", "stats"],
    ["buffer", "export"],
    ["buffer", "requeue-poison"],
    ["demo"],
    ["command"],
    ["hash-password"],
    ["web", "make-cert"],
    ["scan", "modbus"],
    ["read", "modbus"],
    ["simulate", "osdp"],
    ["osdp", "install-key"],
    ["reference-platform"],
]


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal's width


def edge_agent(*argv: str) -> subprocess.CompletedProcess[str]:
    """``edge-agent ARGV…`` as a user runs it: a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def help_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", HELPED, ids=" ".join)
def test_every_command_says_what_it_does_and_its_exit_codes(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys)
    assert "exit codes: 0" in " ".join(text.lower().split()), text
    # A description beyond the usage lines.
    body = text.split("\n\n", 1)[1]
    assert len(body.split("options:")[0].split()) >= 8, text


def test_every_option_with_a_default_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    def walk(parser: argparse.ArgumentParser, path: list[str]) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    missing += walk(child, [*path, name])
            elif (
                action.option_strings
                and action.default not in (None, False, [], argparse.SUPPRESS)
                and action.help != argparse.SUPPRESS
            ):
                formatter = parser._get_formatter()
                shown = formatter._expand_help(action) if action.help else ""
                if str(action.default) not in shown and "default" not in shown:
                    missing.append(f"{' '.join(path)} {action.option_strings[0]}")
        return missing

    assert walk(build_parser(), []) == []
    demo = help_text(["demo"], capsys)
    assert re.search(r"--platform-port.*\n?.*default: 8700", demo)


@pytest.mark.parametrize(
    "command",
    [["check-config"], ["buffer", "stats"], ["command", "dev", "act"]],
    ids=" ".join,
)
def test_config_is_named_the_same_way_everywhere(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys)
    assert "--config PATH" in text
    assert f"(default: {DEFAULT_CONFIG})" in text


def test_check_config_reads_the_default_path_or_the_one_given(tmp_path: Path) -> None:
    config = ROOT / "config" / "sample.yaml"
    for argv in (["check-config", str(config)], ["check-config", "--config", str(config)]):
        run = edge_agent(*argv)
        assert run.returncode == 0, run.stderr
    if not DEFAULT_CONFIG.exists():
        run = edge_agent("check-config")
        assert run.returncode == 1
        assert str(DEFAULT_CONFIG) in run.stderr
    with pytest.raises(SystemExit, match="two configs given"):
        main(["check-config", str(config), "--config", str(tmp_path / "other.yaml")])


def test_make_cert_writes_a_key_only_its_owner_reads_and_a_cert_for_the_names(
    tmp_path: Path,
) -> None:
    out = tmp_path / "tls"
    argv = ["web", "make-cert", "--dir", str(out), "--name", "gw-3.local", "--name", "10.0.0.7"]
    run = edge_agent(*argv)
    assert run.returncode == 0, run.stderr
    key_file, cert_file = out / "web-key.pem", out / "web-cert.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gw-3.local" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {
        "10.0.0.7",
        "127.0.0.1",
    }
    # The printed fingerprint is the certificate's, as a browser shows it.
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    assert ":".join(digest[i : i + 2] for i in range(0, 64, 2)) in run.stdout
    assert f"cert_file: {cert_file}" in run.stdout
    assert f"key_file: {key_file}" in run.stdout
    # It loads as a server certificate.
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    # A second run does not replace a key browsers may already trust...
    before = key_file.read_bytes()
    again = edge_agent(*argv)
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert key_file.read_bytes() == before
    # ...unless told to.
    assert main([*argv, "--force"]) == 0
    assert key_file.read_bytes() != before
    assert not list(out.glob("*.tmp"))
    assert os.access(key_file, os.R_OK)
