from __future__ import annotations

import pytest

from p2pdm import envelope, wire
from p2pdm.envelope import EnvelopeError, MessageKind
from p2pdm.identity import Identity

NOW = 1_700_000_000_000
LATER = NOW + 7 * 24 * 3600 * 1000


def seal_text(sender: Identity, to: Identity, text: str = "hello bob") -> bytes:
    return envelope.seal(
        sender, to.node_id, MessageKind.TEXT, text, timestamp_ms=NOW, expires_ms=LATER
    )


def test_round_trip(alice: Identity, bob: Identity) -> None:
    sealed = seal_text(alice, bob)
    msg = envelope.open_envelope(bob, sealed, now_ms=NOW)
    assert msg.sender == alice.node_id
    assert msg.recipient == bob.node_id
    assert msg.body == "hello bob"
    assert msg.kind == MessageKind.TEXT
    assert msg.timestamp_ms == NOW
    assert msg.expires_ms == LATER
    outer = envelope.parse_outer(sealed)
    assert outer.message_id == msg.message_id
    assert outer.recipient == bob.node_id


def test_the_outer_view_given_with_a_sealed_envelope_is_what_parsing_reads(
    alice: Identity, bob: Identity
) -> None:
    sealed, outer = envelope.seal_with_outer(
        alice, bob.node_id, MessageKind.TEXT, "hi", timestamp_ms=NOW, expires_ms=LATER
    )
    assert outer == envelope.parse_outer(sealed)
    assert envelope.open_envelope(bob, sealed, outer=outer).body == "hi"


def test_relay_view_reveals_neither_sender_nor_text(alice: Identity, bob: Identity) -> None:
    sealed = seal_text(alice, bob, "a secret plan")
    assert b"a secret plan" not in sealed
    assert alice.node_id.public_key not in sealed
    assert set(wire.as_map(wire.decode(sealed), "e", required={"v", "to", "exp", "ct", "id"}))


def test_same_message_sealed_twice_gets_distinct_ids(alice: Identity, bob: Identity) -> None:
    # Fresh ephemeral keys: identical texts are still distinct messages.
    ids = {envelope.parse_outer(seal_text(alice, bob)).message_id for _ in range(3)}
    assert len(ids) == 3


def test_receipt_kind(alice: Identity, bob: Identity) -> None:
    mid = envelope.parse_outer(seal_text(alice, bob)).message_id
    sealed = envelope.seal(
        bob, alice.node_id, MessageKind.RECEIPT, {"ids": [mid]}, timestamp_ms=NOW, expires_ms=LATER
    )
    assert envelope.open_envelope(alice, sealed).body == {"ids": [mid]}
    with pytest.raises(ValueError, match="32-byte message ids"):
        envelope.seal(
            bob,
            alice.node_id,
            MessageKind.RECEIPT,
            {"ids": [b"x"]},
            timestamp_ms=NOW,
            expires_ms=LATER,
        )


def test_every_flipped_bit_is_rejected(alice: Identity, bob: Identity) -> None:
    sealed = seal_text(alice, bob, "hi")
    for i in range(len(sealed)):
        for bit in range(8):
            corrupt = bytearray(sealed)
            corrupt[i] ^= 1 << bit
            with pytest.raises(EnvelopeError):
                envelope.open_envelope(bob, bytes(corrupt))


def test_every_truncation_is_rejected(alice: Identity, bob: Identity) -> None:
    sealed = seal_text(alice, bob, "hi")
    for cut in range(len(sealed)):
        with pytest.raises(EnvelopeError):
            envelope.open_envelope(bob, sealed[:cut])
    with pytest.raises(EnvelopeError, match="trailing"):
        envelope.open_envelope(bob, sealed + b"\x00")


def test_reseal_to_third_party_is_rejected(alice: Identity, bob: Identity) -> None:
    """B opens A's signed message and re-seals it to C: C must refuse it."""
    import nacl.public

    carol = Identity.generate()
    sealed = seal_text(alice, bob, "for bob only")
    outer = envelope.parse_outer(sealed)
    inner = nacl.public.SealedBox(nacl.public.PrivateKey(bob.x25519_private_key)).decrypt(
        outer.ciphertext
    )
    ct = nacl.public.SealedBox(nacl.public.PublicKey(carol.node_id.x25519_public_key())).encrypt(
        inner
    )
    to = carol.node_id.public_key
    forged = wire.encode(
        {
            "v": 1,
            "to": to,
            "exp": outer.expires_ms,
            "ct": ct,
            "id": envelope.compute_message_id(1, to, outer.expires_ms, ct),
        }
    )
    with pytest.raises(EnvelopeError, match="signed for another recipient"):
        envelope.open_envelope(carol, forged)


def test_outer_expiry_rewrite_is_rejected(alice: Identity, bob: Identity) -> None:
    """A relay extends the expiry and fixes up the id: the recipient refuses it."""
    sealed = seal_text(alice, bob)
    outer = envelope.parse_outer(sealed)
    exp = outer.expires_ms + 1000
    to = bob.node_id.public_key
    rewritten = wire.encode(
        {
            "v": 1,
            "to": to,
            "exp": exp,
            "ct": outer.ciphertext,
            "id": envelope.compute_message_id(1, to, exp, outer.ciphertext),
        }
    )
    envelope.parse_outer(rewritten)  # a relay cannot tell
    with pytest.raises(EnvelopeError, match="expiry differs"):
        envelope.open_envelope(bob, rewritten)


def test_forged_signature_is_rejected(alice: Identity, bob: Identity) -> None:
    """Mallory signs with her key but claims to be Alice."""
    import nacl.public

    mallory = Identity.generate()
    msg = wire.encode(
        {
            "from": alice.node_id.public_key,
            "to": bob.node_id.public_key,
            "ts": NOW,
            "exp": LATER,
            "kind": 1,
            "body": "it is me, alice",
        }
    )
    inner = wire.encode(
        {
            "from": alice.node_id.public_key,
            "sig": mallory.sign(envelope.SIGN_CONTEXT + msg),
            "msg": msg,
        }
    )
    ct = nacl.public.SealedBox(nacl.public.PublicKey(bob.node_id.x25519_public_key())).encrypt(
        inner
    )
    to = bob.node_id.public_key
    forged = wire.encode(
        {
            "v": 1,
            "to": to,
            "exp": LATER,
            "ct": ct,
            "id": envelope.compute_message_id(1, to, LATER, ct),
        }
    )
    with pytest.raises(EnvelopeError, match="bad signature"):
        envelope.open_envelope(bob, forged)


def test_not_addressed_to_me(alice: Identity, bob: Identity) -> None:
    with pytest.raises(EnvelopeError, match="addressed to"):
        envelope.open_envelope(alice, seal_text(alice, bob))


def test_expired(alice: Identity, bob: Identity) -> None:
    with pytest.raises(EnvelopeError, match="expired"):
        envelope.open_envelope(bob, seal_text(alice, bob), now_ms=LATER)


def test_unknown_version_is_named(alice: Identity, bob: Identity) -> None:
    outer = envelope.parse_outer(seal_text(alice, bob))
    to = bob.node_id.public_key
    doc = wire.encode(
        {
            "v": 2,
            "to": to,
            "exp": LATER,
            "ct": outer.ciphertext,
            "id": envelope.compute_message_id(2, to, LATER, outer.ciphertext),
        }
    )
    with pytest.raises(EnvelopeError, match="version 2 is not supported"):
        envelope.parse_outer(doc)


@pytest.mark.parametrize(
    ("kind", "body", "why"),
    [
        (MessageKind.TEXT, "", "non-empty text"),
        (MessageKind.TEXT, b"bytes", "non-empty text"),
        (MessageKind.TEXT, "x" * (envelope.MAX_TEXT_LEN + 1), "characters, over"),
        (MessageKind.RECEIPT, {"ids": []}, "non-empty list"),
        (70000, "x", "kind must be"),
    ],
)
def test_seal_refuses_bad_input(
    alice: Identity, bob: Identity, kind: int, body: wire.Value, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        envelope.seal(alice, bob.node_id, kind, body, timestamp_ms=NOW, expires_ms=LATER)


def test_unknown_kind_carries_any_body(alice: Identity, bob: Identity) -> None:
    sealed = envelope.seal(
        alice, bob.node_id, 900, {"emoji": "+1"}, timestamp_ms=NOW, expires_ms=LATER
    )
    assert envelope.open_envelope(bob, sealed).body == {"emoji": "+1"}


def test_garbage_is_an_envelope_error(bob: Identity) -> None:
    for data in (b"", b"\x00", b"\xa0", b"\xff" * 100, wire.encode({"v": 1})):
        with pytest.raises(EnvelopeError):
            envelope.open_envelope(bob, data)
