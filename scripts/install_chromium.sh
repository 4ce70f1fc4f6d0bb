#!/usr/bin/env bash
# Make sure Debian's `chromium` is installed: the console's browser tests
# (tests/browser) drive it with Playwright through its executable path -- Playwright
# never downloads a browser of its own. Idempotent; fails with a message saying what
# to do where it cannot install -- never a silent skip.
set -euo pipefail

if [ -n "${CHROMIUM:-}" ]; then
    if [ -x "$CHROMIUM" ]; then exit 0; fi
    echo "install_chromium: CHROMIUM=$CHROMIUM is not an executable file" >&2
    exit 1
fi
if [ -x /usr/bin/chromium ]; then exit 0; fi

fail() {
    echo "install_chromium: $1" >&2
    echo "install_chromium: make test runs the console's browser tests in a headless" \
         "Chromium: install Debian's chromium package (apt-get install chromium) or set" \
         "CHROMIUM=/path/to/chromium" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "chromium is missing and apt-get is not available"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        fail "chromium is missing and installing it needs root (no password-less sudo)"
    fi
fi

echo "install_chromium: installing Debian's chromium package (once; a few minutes)" >&2
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null; }
if ! install; then
    $SUDO apt-get update -q >/dev/null || fail "apt-get update failed"
    install || fail "apt-get install chromium failed"
fi
[ -x /usr/bin/chromium ] || fail "the chromium package installed no /usr/bin/chromium"
echo "install_chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)" >&2
