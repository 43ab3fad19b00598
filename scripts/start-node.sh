#!/usr/bin/env bash
# Set up .venv, create this node's identity on first use, then run the daemon.
# Usage: scripts/start-node.sh [--home DIR] [run options, e.g. --bootstrap HOST:PORT]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup-venv.sh"
p2pdm="$repo/.venv/bin/p2pdm"
home_args=()
if [ "${1:-}" = "--home" ]; then
  home_args=(--home "$2")
  shift 2
fi
"$p2pdm" "${home_args[@]}" id >/dev/null 2>&1 || "$p2pdm" "${home_args[@]}" init >/dev/null
echo "node id: $("$p2pdm" "${home_args[@]}" id)"
exec "$p2pdm" "${home_args[@]}" run "$@"
