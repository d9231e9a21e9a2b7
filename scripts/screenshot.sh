#!/usr/bin/env bash
# Takes a screenshot of a running verve's status page (GET /) with headless Chromium.
#
#   scripts/screenshot.sh                                  # http://127.0.0.1:8080/ -> docs/status-page.png
#   scripts/screenshot.sh http://127.0.0.1:9000/ /tmp/verve.png
#   WIDTH=1024 HEIGHT=1400 scripts/screenshot.sh
#
# Needs Chromium (Debian: apt-get install chromium; scripts/test.sh installs it), or another
# Chromium-based browser named by $CHROMIUM. The page is rendered as a person's browser
# renders it, script and all; the picture is WIDTH x HEIGHT pixels (1280 x 1240).
set -euo pipefail

say() {
  echo "scripts/screenshot.sh: $*" >&2
}

url=${1:-http://127.0.0.1:8080/}
out=${2:-docs/status-page.png}
width=${WIDTH:-1280}
height=${HEIGHT:-1240}

browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
  for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then
      browser=$candidate
      break
    fi
  done
fi
if [ -z "$browser" ]; then
  say "no chromium found: apt-get install chromium (or set CHROMIUM)"
  exit 1
fi

case "$out" in
  /*) ;;
  *) out="$PWD/$out" ;;
esac
mkdir -p "$(dirname "$out")"
rm -f "$out"

# A profile of its own, so that a running browser and earlier runs change nothing.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
args=(
  --headless --disable-gpu --no-first-run --no-default-browser-check
  --disable-dev-shm-usage --hide-scrollbars --force-device-scale-factor=1
  --user-data-dir="$profile" --window-size="$width,$height" --screenshot="$out"
)
# Chromium refuses to run as root with its sandbox.
if [ "$(id -u)" -eq 0 ]; then
  args+=(--no-sandbox)
fi

if ! timeout 60 "$browser" "${args[@]}" "$url" >"$profile/out.log" 2>&1 || [ ! -s "$out" ]; then
  say "$browser did not take the screenshot of $url:"
  tail -n 20 "$profile/out.log" >&2
  exit 1
fi
say "$url -> $out (${width}x${height})"
