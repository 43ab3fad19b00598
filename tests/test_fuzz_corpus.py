"""Every committed fuzz input replays through its harness without a crash.

The corpus holds the seeds (real messages made by the real encoders) and
every input fuzzing ever found to crash, so each such crash stays a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz_targets import TARGETS, seed_inputs

CORPUS = Path(__file__).parent / "corpus"
# Targets whose seeds hold sealed envelopes.
SEALED = {"wire", "session"}


def _inputs() -> list[tuple[str, Path]]:
    return sorted((d.name, f) for d in CORPUS.iterdir() if d.is_dir() for f in d.iterdir())


def test_every_target_has_a_corpus_and_every_corpus_a_target() -> None:
    assert sorted(d.name for d in CORPUS.iterdir() if d.is_dir()) == sorted(TARGETS)


def test_the_committed_seeds_are_what_the_encoders_make() -> None:
    # A changed encoder or harness input format must come with new seeds
    # (scripts/fuzz.py --write-seeds), or the corpus would test old bytes.
    # Sealed boxes differ per run (a fresh ephemeral key each), so seeds
    # holding envelopes are compared by name only.
    for target, seeds in seed_inputs().items():
        committed = {f.name.removeprefix("seed-"): f for f in (CORPUS / target).glob("seed-*")}
        assert sorted(committed) == sorted(seeds), target
        if target not in SEALED:
            for label, data in seeds.items():
                assert committed[label].read_bytes() == data, f"{target}/seed-{label}"


@pytest.mark.parametrize(("target", "path"), _inputs(), ids=[f"{t}/{p.name}" for t, p in _inputs()])
def test_corpus_input_does_not_crash(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())
