#!/usr/bin/env bash
# Installs everything the engine and its tests need on a fresh Debian machine, from this repository's own
# files: the OS packages (a C compiler for the Cython extension, Chromium for the dashboard's browser test)
# and the Python package with its development extras (which builds engine._verify), at the versions in
# constraints.txt. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "install: WARNING: missing ${need_apt[*]} and cannot apt-get here; the browser test will say so" >&2
  fi
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# constraints.txt pins the exact versions the suite last passed with (scripts/constraints.py writes it), so a fresh
# machine runs what was tested; pyproject.toml's floors say what the code needs at least
python3 -m pip install -q -c constraints.txt -e '.[dev]'
python3 -m engine info
