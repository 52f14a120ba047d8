#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/test_ui_browser.py). A no-op, needing no root,
# once it is there: at /usr/bin/chromium, or wherever ASSISTANT_CHROMIUM points.
set -euo pipefail

CHROMIUM="${ASSISTANT_CHROMIUM:-/usr/bin/chromium}"
[[ -x "$CHROMIUM" ]] && exit 0

command -v apt-get >/dev/null || { echo "install-browser: $CHROMIUM is missing and apt-get is not available" >&2; exit 1; }
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || {
        echo "install-browser: $CHROMIUM is missing; installing it needs root (or sudo), or set ASSISTANT_CHROMIUM" >&2
        exit 1
    }
    SUDO=sudo
fi
echo "==> installing chromium (Debian package) for the browser tests"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
[[ -x "$CHROMIUM" ]] || { echo "install-browser: chromium installed but $CHROMIUM is not there" >&2; exit 1; }
