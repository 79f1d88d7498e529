#!/usr/bin/env bash
# Regenerate the protobuf code into a temporary directory and fail on any difference from the
# committed secagg/transport/_gen. Usage: scripts/check_proto.sh [python]  (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PY" scripts/gen_proto.py --out "$tmp/_gen" >/dev/null
if ! diff -r -x __pycache__ "$tmp/_gen" secagg/transport/_gen; then
    echo "check_proto: secagg/transport/_gen is stale; run: $PY scripts/gen_proto.py" >&2
    exit 1
fi
echo "check_proto: generated code is up to date"
