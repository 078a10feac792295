#!/bin/sh
# The browser the UI test (tests/test_ui.py) drives: Debian's Chromium, by its path. Playwright's own
# browser download needs its CDN; the Debian package comes from the package mirror like the rest.
set -e
CHROMIUM="${MOLTING_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "tests/install_browser.sh: no $CHROMIUM and no apt-get here: install Chromium and set MOLTING_CHROMIUM to it" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
"$CHROMIUM" --version
