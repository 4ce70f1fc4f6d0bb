#!/usr/bin/env bash
# Make sure `promtool` (Debian's prometheus package) is on PATH: the checks of deploy/
# (alert rules, rule unit tests, dashboard expressions) need it. Idempotent; fails with
# a message saying what to do where it cannot install -- never a silent skip.
set -euo pipefail

if [ -n "${PROMTOOL:-}" ]; then
    if [ -x "$PROMTOOL" ]; then exit 0; fi
    echo "install_promtool: PROMTOOL=$PROMTOOL is not an executable file" >&2
    exit 1
fi
if command -v promtool >/dev/null 2>&1; then exit 0; fi

fail() {
    echo "install_promtool: $1" >&2
    echo "install_promtool: make test checks deploy/ with promtool: install Debian's prometheus" \
         "package (apt-get install prometheus) or put promtool on PATH (or set PROMTOOL=/path)" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "promtool is missing and apt-get is not available"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        fail "promtool is missing and installing it needs root (no password-less sudo)"
    fi
fi

echo "install_promtool: installing Debian's prometheus package for promtool" >&2
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
if ! install; then
    $SUDO apt-get update -q >/dev/null || fail "apt-get update failed"
    install || fail "apt-get install prometheus failed"
fi
command -v promtool >/dev/null 2>&1 || fail "the prometheus package installed no promtool on PATH"
echo "install_promtool: $(promtool --version 2>&1 | head -n 1)" >&2
