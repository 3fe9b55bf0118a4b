#!/usr/bin/env bash
# Install headless Chromium and its WebDriver from Debian's packages for the lab's browser tests
# (tests/lab). Idempotent: returns at once when both are already there. Never downloads a
# browser from anywhere but the distribution's package archive.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install_browser.sh: need root (or sudo) to apt-get install chromium" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
echo "install_browser.sh: $(chromium --version 2>/dev/null || echo chromium installed)"
