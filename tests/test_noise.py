"""Tests of p2pdm.noise against the public Noise vectors and for hostile input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

from p2pdm.noise import (
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    TAGLEN,
    CipherState,
    HandshakeState,
    NoiseError,
    NoiseUsageError,
)

VECTOR_DIR = Path(__file__).parent / "vectors"
VECTOR_FILES = ("noise-snow-XX_25519_ChaChaPoly.json", "noise-c-basic-XX_25519_ChaChaPoly.json")
PROTOCOL_PREFIX = "Noise_XX_25519_ChaChaPoly_"
HASHES = ("BLAKE2b", "SHA256")
HANDSHAKE_MESSAGES = 3

# Fixed keys for the non-vector tests: any 32 bytes are an X25519 private key.
I_STATIC, I_EPHEMERAL = b"\x01" * 32, b"\x02" * 32
R_STATIC, R_EPHEMERAL = b"\x03" * 32, b"\x04" * 32
PROLOGUE = b"p2pdm test"
KEY = bytes(range(32))

ALL_ZERO = bytes(32)
ORDER_8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def load_vectors() -> list[tuple[str, int, dict[str, Any]]]:
    cases = []
    for name in VECTOR_FILES:
        doc = json.loads((VECTOR_DIR / name).read_text())
        cases += [(name, i, vector) for i, vector in enumerate(doc["vectors"])]
    return cases


VECTORS = load_vectors()


def protocol_of(vector: dict[str, Any]) -> str:
    # snow's files say "protocol_name", noise-c's say "name".
    name = vector.get("protocol_name", vector.get("name"))
    assert isinstance(name, str)
    return name


def public(private: bytes) -> bytes:
    return nacl.bindings.crypto_scalarmult_base(private)


def pair(hash_name: str = "BLAKE2b") -> tuple[HandshakeState, HandshakeState]:
    initiator = HandshakeState(
        initiator=True,
        prologue=PROLOGUE,
        static_private=I_STATIC,
        hash_name=hash_name,
        ephemeral_private=I_EPHEMERAL,
    )
    responder = HandshakeState(
        initiator=False,
        prologue=PROLOGUE,
        static_private=R_STATIC,
        hash_name=hash_name,
        ephemeral_private=R_EPHEMERAL,
    )
    return initiator, responder


def handshake(
    hash_name: str = "BLAKE2b",
) -> tuple[
    HandshakeState, HandshakeState, tuple[CipherState, CipherState, CipherState, CipherState]
]:
    """A full handshake; returns both states and (i_send, i_recv, r_send, r_recv)."""
    initiator, responder = pair(hash_name)
    responder.read_message(initiator.write_message(b"one"))
    initiator.read_message(responder.write_message(b"two"))
    responder.read_message(initiator.write_message(b"three"))
    return initiator, responder, (*initiator.split(), *responder.split())


# --- the public vectors -----------------------------------------------------


def test_vector_files_cover_both_suites() -> None:
    # Guards against a silently empty parametrization below.
    for name in VECTOR_FILES:
        protocols = {protocol_of(v) for file, _, v in VECTORS if file == name}
        assert protocols == {PROTOCOL_PREFIX + h for h in HASHES}, name


@pytest.mark.parametrize(
    ("file", "index", "vector"),
    VECTORS,
    ids=[f"{file.split('-XX')[0]}-{i}-{protocol_of(v)}" for file, i, v in VECTORS],
)
def test_vector(file: str, index: int, vector: dict[str, Any]) -> None:
    protocol = protocol_of(vector)
    assert protocol.startswith(PROTOCOL_PREFIX)
    hash_name = protocol.removeprefix(PROTOCOL_PREFIX)
    # Only plain XX vectors: no PSKs, no pre-shared remote keys, no expected failure.
    assert not vector.get("init_psks")
    assert not vector.get("resp_psks")
    assert "init_remote_static" not in vector
    assert "resp_remote_static" not in vector
    assert not vector.get("fail", False)

    def side(prefix: str) -> HandshakeState:
        return HandshakeState(
            initiator=prefix == "init",
            prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
            static_private=bytes.fromhex(vector[f"{prefix}_static"]),
            hash_name=hash_name,
            ephemeral_private=bytes.fromhex(vector[f"{prefix}_ephemeral"]),
        )

    initiator, responder = side("init"), side("resp")
    messages = [
        (bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])) for m in vector["messages"]
    ]
    assert len(messages) > HANDSHAKE_MESSAGES

    for i, (payload, ciphertext) in enumerate(messages[:HANDSHAKE_MESSAGES]):
        writer, reader = (initiator, responder) if i % 2 == 0 else (responder, initiator)
        assert writer.write_message(payload) == ciphertext, f"handshake message {i}"
        assert reader.read_message(ciphertext) == payload, f"handshake message {i}"

    assert initiator.complete
    assert responder.complete
    assert initiator.remote_static == public(bytes.fromhex(vector["resp_static"]))
    assert responder.remote_static == public(bytes.fromhex(vector["init_static"]))
    assert initiator.handshake_hash == responder.handshake_hash
    if "handshake_hash" in vector:
        assert initiator.handshake_hash == bytes.fromhex(vector["handshake_hash"])

    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    for i, (payload, ciphertext) in enumerate(messages[HANDSHAKE_MESSAGES:], HANDSHAKE_MESSAGES):
        send, recv = (i_send, r_recv) if i % 2 == 0 else (r_send, i_recv)
        assert send.encrypt_with_ad(b"", payload) == ciphertext, f"transport message {i}"
        assert recv.decrypt_with_ad(b"", ciphertext) == payload, f"transport message {i}"


# --- tampering ---------------------------------------------------------------


def flip(message: bytes, index: int, mask: int = 0x01) -> bytes:
    return message[:index] + bytes([message[index] ^ mask]) + message[index + 1 :]


def exchange_until(hash_name: str, number: int) -> tuple[HandshakeState, HandshakeState, bytes]:
    """Run handshake messages before `number`, write that one: (writer, reader, message)."""
    initiator, responder = pair(hash_name)
    writer, reader = initiator, responder
    for _ in range(number - 1):
        reader.read_message(writer.write_message(b"payload"))
        writer, reader = reader, writer
    return writer, reader, writer.write_message(b"payload")


@pytest.mark.parametrize("hash_name", HASHES)
def test_tampered_message_1_breaks_message_2(hash_name: str) -> None:
    # Message 1 (e, clear payload) has no key to authenticate it, so its reader
    # cannot notice; the change enters the responder's h and message 2's tags fail.
    genuine = exchange_until(hash_name, 1)[2]
    for index in range(len(genuine)):
        initiator, responder, message = exchange_until(hash_name, 1)
        assert message == genuine
        responder.read_message(flip(message, index))
        with pytest.raises(NoiseError, match="authentication failed"):
            initiator.read_message(responder.write_message(b""))


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("number", [2, 3])
def test_tampered_handshake_message_is_refused(hash_name: str, number: int) -> None:
    genuine = exchange_until(hash_name, number)[2]
    for index in range(len(genuine)):
        _, reader, message = exchange_until(hash_name, number)
        assert message == genuine
        with pytest.raises(NoiseError, match="authentication failed"):
            reader.read_message(flip(message, index))
        # A failed handshake is dead, even for the genuine message.
        with pytest.raises(NoiseUsageError, match="failed"):
            reader.read_message(message)


def test_tampered_transport_message_does_not_advance_nonce() -> None:
    _, _, (i_send, _, _, r_recv) = handshake()
    first = i_send.encrypt_with_ad(b"", b"first")
    second = i_send.encrypt_with_ad(b"", b"second")
    for index in range(len(first)):
        with pytest.raises(NoiseError, match="authentication failed"):
            r_recv.decrypt_with_ad(b"", flip(first, index, 0x80))
        assert r_recv.nonce == 0
    with pytest.raises(NoiseError):
        r_recv.decrypt_with_ad(b"other ad", first)
    assert r_recv.decrypt_with_ad(b"", first) == b"first"
    assert r_recv.decrypt_with_ad(b"", second) == b"second"
    assert r_recv.nonce == 2


def test_short_and_oversized_messages_are_noise_errors() -> None:
    initiator, responder = pair()
    with pytest.raises(NoiseError, match="shorter than its minimum of 32"):
        responder.read_message(b"\x09" * 31)
    initiator, responder = pair()
    with pytest.raises(NoiseError, match="exceeds the Noise limit"):
        responder.read_message(initiator.write_message(b"") + bytes(MAX_MESSAGE_LEN))
    initiator, responder = pair()
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(NoiseError, match="shorter than its minimum of 96"):
        initiator.read_message(responder.write_message(b"")[:-1])
    _, _, (_, _, _, i_recv) = handshake()
    with pytest.raises(NoiseError, match="shorter than its 16-byte tag"):
        i_recv.decrypt_with_ad(b"", bytes(TAGLEN - 1))
    with pytest.raises(NoiseError, match="exceeds the Noise limit"):
        i_recv.decrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN + 1))


# --- weak keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (ALL_ZERO, "all-zero"),
        (ORDER_8, "low-order"),
        # The same point with bit 255 set, which X25519 ignores.
        (ORDER_8[:31] + bytes([ORDER_8[31] | 0x80]), "low-order"),
        ((1).to_bytes(32, "little"), "low-order"),
        ((2**255 - 19).to_bytes(32, "little"), "low-order"),  # p, a second encoding of 0
    ],
    ids=["all-zero", "order-8", "order-8-high-bit", "one", "p"],
)
def test_weak_ephemeral_in_message_1_is_refused(key: bytes, kind: str) -> None:
    _, responder = pair()
    with pytest.raises(NoiseError, match=f"{kind} X25519 ephemeral public key"):
        responder.read_message(key + b"payload")
    with pytest.raises(NoiseUsageError):
        responder.write_message(b"")


# --- misuse ------------------------------------------------------------------


def test_out_of_turn_is_a_usage_error() -> None:
    initiator, responder = pair()
    with pytest.raises(NoiseUsageError, match="the peer's to write"):
        responder.write_message(b"")
    with pytest.raises(NoiseUsageError, match="ours to write"):
        initiator.read_message(b"\x09" * 100)
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(NoiseUsageError, match="the peer's to write"):
        initiator.write_message(b"")
    # A usage error leaves the handshake usable.
    initiator.read_message(responder.write_message(b""))
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(NoiseUsageError, match="already complete"):
        initiator.write_message(b"")
    with pytest.raises(NoiseUsageError, match="already complete"):
        responder.read_message(b"\x09" * 100)


def test_split_and_hash_need_a_complete_handshake() -> None:
    initiator, responder = pair()
    with pytest.raises(NoiseUsageError, match="split before the handshake is complete"):
        initiator.split()
    with pytest.raises(NoiseUsageError, match="only final"):
        _ = initiator.handshake_hash
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    with pytest.raises(NoiseUsageError, match="2 of 3"):
        initiator.split()
    responder.read_message(initiator.write_message(b""))
    initiator.split()
    with pytest.raises(NoiseUsageError, match="already called"):
        initiator.split()


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(NoiseUsageError, match="unknown hash"):
        HandshakeState(initiator=True, prologue=b"", static_private=I_STATIC, hash_name="MD5")
    with pytest.raises(NoiseUsageError, match="static_private must be 32 bytes"):
        HandshakeState(initiator=True, prologue=b"", static_private=b"short")
    with pytest.raises(NoiseUsageError, match="ephemeral_private must be 32 bytes"):
        HandshakeState(initiator=True, prologue=b"", static_private=I_STATIC, ephemeral_private=b"")
    bad_rng = HandshakeState(
        initiator=True, prologue=b"", static_private=I_STATIC, rng=lambda n: bytes(n - 1)
    )
    with pytest.raises(NoiseUsageError, match="rng output"):
        bad_rng.write_message(b"")
    with pytest.raises(NoiseUsageError, match="cipher key must be 32 bytes"):
        CipherState(b"short")
    with pytest.raises(NoiseUsageError, match="outside"):
        CipherState(KEY, nonce=MAX_NONCE + 1)


def test_payload_size_limits() -> None:
    # Message 1 is e (32 bytes) + a clear payload; the whole must fit 65535 bytes.
    initiator, responder = pair()
    with pytest.raises(NoiseUsageError, match="at most 65503"):
        initiator.write_message(bytes(MAX_MESSAGE_LEN - 32 + 1))
    msg1 = initiator.write_message(bytes(MAX_MESSAGE_LEN - 32))
    assert len(msg1) == MAX_MESSAGE_LEN
    assert responder.read_message(msg1) == bytes(MAX_MESSAGE_LEN - 32)
    # Message 2 carries e, an encrypted s and a tag on the payload.
    with pytest.raises(NoiseUsageError, match="at most 65439"):
        responder.write_message(bytes(MAX_MESSAGE_LEN - 96 + 1))
    _, _, (i_send, _, _, r_recv) = handshake()
    with pytest.raises(NoiseUsageError, match="exceeds the Noise limit"):
        i_send.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN - TAGLEN + 1))
    assert i_send.nonce == 0
    largest = i_send.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN - TAGLEN))
    assert len(largest) == MAX_MESSAGE_LEN
    assert r_recv.decrypt_with_ad(b"", largest) == bytes(MAX_MESSAGE_LEN - TAGLEN)


# --- CipherState -------------------------------------------------------------


def test_rekey_matches_on_both_sides() -> None:
    _, _, (i_send, i_recv, r_send, r_recv) = handshake()
    before = i_send.encrypt_with_ad(b"", b"x")
    assert r_recv.decrypt_with_ad(b"", before) == b"x"
    i_send.rekey()
    r_recv.rekey()
    after = i_send.encrypt_with_ad(b"", b"x")
    assert r_recv.decrypt_with_ad(b"", after) == b"x"
    # Same nonce (rekey keeps n), same plaintext, other key: other ciphertext.
    assert CipherState(KEY, nonce=1).encrypt_with_ad(b"", b"x") != after
    # Only one side rekeying breaks the stream.
    r_send.rekey()
    with pytest.raises(NoiseError):
        i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"y"))


def test_rekey_is_the_spec_function() -> None:
    # REKEY(k) = first 32 bytes of ENCRYPT(k, 2^64-1, zerolen, 32 zero bytes) (spec 4.2).
    nonce = bytes(4) + MAX_NONCE.to_bytes(8, "little")
    new_key = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(bytes(32), b"", nonce, KEY)
    cipher = CipherState(KEY, nonce=5)
    cipher.rekey()
    assert cipher.nonce == 5
    assert cipher.encrypt_with_ad(b"ad", b"msg") == CipherState(new_key[:32], 5).encrypt_with_ad(
        b"ad", b"msg"
    )
    with pytest.raises(NoiseUsageError, match="rekey needs a key"):
        CipherState().rekey()


def test_nonce_exhaustion() -> None:
    # 2^64-2 is the last nonce that may be used; 2^64-1 is reserved for rekey.
    send, recv = CipherState(KEY, nonce=MAX_NONCE - 1), CipherState(KEY, nonce=MAX_NONCE - 1)
    last = send.encrypt_with_ad(b"", b"last")
    assert recv.decrypt_with_ad(b"", last) == b"last"
    assert send.nonce == recv.nonce == MAX_NONCE
    with pytest.raises(NoiseUsageError, match="nonce space exhausted"):
        send.encrypt_with_ad(b"", b"more")
    with pytest.raises(NoiseUsageError, match="nonce space exhausted"):
        recv.decrypt_with_ad(b"", last)
    send.rekey()  # rekey still works, but does not reset n
    with pytest.raises(NoiseUsageError, match="nonce space exhausted"):
        send.encrypt_with_ad(b"", b"more")


def test_keyless_cipher_passes_data_through() -> None:
    cipher = CipherState()
    assert not cipher.has_key
    assert cipher.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cipher.decrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cipher.nonce == 0


# --- whole handshakes --------------------------------------------------------


@pytest.mark.parametrize("hash_name", HASHES)
def test_handshake_roundtrip(hash_name: str) -> None:
    initiator, responder = pair(hash_name)
    assert initiator.protocol_name(hash_name) == PROTOCOL_PREFIX + hash_name
    # Tuples, so that mypy does not narrow the properties for the rest of the test.
    assert (initiator.writing, responder.writing) == (True, False)
    assert (initiator.remote_static, responder.remote_static) == (None, None)
    assert responder.read_message(initiator.write_message(b"one")) == b"one"
    assert (initiator.remote_static, responder.remote_static) == (None, None)
    assert initiator.read_message(responder.write_message(b"two")) == b"two"
    assert initiator.remote_static == public(R_STATIC) == responder.static_public
    assert responder.read_message(initiator.write_message(b"three")) == b"three"
    assert responder.remote_static == public(I_STATIC)
    assert (initiator.writing, responder.writing) == (False, False)
    assert len(initiator.handshake_hash) == (64 if hash_name == "BLAKE2b" else 32)
    assert initiator.handshake_hash == responder.handshake_hash
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    for n in range(3):
        assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"ping %d" % n))
        assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"pong %d" % n))


def test_rng_makes_the_ephemeral() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return b"\x07" * n

    initiator = HandshakeState(initiator=True, prologue=b"", static_private=I_STATIC, rng=rng)
    assert initiator.write_message(b"")[:32] == public(b"\x07" * 32)
    assert calls == [32]


def test_prologue_mismatch_fails() -> None:
    initiator = HandshakeState(initiator=True, prologue=b"a", static_private=I_STATIC)
    responder = HandshakeState(initiator=False, prologue=b"b", static_private=R_STATIC)
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(NoiseError, match="authentication failed"):
        initiator.read_message(responder.write_message(b""))


def test_hash_suite_mismatch_fails() -> None:
    initiator, _ = pair("BLAKE2b")
    _, responder = pair("SHA256")
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(NoiseError):
        initiator.read_message(responder.write_message(b""))
