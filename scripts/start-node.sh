#!/usr/bin/env bash
# Set up .venv, create this node's identity on first use, and show its id.
# Arguments go before the subcommand, e.g. --home DIR.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup-venv.sh"
p2pdm="$repo/.venv/bin/p2pdm"
"$p2pdm" "$@" id >/dev/null 2>&1 || "$p2pdm" "$@" init >/dev/null
echo "node id: $("$p2pdm" "$@" id)"
