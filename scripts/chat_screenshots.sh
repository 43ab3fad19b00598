#!/usr/bin/env bash
# Regenerate the chat app screenshots in docs/screenshots (SVG, 80x24) by
# running the chat app test against two real nodes on 127.0.0.1.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup-venv.sh" test
cd "$repo"
P2PDM_SCREENSHOT_DIR="$repo/docs/screenshots" \
    exec .venv/bin/python -m pytest -q tests/test_chat_app.py -k "request_to_read or edits_reactions"
