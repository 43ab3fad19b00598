from __future__ import annotations

import pytest

from p2pdm import noise, wire
from p2pdm.handshake import (
    PROLOGUE,
    REKEY_INTERVAL,
    STATIC_KEY_CONTEXT,
    Handshake,
    HandshakeError,
    HandshakeUsageError,
    NoiseStatic,
    PeerRefused,
    TransportError,
)
from p2pdm.identity import Identity


def run(initiator: Handshake, responder: Handshake) -> None:
    msg2 = responder.receive(initiator.start())
    assert msg2 is not None
    msg3 = initiator.receive(msg2)
    assert msg3 is not None
    assert responder.receive(msg3) is None


def test_both_sides_learn_each_others_node_id(alice: Identity, bob: Identity) -> None:
    a = Handshake(alice, initiator=True, expected_peer=bob.node_id)
    b = Handshake(bob, initiator=False)
    run(a, b)
    assert a.complete
    assert b.complete
    assert a.result.peer == bob.node_id
    assert b.result.peer == alice.node_id
    assert a.result.handshake_hash == b.result.handshake_hash
    assert a.result.version == b.result.version == 1
    # Transport works both ways, in order.
    for i in range(5):
        assert b.result.cipher.decrypt(a.result.cipher.encrypt(b"ping %d" % i)) == b"ping %d" % i
        assert a.result.cipher.decrypt(b.result.cipher.encrypt(b"pong")) == b"pong"


def test_transport_messages_never_repeat_a_nonce(alice: Identity, bob: Identity) -> None:
    a = Handshake(alice, initiator=True)
    b = Handshake(bob, initiator=False)
    run(a, b)
    sent = [a.result.cipher.encrypt(b"same") for _ in range(50)]
    assert len(set(sent)) == 50
    # A replayed transport message is rejected: its nonce is in the past.
    assert b.result.cipher.decrypt(sent[0]) == b"same"
    with pytest.raises(TransportError):
        b.result.cipher.decrypt(sent[0])


def test_rekey_happens_in_step_on_both_sides(alice: Identity, bob: Identity) -> None:
    a = Handshake(alice, initiator=True)
    b = Handshake(bob, initiator=False)
    run(a, b)
    for i in range(REKEY_INTERVAL + 3):
        assert b.result.cipher.decrypt(a.result.cipher.encrypt(i.to_bytes(4, "big"))) == (
            i.to_bytes(4, "big")
        )


def _transcript_lengths(alice: Identity, bob: Identity) -> list[int]:
    a = Handshake(alice, initiator=True)
    b = Handshake(bob, initiator=False)
    msg1 = a.start()
    msg2 = b.receive(msg1)
    assert msg2 is not None
    msg3 = a.receive(msg2)
    assert msg3 is not None
    return [len(msg1), len(msg2), len(msg3)]


@pytest.mark.parametrize("message_index", [0, 1, 2])
def test_any_flipped_byte_fails_the_handshake(
    alice: Identity, bob: Identity, message_index: int
) -> None:
    for pos in range(_transcript_lengths(alice, bob)[message_index]):
        a = Handshake(alice, initiator=True)
        b = Handshake(bob, initiator=False)
        msg1 = a.start()
        if message_index == 0:
            # msg1 is not encrypted: a flip is either refused at once or lands
            # in the transcript, so the initiator cannot read msg2.
            try:
                msg2 = b.receive(_flip(msg1, pos))
            except HandshakeError:
                continue
            assert msg2 is not None
            with pytest.raises(HandshakeError):
                a.receive(msg2)
            continue
        msg2 = b.receive(msg1)
        assert msg2 is not None
        if message_index == 1:
            with pytest.raises(HandshakeError):
                a.receive(_flip(msg2, pos))
            continue
        msg3 = a.receive(msg2)
        assert msg3 is not None
        with pytest.raises(HandshakeError):
            b.receive(_flip(msg3, pos))


def _flip(message: bytes, pos: int) -> bytes:
    out = bytearray(message)
    out[pos] ^= 0x01
    return bytes(out)


def test_identity_signature_over_another_static_key_is_refused(
    alice: Identity, bob: Identity
) -> None:
    """Mallory presents Bob's signature (over Bob's static) with her own static key."""
    bobs_static = NoiseStatic.generate(bob)
    mallory_static = NoiseStatic(
        private=b"\x11" * 32,
        public=noise_public(b"\x11" * 32),
        signature=bobs_static.signature,
    )
    a = Handshake(alice, initiator=True)
    responder = Handshake(bob, initiator=False, static=mallory_static)
    msg2 = responder.receive(a.start())
    assert msg2 is not None
    with pytest.raises(HandshakeError, match="does not cover its Noise static key"):
        a.receive(msg2)

    # And from the initiator's side, detected by the responder.
    initiator = Handshake(
        alice,
        initiator=True,
        static=NoiseStatic(
            private=b"\x22" * 32,
            public=noise_public(b"\x22" * 32),
            signature=NoiseStatic.generate(alice).signature,
        ),
    )
    b = Handshake(bob, initiator=False)
    msg2 = b.receive(initiator.start())
    assert msg2 is not None
    msg3 = initiator.receive(msg2)
    assert msg3 is not None
    with pytest.raises(HandshakeError, match="does not cover its Noise static key"):
        b.receive(msg3)


def noise_public(private: bytes) -> bytes:
    import nacl.bindings

    return nacl.bindings.crypto_scalarmult_base(private)


def test_signature_uses_the_domain_separated_string(alice: Identity) -> None:
    static = NoiseStatic.generate(alice)
    alice.node_id.verify(STATIC_KEY_CONTEXT + static.public, static.signature)


def test_unexpected_peer_is_refused(alice: Identity, bob: Identity) -> None:
    carol = Identity.generate()
    a = Handshake(alice, initiator=True, expected_peer=carol.node_id)
    b = Handshake(bob, initiator=False)
    msg2 = b.receive(a.start())
    assert msg2 is not None
    with pytest.raises(HandshakeError, match=f"dialled {carol.node_id} but the peer there is"):
        a.receive(msg2)


def test_no_common_version_gets_a_clear_refusal(alice: Identity, bob: Identity) -> None:
    a = Handshake(alice, initiator=True, versions=[7, 8])
    b = Handshake(bob, initiator=False)
    with pytest.raises(HandshakeError, match="no common protocol version") as caught:
        b.receive(a.start())
    assert caught.value.reply is not None
    with pytest.raises(PeerRefused, match=r"peer refused the handshake: no common protocol"):
        a.receive(caught.value.reply)


def _offer(responder: Handshake, versions: list[wire.Value]) -> tuple[noise.HandshakeState, bytes]:
    """A hand-made initiator's msg1 with this version list, and the responder's answer."""
    raw = noise.HandshakeState(initiator=True, prologue=PROLOGUE, static_private=b"\x05" * 32)
    try:
        msg2 = responder.receive(raw.write_message(wire.encode({"versions": versions})))
    except HandshakeError as exc:
        msg2 = exc.reply
    assert msg2 is not None
    return raw, msg2


@pytest.mark.parametrize("offered", [[True], [True, 7]])
def test_a_boolean_in_the_version_list_is_no_version(
    bob: Identity, offered: list[wire.Value]
) -> None:
    # CBOR true is not the integer 1, though Python's True == 1: a responder
    # that took it for version 1 answered {"version": true}, which no
    # initiator reads, instead of saying there is no common version.
    raw, msg2 = _offer(Handshake(bob, initiator=False), offered)
    payload = wire.decode(raw.read_message(msg2))
    assert isinstance(payload, dict)
    assert "no common protocol version" in str(payload["error"])


def test_a_boolean_beside_version_1_leaves_version_1(bob: Identity) -> None:
    raw, msg2 = _offer(Handshake(bob, initiator=False), [True, 1])
    payload = wire.decode(raw.read_message(msg2))
    assert isinstance(payload, dict)
    assert type(payload["version"]) is int
    assert payload["version"] == 1


@pytest.mark.parametrize(
    "public",
    [
        bytes(32),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000"),
    ],
    ids=["all-zero", "order-8", "order-1"],
)
def test_low_order_ephemeral_is_refused(bob: Identity, public: bytes) -> None:
    msg1 = public + wire.encode({"versions": [1]})
    b = Handshake(bob, initiator=False)
    with pytest.raises(HandshakeError, match=r"low-order|all-zero|invalid"):
        b.receive(msg1)


def test_malformed_payloads_are_clear_errors(alice: Identity, bob: Identity) -> None:
    # A hand-made initiator that sends a version list that is not a list.
    raw = noise.HandshakeState(initiator=True, prologue=PROLOGUE, static_private=b"\x05" * 32)
    b = Handshake(bob, initiator=False)
    with pytest.raises(HandshakeError, match="versions must be a list"):
        b.receive(raw.write_message(wire.encode({"versions": 1})))
    raw = noise.HandshakeState(initiator=True, prologue=PROLOGUE, static_private=b"\x05" * 32)
    b = Handshake(bob, initiator=False)
    with pytest.raises(HandshakeError, match="malformed handshake payload"):
        b.receive(raw.write_message(b"\xff\xff"))


def test_garbage_and_short_messages(bob: Identity) -> None:
    for junk in (b"", b"\x00", b"x" * 31, b"\xff" * 1000):
        b = Handshake(bob, initiator=False)
        with pytest.raises(HandshakeError):
            b.receive(junk)


def test_misuse_is_a_usage_error(alice: Identity, bob: Identity) -> None:
    b = Handshake(bob, initiator=False)
    with pytest.raises(HandshakeUsageError):
        b.start()
    with pytest.raises(HandshakeUsageError):
        _ = b.result
    a = Handshake(alice, initiator=True)
    with pytest.raises(HandshakeUsageError):
        a.receive(b"x" * 100)
    with pytest.raises(HandshakeUsageError):
        Handshake(bob, initiator=False, expected_peer=alice.node_id)


def test_different_prologue_fails() -> None:
    a = noise.HandshakeState(initiator=True, prologue=b"other", static_private=b"\x05" * 32)
    b = Handshake(Identity.generate(), initiator=False)
    msg2 = b.receive(a.write_message(wire.encode({"versions": [1]})))
    assert msg2 is not None
    with pytest.raises(noise.NoiseError):
        a.read_message(msg2)
