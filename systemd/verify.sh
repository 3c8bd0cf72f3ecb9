#!/bin/sh
# Check a unit file the way CI does: `systemd-analyze verify` must print nothing at all.
# The tool exits 0 on warnings such as unknown keys ("Unknown key 'WatchdogSecs' ... ignoring"),
# so its exit status alone would let a typo through; any output fails here.
#
# Usage: bash systemd/verify.sh [UNIT_FILE]     (default: edge-agent.service next to this script)
# Silent with exit 0 when the unit is clean; prints the findings and exits 1 otherwise;
# exits 2 when it cannot run (systemd-analyze missing, unreadable file).
#
# verify also checks that every Exec*= binary exists and is executable on THIS machine.
# ExecStart= names the installed agent. Where that file exists (a gateway, or CI after installing
# the agent as README.md describes) the unit is verified as it is. Where it does not, the unit is
# verified through a copy that differs in exactly one place, the ExecStart= binary, which points
# at a stub executable; every other line, /bin/kill in ExecReload= included, is verified verbatim.
# The only thing left unchecked is then "is the agent installed here", a property of the machine.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
unit=${1:-"$here/edge-agent.service"}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify.sh: systemd-analyze not found (Debian: apt-get install systemd)" >&2
    exit 2
fi
if [ ! -r "$unit" ]; then
    echo "verify.sh: cannot read $unit" >&2
    exit 2
fi

name=$(basename "$unit")
if [ "$(grep -c '^ExecStart=' "$unit" || true)" -ne 1 ]; then
    echo "verify.sh: $name must have exactly one ExecStart= line" >&2
    exit 1
fi
# First word after ExecStart= and its optional prefixes (-, @, :, +, !).
binary=$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$unit")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

target=$unit
if [ ! -x "$binary" ]; then
    mkdir "$tmp/bin" "$tmp/unit"
    stub="$tmp/bin/$(basename "$binary")"
    printf '#!/bin/sh\nexit 0\n' >"$stub"
    chmod 755 "$stub"
    target="$tmp/unit/$name"
    # Literal (not regex) replacement, in the ExecStart= line only.
    awk -v old="$binary" -v new="$stub" '
        /^ExecStart=/ { i = index($0, old); $0 = substr($0, 1, i - 1) new substr($0, i + length(old)) }
        { print }
    ' "$unit" >"$target"
    changed=$(diff "$unit" "$target" | grep -c '^>' || true)
    if [ "$changed" -ne 1 ]; then
        echo "verify.sh: internal error, the stub substitution changed $changed lines" >&2
        exit 1
    fi
fi

status=0
output=$(systemd-analyze verify "$target" 2>&1) || status=$?
if [ -n "$output" ] || [ "$status" -ne 0 ]; then
    # Findings about the copy name the copy; point them at the real file (same line numbers).
    printf '%s\n' "$output" | awk -v old="$target" -v new="$unit" '{
        out = ""
        while ((i = index($0, old)) > 0) { out = out substr($0, 1, i - 1) new; $0 = substr($0, i + length(old)) }
        print out $0
    }' >&2
    if [ "$target" != "$unit" ]; then
        echo "(checked a copy of $unit whose ExecStart= runs a stub instead of $binary," \
            "which is not installed here)" >&2
    fi
    echo "verify.sh: systemd-analyze verify $name exited $status with the output above" >&2
    exit 1
fi
