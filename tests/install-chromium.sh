#!/usr/bin/env bash
# The browser tests (tests/test_browser.py) drive a real Chromium. This installs Debian's chromium
# package when no Chromium or Chrome is found (as root, or through sudo); it does nothing when one
# is, or when CHROMIUM names one. Playwright's own browser download is never used.
set -euo pipefail
for browser in "${CHROMIUM:-}" chromium chromium-browser google-chrome \
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"; do
    if [ -n "$browser" ] && command -v "$browser" >/dev/null 2>&1; then
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no Chromium found: install Chromium or Chrome, or set CHROMIUM=/path/to/it" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "Installing Debian's chromium for the browser tests" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
