#!/usr/bin/env bash
# Set up .venv with the test tools and run the whole test suite.
# Extra arguments go to pytest (e.g. -k wire, -x).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup-venv.sh" test
cd "$repo"
exec .venv/bin/python -m pytest "$@"
