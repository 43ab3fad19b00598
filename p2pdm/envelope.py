"""End-to-end envelopes: seal, sign, open, verify (pure functions).

Outer envelope, all a relay sees (canonical CBOR map):
    {"v": 1, "to": recipient key (32), "exp": expiry ms, "ct": sealed inner,
     "id": message id (32)}
The message id is BLAKE2b-256 over the canonical encoding of the outer map
without "id", so every copy anywhere dedupes by it and nobody can attach a
known id to other content.

Sealed inner (`ct`): libsodium's sealed box (ephemeral X25519 +
XSalsa20-Poly1305) to the recipient's X25519 key, so relays learn neither
sender nor content. Its plaintext is {"from": sender key, "sig": signature,
"msg": signed bytes}; "msg" is the canonical CBOR of {"from", "to", "ts",
"exp", "kind", "body"} and "sig" is the sender's Ed25519 signature over
SIGN_CONTEXT + msg. The signature covers the recipient (so B cannot re-seal
A's message to C as if A had sent it to C) and the expiry (so a relay that
rewrites the outer expiry makes the envelope unopenable, not a duplicate).
The signature is checked over the exact bytes received, before they are
parsed.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from enum import IntEnum

import nacl.exceptions
import nacl.public

from p2pdm import files, groups, wire
from p2pdm.identity import PUBLIC_KEY_LEN, SIGNATURE_LEN, BadSignature, Identity, NodeId

ENVELOPE_VERSION = 1
MESSAGE_ID_LEN = 32
SIGN_CONTEXT = b"p2pdm envelope v1\x00"
_ID_PERSON = b"p2pdm-msg-id"
# An envelope travels in one frame with some session framing around it.
MAX_ENVELOPE_SIZE = 60 * 1024
# Sealed box overhead: 32-byte ephemeral key + 16-byte MAC.
SEAL_OVERHEAD = 48
# Leaves room for the outer map and the inner signature inside one envelope.
MAX_BODY_SIZE = MAX_ENVELOPE_SIZE - 1024
# Text messages are for people; 16 K characters is several pages.
MAX_TEXT_LEN = 16 * 1024
# Timestamps are integer milliseconds since the Unix epoch; 2^53 keeps them
# exact in JSON and JavaScript on the local API.
MAX_TIMESTAMP_MS = (1 << 53) - 1
# A group message's copies (one per member) share an id of this size.
GROUP_MESSAGE_ID_LEN = 16
# Kinds are small integers; leave room for many without accepting any int.
MAX_KIND = 0xFFFF


class MessageKind(IntEnum):
    """What the inner body means. New kinds are new values, same envelope."""

    TEXT = 1
    """A chat message; body is text."""
    RECEIPT = 2
    """End-to-end delivery receipt; body is {"ids": [message id, ...]}."""
    READ = 3
    """Read receipt: these messages were shown to the recipient's user;
    body is {"ids": [message id, ...]}. Only sent while the setting allows."""
    TYPING = 4
    """Ephemeral: the sender is typing (or stopped); body is {"active": bool}.
    Goes only in an EPHEMERAL frame to a connected peer: never stored or relayed."""
    GROUP = 5
    """A group's new state (p2pdm.groups): from an admin to every member of the
    old and the new member list."""
    GROUP_TEXT = 6
    """A message to a group, sealed once per member; body is
    {"g": group id, "gm": id shared by every member's copy, "t": text}."""
    FILE = 7
    """A file offer (p2pdm.files): small files inline, larger ones fetched from
    the sender chunk by chunk. Its delivery receipt is sent once the file is
    complete and checked."""
    REACTION = 8
    """{"ref": message id, "e": emoji}: the sender's reaction to a message of
    this conversation ("" takes it back). For a group message, ref is its
    shared id and "g" the group (sent to every member, as are 9 and 10)."""
    EDIT = 9
    """{"ref": message id, "t": text, "g"?}: the sender's new text for its own message."""
    DELETE = 10
    """{"ref": message id, "g"?}: the sender unsends its own message."""
    TIMER = 11
    """{"after": ms}: the sender set this conversation's disappearing-message
    timer (0: off); both sides then send texts that vanish after it."""
    FILE_PART = 12
    """{"x": offer id, "i": index, "d": bytes}: a piece of a file offered in
    parts (p2pdm.files), so that relays carry it."""


# Changes to other messages: listed with them, not as messages of their own.
CHANGE_KINDS = frozenset({MessageKind.REACTION, MessageKind.EDIT, MessageKind.DELETE})
# A reaction is one emoji, perhaps with modifiers and joiners: a few code points.
MAX_REACTION_LEN = 16
# Disappearing messages vanish between 5 s and 4 weeks after they arrive.
MIN_DISAPPEAR_MS = 5_000
MAX_DISAPPEAR_MS = 28 * 86_400_000


# Kinds that report on other messages: they get no delivery receipt of their
# own (the chain has to end) and are not listed as messages.
RECEIPT_KINDS = frozenset({MessageKind.RECEIPT, MessageKind.READ})


class EnvelopeError(ValueError):
    """An envelope that is malformed, forged, not ours or expired. Remote fault."""


@dataclass(frozen=True)
class Outer:
    """What anyone holding the envelope can read."""

    version: int
    recipient: NodeId
    expires_ms: int
    ciphertext: bytes
    message_id: bytes


@dataclass(frozen=True)
class Message:
    """An opened, verified message."""

    message_id: bytes
    sender: NodeId
    recipient: NodeId
    timestamp_ms: int
    expires_ms: int
    kind: int
    body: wire.Value


# The ed25519->x25519 conversion and the box objects cost tens of µs each;
# a node talks to few peers, so a small cache removes them from the hot path.
@functools.lru_cache(maxsize=1024)
def _seal_box(recipient: NodeId) -> nacl.public.SealedBox[nacl.public.PublicKey]:
    return nacl.public.SealedBox(nacl.public.PublicKey(recipient.x25519_public_key()))


@functools.lru_cache(maxsize=16)
def _open_box(me: Identity) -> nacl.public.SealedBox[nacl.public.PrivateKey]:
    return nacl.public.SealedBox(nacl.public.PrivateKey(me.x25519_private_key))


# The envelope's own maps go through `wire.encode_fields`, their keys written
# in canonical order (shorter encoding first, then bytewise): the bytes
# `wire.encode` would make, without its generic walk and key sort.
def compute_message_id(version: int, recipient: bytes, expires_ms: int, ciphertext: bytes) -> bytes:
    content = wire.encode_fields(
        {"v": version, "ct": ciphertext, "to": recipient, "exp": expires_ms}
    )
    return hashlib.blake2b(content, digest_size=MESSAGE_ID_LEN, person=_ID_PERSON).digest()


def _check_body(kind: int, body: wire.Value) -> None:
    """Per-kind body schema; raises wire.WireError."""
    if kind == MessageKind.TEXT:
        if isinstance(body, dict):  # a disappearing text
            fields = wire.as_map(body, "text", required={"t", "dis"})
            wire.field_int(fields, "dis", "text", lo=MIN_DISAPPEAR_MS, hi=MAX_DISAPPEAR_MS)
            body = fields["t"]
        if not isinstance(body, str) or not body:
            raise wire.WireError("a text message's body must be non-empty text")
        if len(body) > MAX_TEXT_LEN:
            raise wire.WireError(f"text is {len(body)} characters, over {MAX_TEXT_LEN}")
    elif kind in CHANGE_KINDS:
        what = MessageKind(kind).name.lower()
        extra = {MessageKind.REACTION: {"e"}, MessageKind.EDIT: {"t"}}.get(MessageKind(kind), set())
        fields = wire.as_map(body, what, required={"ref"} | extra, optional={"g"})
        if "g" in fields:  # about a group message: ref is its shared id
            wire.field_bytes(fields, "g", what, size=groups.GROUP_ID_LEN)
            wire.field_bytes(fields, "ref", what, size=GROUP_MESSAGE_ID_LEN)
        else:
            wire.field_bytes(fields, "ref", what, size=MESSAGE_ID_LEN)
        if kind == MessageKind.REACTION:
            wire.field_text(fields, "e", what, max_len=MAX_REACTION_LEN)
        elif kind == MessageKind.EDIT and not wire.field_text(
            fields, "t", what, max_len=MAX_TEXT_LEN
        ):
            raise wire.WireError("an edit's text is empty")
    elif kind == MessageKind.TIMER:
        fields = wire.as_map(body, "timer", required={"after"})
        after = wire.field_int(fields, "after", "timer", lo=0, hi=MAX_DISAPPEAR_MS)
        if 0 < after < MIN_DISAPPEAR_MS:
            raise wire.WireError(f"timer.after is 0 (off) or at least {MIN_DISAPPEAR_MS} ms")
    elif kind in RECEIPT_KINDS:
        ids = wire.as_map(body, "receipt", required={"ids"})["ids"]
        if not isinstance(ids, list) or not ids:
            raise wire.WireError("receipt.ids must be a non-empty list")
        for mid in ids:
            if not isinstance(mid, bytes) or len(mid) != MESSAGE_ID_LEN:
                raise wire.WireError(f"receipt.ids holds {MESSAGE_ID_LEN}-byte message ids")
    elif kind == MessageKind.GROUP:
        groups.parse_state(body)
    elif kind == MessageKind.GROUP_TEXT:
        fields = wire.as_map(body, "group text", required={"g", "gm", "t"})
        wire.field_bytes(fields, "g", "group text", size=groups.GROUP_ID_LEN)
        wire.field_bytes(fields, "gm", "group text", size=GROUP_MESSAGE_ID_LEN)
        text = wire.field_text(fields, "t", "group text", max_len=MAX_TEXT_LEN)
        if not text:
            raise wire.WireError("a group message's text is empty")
    elif kind == MessageKind.FILE:
        files.parse_offer(body)
    elif kind == MessageKind.FILE_PART:
        files.parse_part(body)
    elif kind == MessageKind.TYPING:
        active = wire.as_map(body, "typing", required={"active"})["active"]
        if not isinstance(active, bool):
            raise wire.WireError("typing.active must be true or false")


def seal(
    sender: Identity,
    recipient: NodeId,
    kind: int,
    body: wire.Value,
    *,
    timestamp_ms: int,
    expires_ms: int,
) -> bytes:
    """Sign and seal a message; returns the encoded outer envelope.

    Raises ValueError for arguments the format cannot carry.
    """
    sealed, _ = seal_with_outer(
        sender, recipient, kind, body, timestamp_ms=timestamp_ms, expires_ms=expires_ms
    )
    return sealed


def seal_with_outer(
    sender: Identity,
    recipient: NodeId,
    kind: int,
    body: wire.Value,
    *,
    timestamp_ms: int,
    expires_ms: int,
) -> tuple[bytes, Outer]:
    """`seal`, with what `parse_outer` would read back from it (without the parsing)."""
    if not 0 <= timestamp_ms <= MAX_TIMESTAMP_MS or not 0 <= expires_ms <= MAX_TIMESTAMP_MS:
        raise ValueError("timestamps are non-negative integer milliseconds below 2^53")
    if not 0 <= kind <= MAX_KIND:
        raise ValueError(f"kind must be in 0..{MAX_KIND}")
    try:
        _check_body(kind, body)
    except wire.WireError as exc:
        raise ValueError(str(exc)) from None
    msg = wire.encode_fields(
        {
            "to": recipient.public_key,
            "ts": timestamp_ms,
            "exp": expires_ms,
            "body": wire.encode_field(body),
            "from": sender.node_id.public_key,
            "kind": kind,
        }
    )
    if len(msg) > MAX_BODY_SIZE:
        raise ValueError(f"message is {len(msg)} bytes encoded, over {MAX_BODY_SIZE}")
    inner = wire.encode_fields(
        {"msg": msg, "sig": sender.sign(SIGN_CONTEXT + msg), "from": sender.node_id.public_key}
    )
    box = _seal_box(recipient)
    ciphertext = box.encrypt(inner)
    message_id = compute_message_id(ENVELOPE_VERSION, recipient.public_key, expires_ms, ciphertext)
    sealed = wire.encode_fields(
        {
            "v": ENVELOPE_VERSION,
            "ct": ciphertext,
            "id": message_id,
            "to": recipient.public_key,
            "exp": expires_ms,
        }
    )
    return sealed, Outer(ENVELOPE_VERSION, recipient, expires_ms, ciphertext, message_id)


def parse_outer(data: bytes) -> Outer:
    """Check the outer envelope as a relay can: schema, version, id."""
    try:
        fields = wire.as_map(
            wire.decode(data, max_size=MAX_ENVELOPE_SIZE),
            "envelope",
            required={"v", "to", "exp", "ct", "id"},
        )
        version = wire.field_int(fields, "v", "envelope", lo=0, hi=MAX_KIND)
        if version != ENVELOPE_VERSION:
            raise EnvelopeError(
                f"envelope version {version} is not supported (this node reads {ENVELOPE_VERSION})"
            )
        to = wire.field_bytes(fields, "to", "envelope", size=PUBLIC_KEY_LEN)
        expires = wire.field_int(fields, "exp", "envelope", lo=0, hi=MAX_TIMESTAMP_MS)
        ct = wire.field_bytes(fields, "ct", "envelope", max_size=MAX_ENVELOPE_SIZE)
        if len(ct) <= SEAL_OVERHEAD:
            raise EnvelopeError("envelope ciphertext is too short to be a sealed box")
        claimed_id = wire.field_bytes(fields, "id", "envelope", size=MESSAGE_ID_LEN)
    except wire.WireError as exc:
        raise EnvelopeError(f"malformed envelope: {exc}") from None
    if compute_message_id(version, to, expires, ct) != claimed_id:
        raise EnvelopeError("envelope id does not match its content")
    return Outer(version, NodeId(to), expires, ct, claimed_id)


def open_envelope(
    me: Identity, data: bytes, *, now_ms: int | None = None, outer: Outer | None = None
) -> Message:
    """Open an envelope addressed to `me`, checking everything an attacker controls.

    Order: outer schema and id, addressed to me, not expired (if `now_ms` is
    given), decrypts, inner schema, signature over the exact signed bytes,
    signed fields agree with the outer ones, body schema for its kind.
    `outer`, if the caller already has `parse_outer(data)`, saves parsing twice.
    """
    if outer is None:
        outer = parse_outer(data)
    if outer.recipient != me.node_id:
        raise EnvelopeError(f"envelope is addressed to {outer.recipient.short()}, not to this node")
    if now_ms is not None and outer.expires_ms <= now_ms:
        raise EnvelopeError("envelope has expired")
    box = _open_box(me)
    try:
        inner_bytes = box.decrypt(outer.ciphertext)
    except nacl.exceptions.CryptoError:
        raise EnvelopeError(
            "envelope does not decrypt: corrupted or not sealed to this node"
        ) from None
    try:
        inner = wire.as_map(wire.decode(inner_bytes), "inner", required={"from", "sig", "msg"})
        sender = NodeId(wire.field_bytes(inner, "from", "inner", size=PUBLIC_KEY_LEN))
        signature = wire.field_bytes(inner, "sig", "inner", size=SIGNATURE_LEN)
        signed = wire.field_bytes(inner, "msg", "inner", max_size=MAX_BODY_SIZE)
    except wire.WireError as exc:
        raise EnvelopeError(f"malformed inner envelope: {exc}") from None
    try:
        sender.verify(SIGN_CONTEXT + signed, signature)
    except BadSignature:
        raise EnvelopeError(f"bad signature: not signed by {sender.short()}") from None
    try:
        msg = wire.as_map(
            wire.decode(signed),
            "message",
            required={"from", "to", "ts", "exp", "kind", "body"},
        )
        signed_from = wire.field_bytes(msg, "from", "message", size=PUBLIC_KEY_LEN)
        signed_to = wire.field_bytes(msg, "to", "message", size=PUBLIC_KEY_LEN)
        timestamp = wire.field_int(msg, "ts", "message", lo=0, hi=MAX_TIMESTAMP_MS)
        signed_exp = wire.field_int(msg, "exp", "message", lo=0, hi=MAX_TIMESTAMP_MS)
        kind = wire.field_int(msg, "kind", "message", lo=0, hi=MAX_KIND)
        body = msg["body"]
        _check_body(kind, body)
    except wire.WireError as exc:
        raise EnvelopeError(f"malformed message: {exc}") from None
    if signed_from != sender.public_key:
        raise EnvelopeError("signed sender differs from the key that signed")
    if signed_to != outer.recipient.public_key:
        raise EnvelopeError("message was signed for another recipient and re-sealed")
    if signed_exp != outer.expires_ms:
        raise EnvelopeError("outer expiry differs from the signed one")
    return Message(
        message_id=outer.message_id,
        sender=sender,
        recipient=outer.recipient,
        timestamp_ms=timestamp,
        expires_ms=outer.expires_ms,
        kind=kind,
        body=body,
    )
