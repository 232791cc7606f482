#!/bin/sh
# The headless browser of tests/test_serve_browser.py: Debian's chromium and chromium-driver, and
# curl for tests/test_serve.py (it runs the README's curl example). Called by `make test`. Installs them with apt-get when they are missing and this runs as root;
# otherwise says what to install (the browser test then fails with the same advice).
set -e
if command -v chromedriver >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 && \
   { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium chromium-driver curl
    exit 0
fi
echo "tools/install_browser.sh: chromium, chromedriver or curl is missing; install them with" >&2
echo "  sudo apt-get install -y chromium chromium-driver curl" >&2
echo "(the browser test tests/test_serve_browser.py fails without them)" >&2
