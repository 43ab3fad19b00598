"""The p2pdm handshake: Noise XX plus a signed identity payload (sans-IO).

    initiator -> responder   msg1: e                 payload {"versions": [1]}
    responder -> initiator   msg2: e, ee, s, es      payload {"version", "key", "sig"}
    initiator -> responder   msg3: s, se             payload {"key", "sig"}

"key" is the sender's Ed25519 public key (its node id) and "sig" its
signature over STATIC_KEY_CONTEXT + its Noise static public key (libp2p's
scheme), so each side learns the other's node id with mutual authentication
and forward secrecy. msg1's payload is not encrypted but is bound into the
handshake hash, so a tampered version list breaks the handshake.

A responder that shares no version with the initiator still answers msg2,
with payload {"error": reason}, so the initiator gets a clear reason instead
of a dropped connection; both then close.

After msg3 both sides hold a `TransportCipher`. Each direction rekeys after
every REKEY_INTERVAL messages (Noise spec 11.3), at the same message on both
ends because both count messages the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.utils

from p2pdm import noise, wire
from p2pdm.identity import PUBLIC_KEY_LEN, SIGNATURE_LEN, BadSignature, Identity, NodeId

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

PROTOCOL_NAME = "p2pdm"
PROTOCOL_VERSIONS: tuple[int, ...] = (1,)
# The prologue names the protocol and handshake version; both sides must use
# the same bytes or the handshake fails.
PROLOGUE = b"p2pdm/1 Noise_XX_25519_ChaChaPoly_BLAKE2b"
STATIC_KEY_CONTEXT = b"p2pdm-noise-static-key:"
# Handshake payloads are a few dozen bytes; anything bigger is hostile.
MAX_HANDSHAKE_PAYLOAD = 512
# Versions a peer may offer: more than a handful is noise, not negotiation.
MAX_OFFERED_VERSIONS = 16
MAX_ERROR_TEXT = 200
# Rekey each direction every 2^16 messages: bounds what one key protects at
# the cost of one ChaCha20 block per 65536 messages.
REKEY_INTERVAL = 1 << 16
# Noise transport messages carry at most 65535 bytes including the 16-byte tag.
MAX_TRANSPORT_PLAINTEXT = noise.MAX_MESSAGE_LEN - 16


class HandshakeError(Exception):
    """The handshake failed because of the peer; the message says why.

    `reply`, when set, is a last handshake message to send the peer (a
    refusal it can read) before closing.
    """

    def __init__(self, message: str, reply: bytes | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class PeerRefused(HandshakeError):
    """The peer answered with an explicit refusal (e.g. no common version)."""


class UnexpectedPeer(HandshakeError):
    """We dialled one node id and another answered (a stale or forged address hint)."""


class HandshakeUsageError(Exception):
    """Local misuse of the state machine (a bug in the caller)."""


class TransportError(Exception):
    """A transport message that does not decrypt: the peer is broken or hostile."""


@dataclass(frozen=True)
class NoiseStatic:
    """A Noise static key and this node's signature binding it to the node id.

    Made once per process and reused for every connection, so a handshake
    costs no Ed25519 signature.
    """

    private: bytes
    public: bytes
    signature: bytes

    @classmethod
    def generate(
        cls, identity: Identity, rng: Callable[[int], bytes] = nacl.utils.random
    ) -> NoiseStatic:
        private = rng(32)
        public = nacl.bindings.crypto_scalarmult_base(private)
        return cls(private, public, identity.sign(STATIC_KEY_CONTEXT + public))


class TransportCipher:
    """Encrypts and decrypts transport messages after the handshake."""

    __slots__ = ("_recv", "_recv_count", "_send", "_send_count")

    def __init__(self, send: noise.CipherState, recv: noise.CipherState) -> None:
        self._send, self._recv = send, recv
        self._send_count = self._recv_count = 0

    def encrypt(self, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_TRANSPORT_PLAINTEXT:
            raise HandshakeUsageError(
                f"transport plaintext is {len(plaintext)} bytes, over {MAX_TRANSPORT_PLAINTEXT}"
            )
        ciphertext = self._send.encrypt_with_ad(b"", plaintext)
        self._send_count += 1
        if self._send_count % REKEY_INTERVAL == 0:
            self._send.rekey()
        return ciphertext

    def decrypt(self, ciphertext: bytes) -> bytes:
        try:
            plaintext = self._recv.decrypt_with_ad(b"", ciphertext)
        except noise.NoiseError as exc:
            raise TransportError(f"transport message rejected: {exc}") from None
        self._recv_count += 1
        if self._recv_count % REKEY_INTERVAL == 0:
            self._recv.rekey()
        return plaintext


@dataclass(frozen=True)
class HandshakeResult:
    peer: NodeId
    version: int
    cipher: TransportCipher
    handshake_hash: bytes


def _identity_payload(static: NoiseStatic, identity: Identity, version: int | None) -> bytes:
    doc: dict[wire.Key, wire.Value] = {"key": identity.node_id.public_key, "sig": static.signature}
    if version is not None:
        doc["version"] = version
    return wire.encode(doc)


def _check_identity(fields: dict[str, wire.Value], remote_static: bytes) -> NodeId:
    key = wire.field_bytes(fields, "key", "handshake payload", size=PUBLIC_KEY_LEN)
    sig = wire.field_bytes(fields, "sig", "handshake payload", size=SIGNATURE_LEN)
    try:
        peer = NodeId(key)
        peer.verify(STATIC_KEY_CONTEXT + remote_static, sig)
    except BadSignature:
        raise HandshakeError(
            "peer's identity signature does not cover its Noise static key"
        ) from None
    return peer


class Handshake:
    """One side of a handshake. Feed it the peer's messages, send what it returns.

    Initiator: `start()` gives msg1; `receive(msg2)` returns msg3 and completes.
    Responder: `receive(msg1)` returns msg2; `receive(msg3)` returns None and
    completes. Then `result` holds the peer's id and the transport cipher.
    Any problem with the peer's bytes raises HandshakeError (see `.reply`).
    """

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        static: NoiseStatic | None = None,
        expected_peer: NodeId | None = None,
        versions: Sequence[int] = PROTOCOL_VERSIONS,
        rng: Callable[[int], bytes] = nacl.utils.random,
    ) -> None:
        if expected_peer is not None and not initiator:
            raise HandshakeUsageError("only the dialling side can expect a particular peer")
        self._identity = identity
        self._static = static or NoiseStatic.generate(identity, rng)
        self._initiator = initiator
        self._expected = expected_peer
        self._versions = tuple(versions)
        self._noise = noise.HandshakeState(
            initiator=initiator,
            prologue=PROLOGUE,
            static_private=self._static.private,
            rng=rng,
        )
        self._step = 0
        self._version: int | None = None
        self._result: HandshakeResult | None = None

    @property
    def complete(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> HandshakeResult:
        if self._result is None:
            raise HandshakeUsageError("the handshake is not complete")
        return self._result

    def start(self) -> bytes:
        if not self._initiator or self._step != 0:
            raise HandshakeUsageError("start() is for the initiator, once")
        self._step = 1
        payload = wire.encode({"versions": list(self._versions)})
        return self._noise.write_message(payload)

    def receive(self, message: bytes) -> bytes | None:
        """Process the peer's next handshake message; return ours, if any."""
        if self._result is not None:
            raise HandshakeUsageError("the handshake is already complete")
        my_turn = self._step == 1 if self._initiator else self._step in (0, 2)
        if not my_turn:
            raise HandshakeUsageError("receive() called out of turn")
        try:
            payload = self._noise.read_message(message)
        except noise.NoiseError as exc:
            raise HandshakeError(f"handshake message {self._step + 1} rejected: {exc}") from None
        try:
            if self._initiator:
                return self._initiator_got_msg2(payload)
            if self._step == 0:
                return self._responder_got_msg1(payload)
            self._responder_got_msg3(payload)
            return None
        except wire.WireError as exc:
            raise HandshakeError(f"malformed handshake payload: {exc}") from None

    def _decode_payload(
        self, payload: bytes, what: str, required: set[str]
    ) -> dict[str, wire.Value]:
        value = wire.decode(payload, max_size=MAX_HANDSHAKE_PAYLOAD, max_depth=2)
        if isinstance(value, dict) and "error" in value:
            reason = wire.field_text(
                wire.as_map(value, what, required={"error"}), "error", what, max_len=MAX_ERROR_TEXT
            )
            raise PeerRefused(f"peer refused the handshake: {reason}")
        return wire.as_map(value, what, required=required)

    def _responder_got_msg1(self, payload: bytes) -> bytes:
        fields = wire.as_map(
            wire.decode(payload, max_size=MAX_HANDSHAKE_PAYLOAD, max_depth=2),
            "handshake offer",
            required={"versions"},
        )
        offered = fields["versions"]
        if not isinstance(offered, list) or not 0 < len(offered) <= MAX_OFFERED_VERSIONS:
            raise wire.WireError(f"versions must be a list of 1 to {MAX_OFFERED_VERSIONS} integers")
        # A bool is an int to Python but not to CBOR: true is no version 1.
        ints = {v for v in offered if isinstance(v, int) and not isinstance(v, bool)}
        common = set(self._versions) & ints
        self._step = 2
        if not common:
            reason = (
                f"no common protocol version: peer offers {offered[:MAX_OFFERED_VERSIONS]}, "
                f"this node speaks {list(self._versions)}"
            )[:MAX_ERROR_TEXT]
            refusal = self._noise.write_message(wire.encode({"error": reason}))
            raise HandshakeError(reason, reply=refusal)
        self._version = max(common)
        return self._noise.write_message(
            _identity_payload(self._static, self._identity, self._version)
        )

    def _initiator_got_msg2(self, payload: bytes) -> bytes:
        fields = self._decode_payload(payload, "handshake reply", {"version", "key", "sig"})
        version = wire.field_int(fields, "version", "handshake reply", lo=0, hi=0xFFFF)
        if version not in self._versions:
            raise HandshakeError(f"peer chose version {version}, which was not offered")
        peer = self._checked_peer(fields)
        if self._expected is not None and peer != self._expected:
            raise UnexpectedPeer(f"dialled {self._expected} but the peer there is {peer}")
        msg3 = self._noise.write_message(_identity_payload(self._static, self._identity, None))
        self._finish(peer, version)
        return msg3

    def _responder_got_msg3(self, payload: bytes) -> None:
        fields = self._decode_payload(payload, "handshake identity", {"key", "sig"})
        peer = self._checked_peer(fields)
        assert self._version is not None
        self._finish(peer, self._version)

    def _checked_peer(self, fields: dict[str, wire.Value]) -> NodeId:
        remote_static = self._noise.remote_static
        assert remote_static is not None  # XX delivers it before any identity payload
        return _check_identity(fields, remote_static)

    def _finish(self, peer: NodeId, version: int) -> None:
        send, recv = self._noise.split()
        self._step = 3
        self._result = HandshakeResult(
            peer=peer,
            version=version,
            cipher=TransportCipher(send, recv),
            handshake_hash=self._noise.handshake_hash,
        )
