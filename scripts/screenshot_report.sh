#!/usr/bin/env bash
# Screenshot RUN_DIR/report.html in headless Chromium (Debian package `chromium`), to look at the
# page as a reader would: scripts/screenshot_report.sh RUN_DIR [OUT.png] [WIDTHxHEIGHT]
set -euo pipefail
run_dir="$1"
out="${2:-$run_dir/report.png}"
size="${3:-1200x3000}"
page="$(cd "$run_dir" && pwd)/report.html"
[ -f "$page" ] || { echo "screenshot_report: $page does not exist (secagg report $run_dir)" >&2; exit 3; }
command -v chromium >/dev/null || { echo "screenshot_report: install chromium (apt-get install chromium)" >&2; exit 3; }
chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --no-first-run --disable-sync --hide-scrollbars \
  --window-size="${size/x/,}" --screenshot="$(realpath -m "$out")" "file://$page" 2>/dev/null
echo "$out"
