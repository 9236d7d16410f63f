#!/usr/bin/env bash
# Installs everything the engine and its tests need on a fresh Debian machine, from this repository's own
# files: the OS packages (a C compiler for the Cython extension, Chromium for the dashboard's browser test,
# Node.js for the second-language device client, promtool for the alert-rule tests) and the Python package
# with its development extras (which builds engine._verify), at the versions in constraints.txt. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
# promtool ships only in the prometheus package, whose server we do not want running (see below)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install: apt-get install ${need_apt[*]}"
    apt-get update -qq
    # policy-rc.d (exit 101) keeps the packages' daemons (prometheus) from starting during the install
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
      || { [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [[ " ${need_apt[*]} " == *" prometheus "* ]]; then
      # only promtool is wanted: the package enables its server at boot; keep it off (and stop it if it ran)
      if command -v systemctl >/dev/null 2>&1; then
        if [ -d /run/systemd/system ]; then
          systemctl disable --now prometheus.service >/dev/null 2>&1 || true
        else
          systemctl disable prometheus.service >/dev/null 2>&1 || true
        fi
      fi
      if [ -x /etc/init.d/prometheus ] && command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d prometheus disable >/dev/null 2>&1 || true
      fi
    fi
  else
    echo "install: WARNING: missing ${need_apt[*]} and cannot apt-get here; the tests that need them skip and say so" >&2
  fi
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# constraints.txt pins the exact versions the suite last passed with (scripts/constraints.py writes it), so a fresh
# machine runs what was tested; pyproject.toml's floors say what the code needs at least
python3 -m pip install -q -c constraints.txt -e '.[dev]'
python3 -m engine info
