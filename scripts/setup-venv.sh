#!/usr/bin/env bash
# Create .venv beside the repo (once) and install p2pdm into it, editable.
# Usage: scripts/setup-venv.sh [EXTRA]   e.g. "test" for the test tools.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [ ! -x "$repo/.venv/bin/python" ]; then
  "$python" -m venv "$repo/.venv"
  "$repo/.venv/bin/python" -m pip install -q --upgrade pip
fi
spec="$repo"
[ -n "${1:-}" ] && spec="$repo[$1]"
"$repo/.venv/bin/python" -m pip install -q -e "$spec"
