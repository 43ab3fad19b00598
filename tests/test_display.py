from __future__ import annotations

import pytest

from p2pdm.display import visible


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, [bold] and all", "plain text, [bold] and all"),
        ("two\nlines\tand a tab", "two\nlines\tand a tab"),
        ("\x1b]2;PWNED\x1b\\", "␛]2;PWNED␛\\"),
        ("\x1b[5mblink\x1b[0m", "␛[5mblink␛[0m"),
        ("bell\x07 back\x08 cr\r", "bell␇ back␈ cr␍"),
        ("c1 \x9b31m csi", "c1 \ufffd31m csi"),
        ("del\x7f", "del␡"),
        ("abc\u202edcba", "abc\ufffddcba"),
        ("isolate\u2066x\u2069", "isolate\ufffdx\ufffd"),
    ],
)
def test_control_characters_become_visible_symbols(text: str, shown: str) -> None:
    assert visible(text) == shown


def test_nothing_that_acts_on_a_terminal_survives() -> None:
    every = "".join(chr(c) for c in range(0x2100))
    out = visible(every)
    assert not any(0x00 <= ord(c) < 0x20 and c not in "\n\t" for c in out)
    assert not any(0x7F <= ord(c) <= 0x9F for c in out)
