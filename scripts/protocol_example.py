"""Print a worked example of every p2pdm format, in hex, for docs/PROTOCOL.md.

    .venv/bin/python scripts/protocol_example.py

Keys come from fixed seeds and the handshake's randomness from a fixed
stream, so identities, frames and handshake messages print the same every
run. The sealed box inside an envelope draws its own ephemeral key from
libsodium (it takes no RNG), so that ciphertext and the message id differ
each run; the script opens what it printed to show it is valid.
"""

from __future__ import annotations

import hashlib
import textwrap

from p2pdm import envelope, wire
from p2pdm.envelope import MessageKind
from p2pdm.handshake import Handshake, NoiseStatic
from p2pdm.identity import Identity, safety_number


def fixed_rng(label: bytes) -> object:
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.blake2b(label + counter.to_bytes(4, "big"), digest_size=n).digest()

    return rng


def show(title: str, data: bytes) -> None:
    print(f"{title} ({len(data)} bytes):")
    print(textwrap.indent("\n".join(textwrap.wrap(data.hex(), 64)), "    "))


def main() -> None:
    alice = Identity(bytes(range(32)))
    bob = Identity(bytes(range(32, 64)))
    print("## Identities")
    show("alice seed", alice.seed)
    show("alice Ed25519 public key", alice.node_id.public_key)
    print(f"alice node id: {alice.node_id}")
    print(f"bob node id:   {bob.node_id}")
    print(f"safety number: {safety_number(alice.node_id, bob.node_id)}")
    print()

    print("## Handshake (alice dials bob)")
    rng_a, rng_b = fixed_rng(b"alice"), fixed_rng(b"bob")
    static_a = NoiseStatic.generate(alice, rng_a)  # type: ignore[arg-type]
    static_b = NoiseStatic.generate(bob, rng_b)  # type: ignore[arg-type]
    a = Handshake(alice, initiator=True, static=static_a, rng=rng_a)  # type: ignore[arg-type]
    b = Handshake(bob, initiator=False, static=static_b, rng=rng_b)  # type: ignore[arg-type]
    msg1 = a.start()
    msg2 = b.receive(msg1)
    assert msg2 is not None
    msg3 = a.receive(msg2)
    assert msg3 is not None
    b.receive(msg3)
    show("frame 1 (length + msg1: e, payload {versions: [1]})", wire.encode_frame(msg1))
    show("frame 2 (length + msg2: e, ee, s, es, payload)", wire.encode_frame(msg2))
    show("frame 3 (length + msg3: s, se, payload)", wire.encode_frame(msg3))
    show("handshake hash", a.result.handshake_hash)
    hello = wire.encode(
        {
            "t": 1,
            "window": 256,
            "wbytes": 1 << 20,
            "relay": True,
            "features": [],
            "agent": "p2pdm/0.1.0",
        }
    )
    show("session HELLO (CBOR)", hello)
    show(
        "first transport frame (alice's HELLO, encrypted)",
        wire.encode_frame(a.result.cipher.encrypt(hello)),
    )
    print()

    print("## Envelope (alice to bob)")
    now = 1_700_000_000_000
    sealed = envelope.seal(
        alice,
        bob.node_id,
        MessageKind.TEXT,
        "hi bob",
        timestamp_ms=now,
        expires_ms=now + 7 * 86_400_000,
    )
    msg = envelope.open_envelope(bob, sealed, now_ms=now)
    signed = wire.encode(
        {
            "from": alice.node_id.public_key,
            "to": bob.node_id.public_key,
            "ts": now,
            "exp": msg.expires_ms,
            "kind": 1,
            "body": "hi bob",
        }
    )
    show("signed message (inner 'msg', deterministic)", signed)
    show("signature over 'p2pdm envelope v1\\0' + msg", alice.sign(envelope.SIGN_CONTEXT + signed))
    show("outer envelope (ciphertext differs every run)", sealed)
    print(f"message id: {msg.message_id.hex()}")
    push = wire.encode({"t": 2, "n": 0, "env": sealed})
    show("session PUSH carrying it (CBOR, before encryption)", push[:40] + b"...")
    print(f"opened by bob: from {msg.sender.short()}..., kind {msg.kind}, body {msg.body!r}")


if __name__ == "__main__":
    main()
