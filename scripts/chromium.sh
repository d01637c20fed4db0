#!/usr/bin/env bash
# Headless Chromium for the console's browser tests: Debian's `chromium` and `chromium-driver`
# packages, installed with apt-get when missing (as root), never a browser downloaded by a
# test tool. Prints the two paths, browser then driver, one per line.
#
#   scripts/chromium.sh          install if needed, print the paths
#   scripts/chromium.sh check    print the paths, exit 1 if either is missing
set -euo pipefail

find_browser() {
    command -v chromium || command -v chromium-browser || true
}

find_driver() {
    command -v chromedriver || ls /usr/lib/chromium/chromedriver 2>/dev/null || true
}

browser=$(find_browser)
driver=$(find_driver)
if [[ -z "$browser" || -z "$driver" ]]; then
    if [[ "${1:-}" == "check" ]]; then
        echo "chromium.sh: chromium or chromium-driver is missing" >&2
        exit 1
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "chromium.sh: installing Debian's chromium and chromium-driver" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
            apt-get update -q >/dev/null
            apt-get install -y -q chromium chromium-driver >/dev/null
        }
        browser=$(find_browser)
        driver=$(find_driver)
    else
        echo "chromium.sh: install Debian's chromium and chromium-driver (as root)" >&2
        exit 1
    fi
fi
echo "$browser"
echo "$driver"
