"""Text from peers, made safe to show on a terminal.

A message is any text its sender chose. Printed as is, an ESC or CSI could
retitle the window, move the cursor to draw fake lines ("✓✓ read"), or on
some terminals write the clipboard; bidirectional overrides can make text
read differently from what it is. Shown through `visible`, they are inert
symbols. JSON output needs none of this: it escapes control characters.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, bidirectional embeddings,
# overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _symbol(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: ␛, ␇, ...
    if code == 0x7F:
        return "\u2421"  # ␡
    return "\ufffd"


def visible(text: str) -> str:
    """`text` with every character that acts on a terminal replaced by a visible one."""
    return _UNSAFE.sub(_symbol, text)
