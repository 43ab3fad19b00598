"""A short chaos schedule between five hosts in network namespaces."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .chaos import run_chaos

if TYPE_CHECKING:
    from pathlib import Path

    from .netns import NetnsLab


def test_every_acknowledged_copy_arrives_once_through_cuts_restarts_and_skew(
    tmp_path: Path, lab_factory: type[NetnsLab]
) -> None:
    with lab_factory(5) as lab:
        result = run_chaos(lab, tmp_path, seed=3, steps=40)
    assert result.ok, result.summary() | {"missing": result.missing[:10]}
    # The schedule did what it says: faults of every kind, both kinds of text.
    assert set(result.faults) >= {"cut", "heal", "restart", "kill"}, result.faults
    assert result.sends["group"] > 0
    assert result.sends["1:1"] > 0
    assert result.expected == result.delivered > 0
