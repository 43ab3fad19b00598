"""Noise_XX_25519_ChaChaPoly_{BLAKE2b,SHA256}, sans-IO.

A small implementation of the Noise Protocol Framework (revision 34) for the
one handshake pattern p2pdm uses:

    XX:
      -> e
      <- e, ee, s, es
      -> s, se

Like h11, nothing here touches a socket or a clock, and randomness is a
parameter: `HandshakeState.write_message(payload)` returns the bytes to send,
`read_message(message)` returns the peer's payload, and once `complete` is
true `split()` hands out the two transport `CipherState`s, already oriented
(send, receive) for this side.

Two kinds of error: `NoiseError` means the peer (or the network) sent bad
bytes; `NoiseUsageError` means this process called something it should not
have. A call refused up front (out of turn, payload too big) changes
nothing; a handshake whose read or write failed part way is dead, and any
further call on it raises `NoiseUsageError`: start a new one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.exceptions
import nacl.utils

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DHLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "TAGLEN",
    "CipherState",
    "HandshakeState",
    "NoiseError",
    "NoiseUsageError",
]

# Every Noise message, handshake or transport, fits a 16-bit length prefix (spec 3).
MAX_MESSAGE_LEN = 65535
# Nonce 2^64-1 is reserved for REKEY (spec 5.1), so a key encrypts at most 2^64-1 messages.
MAX_NONCE = 2**64 - 1
# X25519 public keys and shared secrets are 32 bytes (spec 12.1).
DHLEN = 32
# ChaChaPoly keys are 32 bytes (spec 5).
KEYLEN = 32
# Poly1305 authentication tag appended to each ciphertext (spec 5).
TAGLEN = 16

# X25519 public keys of small order, as 255-bit integers (bit 255 is ignored by
# X25519): 0, 1, the two points of order 8, and p-1, p, p+1. A DH with any of
# them gives a predictable secret, so a peer that sends one is refused.
_P = 2**255 - 19
_SMALL_ORDER = frozenset(
    {
        0,
        1,
        int.from_bytes(
            bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            "little",
        ),
        int.from_bytes(
            bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            "little",
        ),
        _P - 1,
        _P,
        _P + 1,
    }
)


class NoiseError(Exception):
    """The peer's bytes are bad: failed authentication, wrong length, weak key."""


class NoiseUsageError(Exception):
    """Local misuse: out of turn, not finished, nonce exhausted, bad argument."""


# --- primitives --------------------------------------------------------------


@dataclass(frozen=True)
class _Hash:
    name: str
    hashlen: int
    # hashlib's name; its block_size is the spec's BLOCKLEN, which hmac pads to.
    hashlib_name: str

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.hashlib_name, data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.hashlib_name)

    def hkdf(self, chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
        # Spec 4.3: HKDF with HMAC-HASH, two or three outputs of HASHLEN bytes.
        temp_key = self.hmac(chaining_key, ikm)
        out = [self.hmac(temp_key, b"\x01")]
        for i in range(2, outputs + 1):
            out.append(self.hmac(temp_key, out[-1] + bytes([i])))
        return out


_HASHES = {
    "BLAKE2b": _Hash("BLAKE2b", 64, "blake2b"),  # BLOCKLEN 128
    "SHA256": _Hash("SHA256", 32, "sha256"),  # BLOCKLEN 64
}


def _check_key_length(name: str, key: bytes) -> None:
    if len(key) != DHLEN:
        raise NoiseUsageError(f"{name} must be {DHLEN} bytes, got {len(key)}")


def _check_public_key(what: str, public: bytes) -> None:
    if int.from_bytes(public, "little") & ~(1 << 255) in _SMALL_ORDER:
        kind = "all-zero" if not any(public) else "low-order"
        raise NoiseError(f"peer sent a {kind} X25519 {what} public key")


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_scalarmult(private, public)
    except RuntimeError:
        # libsodium refuses small-order points and all-zero results; public keys
        # are screened on receipt, so this is a backstop.
        raise NoiseError("X25519 gave an all-zero shared secret (low-order public key)") from None


def _nonce_bytes(n: int) -> bytes:
    # ChaChaPoly (IETF): 32 zero bits, then the 64-bit counter little-endian (spec 12.3).
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


# --- CipherState (spec 5.1) -------------------------------------------------


class CipherState:
    """A ChaChaPoly key and a nonce counter; without a key it passes data through.

    `nonce` is the counter the next encrypt/decrypt uses. Passing `nonce` to the
    constructor resumes a key at a known counter (and lets tests reach the end of
    the nonce space); a `CipherState` never reuses or skips a nonce on its own.
    """

    __slots__ = ("_k", "_n")

    def __init__(self, key: bytes | None = None, nonce: int = 0) -> None:
        if key is not None and len(key) != KEYLEN:
            raise NoiseUsageError(f"cipher key must be {KEYLEN} bytes, got {len(key)}")
        if not 0 <= nonce <= MAX_NONCE:
            raise NoiseUsageError(f"nonce {nonce} is outside 0..2^64-1")
        self._k = key
        self._n = nonce

    @property
    def has_key(self) -> bool:
        return self._k is not None

    @property
    def nonce(self) -> int:
        return self._n

    def _next_nonce(self) -> int:
        if self._n >= MAX_NONCE:
            raise NoiseUsageError("nonce space exhausted (2^64-1 is reserved): rekey will not help")
        return self._n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._k is None:
            return plaintext
        if len(plaintext) + TAGLEN > MAX_MESSAGE_LEN:
            raise NoiseUsageError(
                f"plaintext of {len(plaintext)} bytes exceeds the Noise limit of "
                f"{MAX_MESSAGE_LEN - TAGLEN} (tag included: {MAX_MESSAGE_LEN})"
            )
        n = self._next_nonce()
        ciphertext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, ad, _nonce_bytes(n), self._k
        )
        self._n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._k is None:
            return ciphertext
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise NoiseError(
                f"ciphertext of {len(ciphertext)} bytes exceeds the Noise limit of "
                f"{MAX_MESSAGE_LEN}"
            )
        if len(ciphertext) < TAGLEN:
            raise NoiseError(
                f"ciphertext of {len(ciphertext)} bytes is shorter than its {TAGLEN}-byte tag"
            )
        n = self._next_nonce()
        try:
            plaintext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _nonce_bytes(n), self._k
            )
        except nacl.exceptions.CryptoError:
            # The nonce stays put (spec 5.1), so the next genuine message still decrypts.
            raise NoiseError(f"authentication failed (nonce {n})") from None
        self._n = n + 1
        return plaintext

    def rekey(self) -> None:
        """k = first 32 bytes of ENCRYPT(k, 2^64-1, empty, 32 zeros) (spec 4.2); n is kept."""
        if self._k is None:
            raise NoiseUsageError("rekey needs a key")
        self._k = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(KEYLEN), b"", _nonce_bytes(MAX_NONCE), self._k
        )[:KEYLEN]


# --- SymmetricState (spec 5.2) ----------------------------------------------


class _SymmetricState:
    __slots__ = ("_ck", "_hash", "cipher", "h")

    def __init__(self, hash_: _Hash, protocol_name: bytes) -> None:
        self._hash = hash_
        if len(protocol_name) <= hash_.hashlen:
            self.h = protocol_name.ljust(hash_.hashlen, b"\x00")
        else:
            self.h = hash_.digest(protocol_name)
        self._ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self._ck, temp_k = self._hash.hkdf(self._ck, ikm, 2)
        # BLAKE2b's 64-byte outputs are cut to the cipher's key length.
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = self._hash.digest(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = self._hash.hkdf(self._ck, b"", 2)
        self._ck = b""  # nothing more may be derived from this handshake
        return CipherState(k1[:KEYLEN]), CipherState(k2[:KEYLEN])


# --- HandshakeState (spec 5.3) ----------------------------------------------


class Token(Enum):
    E = "e"
    S = "s"
    EE = "ee"
    ES = "es"
    SE = "se"
    SS = "ss"


# One tuple of tokens per message; messages alternate initiator, responder, ...
XX: tuple[tuple[Token, ...], ...] = (
    (Token.E,),
    (Token.E, Token.EE, Token.S, Token.ES),
    (Token.S, Token.SE),
)


@dataclass(frozen=True)
class _KeyPair:
    private: bytes
    public: bytes

    @classmethod
    def from_private(cls, private: bytes) -> _KeyPair:
        return cls(private, nacl.bindings.crypto_scalarmult_base(private))


class HandshakeState:
    """One side of a Noise XX handshake.

    `static_private` is this side's long-term X25519 key. `ephemeral_private`
    fixes the ephemeral key (test vectors only); otherwise `rng(32)` makes one.
    """

    def __init__(
        self,
        initiator: bool,
        prologue: bytes,
        static_private: bytes,
        hash_name: str = "BLAKE2b",
        ephemeral_private: bytes | None = None,
        rng: Callable[[int], bytes] = nacl.utils.random,
    ) -> None:
        hash_ = _HASHES.get(hash_name)
        if hash_ is None:
            raise NoiseUsageError(f"unknown hash {hash_name!r}: expected one of {sorted(_HASHES)}")
        _check_key_length("static_private", static_private)
        if ephemeral_private is not None:
            _check_key_length("ephemeral_private", ephemeral_private)
        self._initiator = initiator
        self._rng = rng
        self._s = _KeyPair.from_private(static_private)
        self._e_private = ephemeral_private
        self._e: _KeyPair | None = None
        self._rs: bytes | None = None
        self._re: bytes | None = None
        self._symmetric = _SymmetricState(hash_, self.protocol_name(hash_name).encode())
        self._symmetric.mix_hash(prologue)
        # XX has no pre-messages, so nothing else is hashed before message 1.
        self._index = 0  # next message of XX to write or read
        self._failed = False
        self._split_done = False

    @staticmethod
    def protocol_name(hash_name: str = "BLAKE2b") -> str:
        return f"Noise_XX_25519_ChaChaPoly_{hash_name}"

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def complete(self) -> bool:
        return self._index == len(XX)

    @property
    def writing(self) -> bool:
        """True when the next step is ours to write (False when complete)."""
        return not self.complete and (self._index % 2 == 0) == self._initiator

    @property
    def static_public(self) -> bytes:
        return self._s.public

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once a message has carried it."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """h after the last message: a unique id of this session (channel binding)."""
        if not self.complete:
            raise NoiseUsageError("the handshake hash is only final once the handshake is complete")
        return self._symmetric.h

    def write_message(self, payload: bytes) -> bytes:
        tokens = self._step("write", expect_writing=True)
        limit = MAX_MESSAGE_LEN - self._overhead(tokens)
        if len(payload) > limit:
            raise NoiseUsageError(
                f"payload of {len(payload)} bytes is too big for XX message {self._index + 1} "
                f"(at most {limit})"
            )
        try:
            out = bytearray()
            for token in tokens:
                if token is Token.E:
                    private = self._e_private or self._rng(DHLEN)
                    _check_key_length("rng output for the ephemeral key", private)
                    e = self._e = _KeyPair.from_private(private)
                    out += e.public
                    self._symmetric.mix_hash(e.public)
                elif token is Token.S:
                    out += self._symmetric.encrypt_and_hash(self._s.public)
                else:
                    self._mix_dh(token)
            out += self._symmetric.encrypt_and_hash(payload)
        except BaseException:
            self._failed = True
            raise
        self._index += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        tokens = self._step("read", expect_writing=False)
        try:
            if len(message) > MAX_MESSAGE_LEN:
                raise NoiseError(
                    f"handshake message of {len(message)} bytes exceeds the Noise limit of "
                    f"{MAX_MESSAGE_LEN}"
                )
            need = self._overhead(tokens)
            if len(message) < need:
                raise NoiseError(
                    f"XX message {self._index + 1} is {len(message)} bytes, "
                    f"shorter than its minimum of {need}"
                )
            view = memoryview(message)
            for token in tokens:
                if token is Token.E:
                    self._re = bytes(view[:DHLEN])
                    view = view[DHLEN:]
                    _check_public_key("ephemeral", self._re)
                    self._symmetric.mix_hash(self._re)
                elif token is Token.S:
                    size = DHLEN + (TAGLEN if self._symmetric.cipher.has_key else 0)
                    rs = self._symmetric.decrypt_and_hash(bytes(view[:size]))
                    view = view[size:]
                    _check_public_key("static", rs)
                    self._rs = rs
                else:
                    self._mix_dh(token)
            payload = self._symmetric.decrypt_and_hash(bytes(view))
        except BaseException:
            self._failed = True
            raise
        self._index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) transport ciphers for this side; callable once."""
        if self._failed:
            raise NoiseUsageError("the handshake failed; start a new one")
        if not self.complete:
            raise NoiseUsageError(
                f"split before the handshake is complete ({self._index} of {len(XX)} messages)"
            )
        if self._split_done:
            raise NoiseUsageError("split was already called: its ciphers must not be duplicated")
        self._split_done = True
        c1, c2 = self._symmetric.split()  # c1 carries initiator -> responder
        return (c1, c2) if self._initiator else (c2, c1)

    # -- internals --

    def _step(self, action: str, *, expect_writing: bool) -> tuple[Token, ...]:
        if self._failed:
            raise NoiseUsageError("the handshake failed; start a new one")
        if self.complete:
            raise NoiseUsageError(f"cannot {action}: the handshake is already complete")
        if self.writing != expect_writing:
            turn = "ours to write" if self.writing else "the peer's to write"
            raise NoiseUsageError(f"cannot {action} XX message {self._index + 1}: it is {turn}")
        return XX[self._index]

    def _overhead(self, tokens: tuple[Token, ...]) -> int:
        """Bytes a message of these tokens adds around its payload."""
        keyed = self._symmetric.cipher.has_key
        size = 0
        for token in tokens:
            if token is Token.E:
                size += DHLEN
            elif token is Token.S:
                size += DHLEN + (TAGLEN if keyed else 0)
            else:
                keyed = True  # every DH token mixes a key in
        return size + (TAGLEN if keyed else 0)

    def _mix_dh(self, token: Token) -> None:
        # Token "xy" is DH(initiator's x, responder's y); the responder swaps sides.
        mine, theirs = (0, 1) if self._initiator else (1, 0)
        local, remote = token.value[mine], token.value[theirs]
        pair = self._s if local == "s" else self._e
        public = self._rs if remote == "s" else self._re
        if pair is None or public is None:  # cannot happen with the XX table
            raise NoiseUsageError(f"token {token.value!r} needs a key this side lacks")
        self._symmetric.mix_key(_dh(pair.private, public))
