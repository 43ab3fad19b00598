"""Coverage-guided fuzzing of every parser that reads bytes from outside.

    .venv/bin/pip install atheris        # needs a C compiler; not a p2pdm dependency
    .venv/bin/python scripts/fuzz_wire.py -max_total_time=300 [corpus_dir]

Each input is fed to `wire.decode`, `envelope.parse_outer`,
`envelope.open_envelope`, the session parser and a responder's first
handshake step. Any exception other than the documented error type of that
parser is a crash that atheris reports with the input that caused it.
Arguments after the script name are libFuzzer's.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from p2pdm import envelope, wire
    from p2pdm.envelope import EnvelopeError
    from p2pdm.handshake import Handshake, HandshakeError, NoiseStatic
    from p2pdm.identity import Identity
    from p2pdm.session import Hello, Session, SessionError

ME = Identity(bytes(32))
STATIC = NoiseStatic.generate(ME)


def one_input(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.decode(data)
    with contextlib.suppress(EnvelopeError):
        envelope.parse_outer(data)
    with contextlib.suppress(EnvelopeError):
        envelope.open_envelope(ME, data)
    session = Session(Hello(4, False, (), "fuzz"))
    session.hello_frame()
    with contextlib.suppress(SessionError):
        session.receive(data)
    with contextlib.suppress(HandshakeError):
        Handshake(ME, initiator=False, static=STATIC).receive(data)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
