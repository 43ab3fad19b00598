"""Cost of every crypto step on this machine, and the per-core message ceiling.

    .venv/bin/python scripts/bench_crypto.py [--seconds S]

Prints µs/op and ops/s for sign, verify, seal, open, encode, decode and one
full handshake (both sides), then the derived ceiling in messages/s per core
for a sender (seal+sign+encode) and a receiver (open+verify+decode), and the
time the strict decoder takes to refuse each item of the hostile corpus.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from typing import TYPE_CHECKING

from p2pdm import envelope, wire
from p2pdm.envelope import MessageKind
from p2pdm.handshake import Handshake, NoiseStatic
from p2pdm.identity import Identity
from scripts import figures

if TYPE_CHECKING:
    from collections.abc import Callable

NOW_MS = 1_700_000_000_000
EXP_MS = NOW_MS + 86_400_000
TEXT = "Are we still on for the hackspace tonight? I'll bring the soldering iron."


def per_op(fn: Callable[[], object], seconds: float) -> float:
    """Median µs per call over five timed rounds of about seconds/5 each."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.05:  # calibrate
        fn()
        n += 1
    batch = max(1, int(n * (seconds / 5) / 0.05))
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        rounds.append((time.perf_counter() - t0) / batch * 1e6)
    return sorted(rounds)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per operation")
    figures.add_option(parser)
    args = parser.parse_args()

    alice, bob = Identity.generate(), Identity.generate()
    sealed = envelope.seal(
        alice, bob.node_id, MessageKind.TEXT, TEXT, timestamp_ms=NOW_MS, expires_ms=EXP_MS
    )
    signature = alice.sign(b"x" * 200)
    doc = wire.decode(sealed)
    static_a, static_b = NoiseStatic.generate(alice), NoiseStatic.generate(bob)

    def handshake() -> None:
        a = Handshake(alice, initiator=True, static=static_a)
        b = Handshake(bob, initiator=False, static=static_b)
        msg2 = b.receive(a.start())
        assert msg2 is not None
        msg3 = a.receive(msg2)
        assert msg3 is not None
        b.receive(msg3)

    def seal() -> None:
        envelope.seal(
            alice, bob.node_id, MessageKind.TEXT, TEXT, timestamp_ms=NOW_MS, expires_ms=EXP_MS
        )

    # label -> (figure name, operation)
    ops: dict[str, tuple[str, Callable[[], object]]] = {
        "sign (200 B)": ("sign_us", lambda: alice.sign(b"x" * 200)),
        "verify (200 B)": ("verify_us", lambda: alice.node_id.verify(b"x" * 200, signature)),
        "encode envelope": ("encode_envelope_us", lambda: wire.encode(doc)),
        "decode envelope": ("decode_envelope_us", lambda: wire.decode(sealed)),
        "seal+sign (envelope.seal)": ("seal_us", seal),
        "open+verify+decode (open_envelope)": (
            "open_us",
            lambda: envelope.open_envelope(bob, sealed),
        ),
        "handshake, both sides": ("handshake_us", handshake),
    }
    print(
        f"p2pdm crypto benchmark on {platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}; envelope {len(sealed)} B, text {len(TEXT)} chars"
    )
    print(f"{'operation':<38}{'µs/op':>10}{'ops/s':>12}")
    results: figures.Figures = {}
    for label, (name, fn) in ops.items():
        us = per_op(fn, args.seconds)
        results[name] = us
        print(f"{label:<38}{us:>10.1f}{1e6 / us:>12,.0f}")
    send, recv = float(results["seal_us"]), float(results["open_us"])
    results["sender_ceiling_per_s"] = 1e6 / send
    results["receiver_ceiling_per_s"] = 1e6 / recv
    print()
    print(f"ceiling, sender:   {1e6 / send:>8,.0f} messages/s per core (seal+sign+encode)")
    print(f"ceiling, receiver: {1e6 / recv:>8,.0f} messages/s per core (open+verify+decode)")

    from tests.hostile_cbor import HOSTILE  # the same corpus the tests refuse

    worst_name, worst = "", 0.0
    for name, data in HOSTILE.items():
        t0 = time.perf_counter()
        try:
            wire.decode(data)
        except wire.WireError:
            pass
        else:
            raise SystemExit(f"hostile item accepted: {name}")
        elapsed = (time.perf_counter() - t0) * 1e3
        if elapsed > worst:
            worst_name, worst = name, elapsed
    print(f"hostile corpus: {len(HOSTILE)} items refused, slowest {worst:.2f} ms ({worst_name})")
    results["hostile_slowest_ms"] = worst
    figures.write(args.json, results)


if __name__ == "__main__":
    main()
