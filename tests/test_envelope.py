from __future__ import annotations

import functools
import hashlib

import nacl.public
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdm import envelope, files, groups, wire
from p2pdm.envelope import EnvelopeError, MessageKind
from p2pdm.identity import Identity, NodeId

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


# --- the envelope's bytes are exactly what the generic encoder makes --------
# envelope.py encodes its own maps with wire.encode_fields (keys written in
# canonical order, no generic walk). These tests rebuild every envelope with
# plain wire.encode, the way it was first written, and compare byte for byte.

# Integer head boundaries (1, 2, 3, 5 and 9-byte forms) and the largest timestamp.
INT_EDGES = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, envelope.MAX_TIMESTAMP_MS]
KIND_EDGES = [0, 13, 23, 24, 255, 256, envelope.MAX_KIND]
timestamps = st.one_of(st.sampled_from(INT_EDGES), st.integers(0, envelope.MAX_TIMESTAMP_MS))
seeds = st.binary(min_size=32, max_size=32)
ids32 = st.binary(min_size=32, max_size=32)
ids16 = st.binary(min_size=16, max_size=16)
# Hypothesis text includes non-ASCII and astral code points.
texts = st.text(min_size=1, max_size=40)
any_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(INT_EDGES),
        st.integers(wire.MIN_INT, wire.MAX_INT),
        st.binary(max_size=300),
        st.text(max_size=40),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(
            st.one_of(st.integers(-1000, 1000), st.text(max_size=8)), inner, max_size=5
        ),
    ),
    max_leaves=20,
)


@st.composite
def group_states(draw: st.DrawFn) -> wire.Value:
    members = sorted(draw(st.lists(ids32, min_size=1, max_size=4, unique=True)))
    admins = sorted(draw(st.sets(st.sampled_from(members), min_size=1)))
    version = draw(st.sampled_from([1, 2, groups.MAX_VERSION]))
    state = groups.GroupState(
        draw(ids16),
        version,
        draw(st.text(min_size=1, max_size=groups.MAX_GROUP_NAME_LEN).filter(str.strip)),
        tuple(NodeId(m) for m in members),
        tuple(NodeId(a) for a in admins),
        None if version == 1 else draw(ids16),
    )
    return state.body()


@st.composite
def file_offers(draw: st.DrawFn) -> wire.Value:
    offer_id, name = draw(ids16), draw(st.sampled_from(["a", "notes.txt", "фото 🙂.jpg"]))
    how = draw(st.sampled_from(["inline", "parts", "chunks"]))
    if how == "inline":
        data = draw(st.binary(max_size=300))
        offer = files.Offer(offer_id, name, len(data), files.file_hash(data), inline=data)
    elif how == "parts":
        size = draw(st.integers(files.MAX_INLINE_SIZE + 1, files.MAX_RELAYED_SIZE))
        parts = -(-size // files.PART_SIZE)
        offer = files.Offer(offer_id, name, size, draw(ids32), parts=parts)
    else:
        size = draw(st.integers(0, 3 * files.CHUNK_SIZE))
        chunks = tuple(draw(ids32) for _ in range(-(-size // files.CHUNK_SIZE)))
        offer = files.Offer(offer_id, name, size, draw(ids32), chunks, draw(ids32))
    return offer.body()


@st.composite
def kinds_and_bodies(draw: st.DrawFn) -> tuple[int, wire.Value]:
    """A kind (an enum member or a plain int) and a body seal takes for it."""
    k = draw(st.sampled_from([*MessageKind, None]))
    if k is None:  # a kind this node does not know: any body
        kind = draw(st.one_of(st.sampled_from(KIND_EDGES), st.integers(13, envelope.MAX_KIND)))
        return kind, draw(any_values)
    body: wire.Value
    if k == MessageKind.TEXT:
        body = draw(texts)
        if draw(st.booleans()):
            dis = draw(st.integers(envelope.MIN_DISAPPEAR_MS, envelope.MAX_DISAPPEAR_MS))
            body = {"t": body, "dis": dis}
    elif k in envelope.RECEIPT_KINDS:
        body = {"ids": draw(st.lists(ids32, min_size=1, max_size=4))}
    elif k == MessageKind.TYPING:
        body = {"active": draw(st.booleans())}
    elif k == MessageKind.GROUP:
        body = draw(group_states())
    elif k == MessageKind.GROUP_TEXT:
        body = {"g": draw(ids16), "gm": draw(ids16), "t": draw(texts)}
    elif k == MessageKind.FILE:
        body = draw(file_offers())
    elif k == MessageKind.FILE_PART:
        i = draw(st.integers(0, files.MAX_PARTS - 1))
        body = {"x": draw(ids16), "i": i, "d": draw(st.binary(min_size=1, max_size=300))}
    elif k == MessageKind.TIMER:
        after = st.integers(envelope.MIN_DISAPPEAR_MS, envelope.MAX_DISAPPEAR_MS)
        body = {"after": draw(st.one_of(st.just(0), after))}
    else:  # reaction, edit, delete: about a direct or a group message
        body = {"ref": draw(ids32)}
        if draw(st.booleans()):
            body = {"ref": draw(ids16), "g": draw(ids16)}
        if k == MessageKind.REACTION:
            body["e"] = draw(st.text(max_size=envelope.MAX_REACTION_LEN))
        elif k == MessageKind.EDIT:
            body["t"] = draw(texts)
    return draw(st.sampled_from([k, int(k)])), body


def generic_signed(
    sender: Identity, recipient: NodeId, kind: int, body: wire.Value, ts: int, exp: int
) -> bytes:
    return wire.encode(
        {
            "from": sender.node_id.public_key,
            "to": recipient.public_key,
            "ts": ts,
            "exp": exp,
            "kind": kind,
            "body": body,
        }
    )


def generic_outer(recipient: NodeId, exp: int, ct: bytes) -> bytes:
    to = recipient.public_key
    preimage = wire.encode({"v": 1, "to": to, "exp": exp, "ct": ct})
    message_id = hashlib.blake2b(preimage, digest_size=32, person=b"p2pdm-msg-id").digest()
    return wire.encode({"v": 1, "to": to, "exp": exp, "ct": ct, "id": message_id})


def assert_sealed_as_generic(
    sender: Identity, recipient: Identity, kind: int, body: wire.Value, ts: int, exp: int
) -> None:
    """seal's envelope, its plaintext and its id equal the generic encoder's bytes."""
    sealed, outer = envelope.seal_with_outer(
        sender, recipient.node_id, kind, body, timestamp_ms=ts, expires_ms=exp
    )
    msg = generic_signed(sender, recipient.node_id, kind, body, ts, exp)
    inner = wire.encode(
        {
            "from": sender.node_id.public_key,
            "sig": sender.sign(envelope.SIGN_CONTEXT + msg),  # Ed25519 is deterministic
            "msg": msg,
        }
    )
    box = nacl.public.SealedBox(nacl.public.PrivateKey(recipient.x25519_private_key))
    assert box.decrypt(outer.ciphertext) == inner
    assert sealed == generic_outer(recipient.node_id, exp, outer.ciphertext)
    assert envelope.parse_outer(sealed) == outer
    opened = envelope.open_envelope(recipient, sealed)
    assert (opened.kind, opened.timestamp_ms, opened.expires_ms) == (kind, ts, exp)
    assert wire.encode(opened.body) == wire.encode(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seeds, seeds, kinds_and_bodies(), timestamps, timestamps)
def test_sealed_bytes_equal_the_generic_encoding(
    sender_seed: bytes,
    recipient_seed: bytes,
    kind_and_body: tuple[int, wire.Value],
    ts: int,
    exp: int,
) -> None:
    kind, body = kind_and_body
    sender, recipient = Identity(sender_seed), Identity(recipient_seed)
    try:
        generic_signed(sender, recipient.node_id, kind, body, ts, exp)
    except wire.WireUsageError:  # e.g. an unknown kind's body nested too deep
        with pytest.raises(wire.WireUsageError):
            envelope.seal(sender, recipient.node_id, kind, body, timestamp_ms=ts, expires_ms=exp)
        return
    assert_sealed_as_generic(sender, recipient, kind, body, ts, exp)


def test_sealed_bytes_at_every_integer_boundary(alice: Identity, bob: Identity) -> None:
    for ts in INT_EDGES:
        for exp in INT_EDGES:
            assert_sealed_as_generic(alice, bob, MessageKind.TEXT, "héllo ✓ 🙂", ts, exp)
    for kind in KIND_EDGES:
        assert_sealed_as_generic(alice, bob, kind, {"k": [kind, "ü"]}, NOW, LATER)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.sampled_from(INT_EDGES), st.integers(wire.MIN_INT, wire.MAX_INT)),
    st.binary(max_size=40),
    timestamps,
    st.binary(max_size=600),
)
def test_message_id_is_over_the_generic_encoding(
    version: int, to: bytes, exp: int, ct: bytes
) -> None:
    preimage = wire.encode({"v": version, "to": to, "exp": exp, "ct": ct})
    expected = hashlib.blake2b(preimage, digest_size=32, person=b"p2pdm-msg-id").digest()
    assert envelope.compute_message_id(version, to, exp, ct) == expected


@pytest.mark.parametrize(
    ("kind", "body", "ts", "exp", "error"),
    [
        # What the format cannot carry is a WireUsageError, as from wire.encode.
        (MessageKind.TEXT, "hi", 1.5, LATER, wire.WireUsageError),
        (MessageKind.TEXT, "hi", NOW, 2.5, wire.WireUsageError),
        (900.0, "hi", NOW, LATER, wire.WireUsageError),
        (900, 1.5, NOW, LATER, wire.WireUsageError),
        (900, {b"k": 1}, NOW, LATER, wire.WireUsageError),
        (900, b"x" * 70_000, NOW, LATER, wire.WireUsageError),
        # The message map is 1 level, the body 16 more: one too deep.
        (
            900,
            functools.reduce(lambda v, _: [v], range(wire.MAX_DEPTH), 0),
            NOW,
            LATER,
            wire.WireUsageError,
        ),
        # Encodable but over the envelope's room: ValueError.
        (900, b"x" * 62_000, NOW, LATER, ValueError),
    ],
)
def test_seal_refuses_what_cannot_be_encoded(
    alice: Identity, bob: Identity, kind: int, body: wire.Value, ts: int, exp: int, error: type
) -> None:
    with pytest.raises(error) as caught:
        envelope.seal(alice, bob.node_id, kind, body, timestamp_ms=ts, expires_ms=exp)
    if error is ValueError:
        assert not isinstance(caught.value, wire.WireUsageError)


def test_nesting_the_format_allows_is_sealed(alice: Identity, bob: Identity) -> None:
    body = functools.reduce(lambda v, _: [v], range(wire.MAX_DEPTH - 1), 0)
    assert_sealed_as_generic(alice, bob, 900, body, NOW, LATER)


# The worked example in docs/PROTOCOL.md (printed by scripts/protocol_example.py):
# alice and bob from fixed seeds, "hi bob" at NOW, expiring 7 days later.
PUBLISHED_SIGNED = bytes.fromhex(
    "a662746f582029acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794"
    "bc9322966dd76274731b0000018bcfe56800636578701b0000018bf3f1ec0064"
    "626f647966686920626f626466726f6d582003a107bff3ce10be1d70dd18e74b"
    "c09967e4d6309ba50d5f1ddc8664125531b8646b696e6401"
)
PUBLISHED_SIGNATURE = bytes.fromhex(
    "89f3172605a7c0b39f123e18b64a0bd85355c8cb00e0bb4c1fee7fec8e924edf"
    "7e5e810acef0f4c0ed39a6172740819c22230664c81db37385481259e96b7606"
)
PUBLISHED_ENVELOPE = bytes.fromhex(
    "a561760162637459011cbb92405be90942e8da939cf56d6a59ec180dda40aee8"
    "919c51170e935e134b7a0492cc4634c8697600d905c59ec0e07fe0ad85331a03"
    "c1e31f26873f72d2768d976db39834cea54dcdcfe5c17717347ad79ab3e1e783"
    "88c34694e7f201c0569e628ab77ce1493020598339e6f13c36e657572d727377"
    "f825ff2add87fa131d7781fe566a1b1c8b31ae1fd59ffefed296c1297e6aca24"
    "0b582a6c292dafb363994203ee029ffb84fc47e96faca57a17126e3f67128bad"
    "70b716c3b823324a6f598ff0d34d4f18a1e46bbc0f4cf7813039ee583e8afd7e"
    "2533a8c03c1440eef5746fd692f7301b54ae1f2c688f5586c8102b63ec5f82d0"
    "57623dcb120268a87246f312dce9a2f2d04bb19df0126bd2230a5fd4aa9b0efa"
    "40b4bb0a5671626964582020c15ea9c2884ee5934dc1be2f5c2a262589869644"
    "76e6de3d29d2489055be6162746f582029acbae141bccaf0b22e1a94d34d0bc7"
    "361e526d0bfe12c89794bc9322966dd7636578701b0000018bf3f1ec00"
)
PUBLISHED_ID = bytes.fromhex("20c15ea9c2884ee5934dc1be2f5c2a26258986964476e6de3d29d2489055be61")


def test_published_example_still_opens_and_seals_the_same() -> None:
    alice, bob = Identity(bytes(range(32))), Identity(bytes(range(32, 64)))
    msg = envelope.open_envelope(bob, PUBLISHED_ENVELOPE, now_ms=NOW)
    assert (msg.message_id, msg.sender, msg.body) == (PUBLISHED_ID, alice.node_id, "hi bob")
    outer = envelope.parse_outer(PUBLISHED_ENVELOPE)
    assert envelope.compute_message_id(1, bob.node_id.public_key, LATER, outer.ciphertext) == (
        PUBLISHED_ID
    )
    # Sealing the same message again: a new ciphertext around the same plaintext.
    sealed, outer = envelope.seal_with_outer(
        alice, bob.node_id, MessageKind.TEXT, "hi bob", timestamp_ms=NOW, expires_ms=LATER
    )
    box = nacl.public.SealedBox(nacl.public.PrivateKey(bob.x25519_private_key))
    inner = wire.decode(box.decrypt(outer.ciphertext))
    assert inner == {
        "from": alice.node_id.public_key,
        "sig": PUBLISHED_SIGNATURE,
        "msg": PUBLISHED_SIGNED,
    }
    assert sealed == generic_outer(bob.node_id, LATER, outer.ciphertext)
