#!/usr/bin/env bash
# Install Debian's chromium for the browser tests of the web UI (tests/ui) when it is missing. Idempotent: does
# nothing when /usr/bin/chromium is already there. Playwright drives this browser (its own browser downloads are
# not used).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
echo "installing chromium (Debian package) for the web UI browser tests"
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium
