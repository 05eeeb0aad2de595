#!/usr/bin/env bash
# The lab's extra installs (called by scripts/setup.sh): the dashboard's chart library from npm into
# server/static/vendor (not kept in git), and Debian's chromium for the Playwright browser test
# (SKIP_CHROMIUM=1 leaves it out, as the Docker image does).
set -euo pipefail
cd "$(dirname "$0")/.."

UPLOT_VERSION=1.6.32
VENDOR=server/static/vendor
if [ ! -f "$VENDOR/uPlot.iife.min.js" ] || ! grep -q "$UPLOT_VERSION" "$VENDOR/VERSION" 2>/dev/null; then
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null && tar xzf uplot-*.tgz)
    mkdir -p "$VENDOR"
    cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$VENDOR/"
    echo "uplot $UPLOT_VERSION" > "$VENDOR/VERSION"
    rm -rf "$tmp"
fi

if [ -z "${SKIP_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        fi
    else
        echo "setup: the browser test needs Debian's chromium: run 'apt-get install chromium' as root" >&2
    fi
fi
