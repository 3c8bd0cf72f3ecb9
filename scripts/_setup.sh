# Shared set-up for scripts/demo and scripts/test: a venv in .venv with the project installed.
# Sourced, not run. Installs Debian packages only when they are missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install PKG... : install the Debian packages that are not there yet (one apt-get update).
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# venv_install EXTRAS : the project (editable) with the given extras into .venv.
venv_install() {
  local extras="$1"
  # A minimal Debian has no Python at all: install it before asking for its version.
  command -v python3 >/dev/null || apt_install python3 python3-venv
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python 3.11 or newer is needed (found: $(python3 --version 2>&1))" >&2
    exit 1
  fi
  # Debian splits ensurepip out of python3: without python3-venv, venv creation fails.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || apt_install python3-venv
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # Skip the install when nothing it depends on changed since the last one (the install is
  # editable: code changes need none).
  local stamp=".venv/.installed-${extras//,/-}"
  local want
  want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1) $(python3 --version 2>&1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import agent' 2>/dev/null; then
    return 0
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"
  echo "$want" > "$stamp"
}
