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
# pip compiles an installed package's modules; an editable install does not.
# Compile ours the same way, so that a node does not spend ~130 ms compiling
# at every start where Python writes no bytecode cache.
"$repo/.venv/bin/python" -m compileall -q "$repo/p2pdm"
