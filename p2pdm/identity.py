"""Node identity: Ed25519 keys, node ids, the key file at rest, safety numbers.

A node *is* its Ed25519 key pair. Its node id is the public key written as
text with a checksum, so that a mistyped id is rejected instead of naming
some other key. The same key converted to X25519 (libsodium's
ed25519->curve25519 map) is what end-to-end envelopes are sealed to.

Node id encoding (docs/PROTOCOL.md has the details):
    base32( public_key[32] || BLAKE2b-24(public_key, person="p2pdm-node-id") )
lower case, RFC 4648 alphabet, no padding: 35 bytes -> exactly 56 characters.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nacl.bindings
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

if TYPE_CHECKING:
    from pathlib import Path

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
SEED_LEN = 32
# 3 checksum bytes: a random typo slips through with probability 2^-24.
NODE_ID_CHECKSUM_LEN = 3
NODE_ID_TEXT_LEN = 56  # base32 of 35 bytes, no padding
_NODE_ID_PERSON = b"p2pdm-node-id"
_SAFETY_PERSON = b"p2pdm-safety-no"
_BASE32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")

KEY_FILE_FORMAT = "p2pdm-key"
KEY_FILE_VERSION = 1
# Larger than any key file we write; bounds what a corrupted path makes us read.
MAX_KEY_FILE_SIZE = 4096
# Argon2id cost for a passphrase-locked key: libsodium's "moderate" (256 MiB,
# about a second), since unlocking happens once per daemon start.
DEFAULT_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
DEFAULT_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE
# Refuse key files asking for absurd Argon2 costs (a planted file must not
# make the daemon allocate gigabytes before failing).
MAX_MEMLIMIT = 1 << 30
MAX_OPSLIMIT = 16


class IdentityError(ValueError):
    """Base of every identity error; the message says what is wrong."""


class InvalidNodeId(IdentityError):
    """Text that is not a well-formed node id (wrong length, alphabet or checksum)."""


class KeyFileError(IdentityError):
    """A key file that is missing, unsafe, malformed, or locked with another passphrase."""


class BadSignature(IdentityError):
    """A signature that does not verify under the claimed key."""


def _checksum(public_key: bytes) -> bytes:
    return hashlib.blake2b(
        public_key, digest_size=NODE_ID_CHECKSUM_LEN, person=_NODE_ID_PERSON
    ).digest()


# Ids are printed on every event and log line; a node knows few peers.
@functools.lru_cache(maxsize=4096)
def _node_id_text(public_key: bytes) -> str:
    raw = public_key + _checksum(public_key)
    return base64.b32encode(raw).decode("ascii").lower()


@dataclass(frozen=True, order=True)
class NodeId:
    """A node's Ed25519 public key; `str()` gives the checksummed text form."""

    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_LEN:
            raise InvalidNodeId(f"a node id is a {PUBLIC_KEY_LEN}-byte Ed25519 public key")

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse the text form, rejecting anything mistyped with a clear reason."""
        cleaned = text.strip().lower()
        if len(cleaned) != NODE_ID_TEXT_LEN:
            raise InvalidNodeId(
                f"a node id has {NODE_ID_TEXT_LEN} characters, this has {len(cleaned)}"
            )
        bad = sorted(set(cleaned) - _BASE32_ALPHABET)
        if bad:
            raise InvalidNodeId(f"a node id uses only a-z and 2-7; found {''.join(bad)!r}")
        raw = base64.b32decode(cleaned.upper())  # 56 characters need no padding
        key, check = raw[:PUBLIC_KEY_LEN], raw[PUBLIC_KEY_LEN:]
        if _checksum(key) != check:
            raise InvalidNodeId("node id checksum does not match: the id is mistyped")
        return cls(key)

    def __str__(self) -> str:
        return _node_id_text(self.public_key)

    def short(self) -> str:
        """A prefix for logs; never use it to identify a peer."""
        return str(self)[:10]

    def x25519_public_key(self) -> bytes:
        """The X25519 key envelopes for this node are sealed to."""
        try:
            return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.public_key)
        except (RuntimeError, nacl.exceptions.CryptoError) as exc:
            raise InvalidNodeId("node id is not a valid Ed25519 point") from exc

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise BadSignature unless `signature` is this node's over `message`."""
        if len(signature) != SIGNATURE_LEN:
            raise BadSignature(f"a signature is {SIGNATURE_LEN} bytes, got {len(signature)}")
        try:
            nacl.signing.VerifyKey(self.public_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError) as exc:
            raise BadSignature(f"signature by {self.short()} does not verify") from exc


class Identity:
    """A node's private key. Holds the seed in memory; never logged or printed."""

    __slots__ = ("_signing_key", "_x25519_private", "node_id")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise IdentityError(f"an Ed25519 seed is {SEED_LEN} bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.node_id = NodeId(bytes(self._signing_key.verify_key))
        sk = self._signing_key.encode() + self.node_id.public_key
        self._x25519_private = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(sk)

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.utils.random(SEED_LEN))

    @property
    def seed(self) -> bytes:
        return self._signing_key.encode()

    @property
    def x25519_private_key(self) -> bytes:
        """The private half of the X25519 key derived from the signing key."""
        return self._x25519_private

    def sign(self, message: bytes) -> bytes:
        """Detached Ed25519 signature over `message` (callers add domain separation)."""
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"Identity({self.node_id.short()}…)"


def safety_number(a: NodeId, b: NodeId) -> str:
    """Twelve groups of five digits that both ends of a pair compute alike.

    The two keys are sorted first, so A and B read out the same number; any
    other key on either side changes it (BLAKE2b over both keys).
    """
    low, high = sorted((a.public_key, b.public_key))
    digest = hashlib.blake2b(low + high, digest_size=60, person=_SAFETY_PERSON).digest()
    groups = (int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 60, 5))
    return " ".join(f"{g:05d}" for g in groups)


# --- key file ---------------------------------------------------------------


def _unsafe_mode(mode: int) -> bool:
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def write_key_file(
    path: Path,
    identity: Identity,
    passphrase: str | None = None,
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> None:
    """Write the key file atomically with mode 0600; never replace an existing one.

    The file is written to a temporary name, fsynced, then hard-linked into
    place (link fails if the target exists, so two `init`s cannot race).
    """
    doc: dict[str, Any] = {
        "format": KEY_FILE_FORMAT,
        "version": KEY_FILE_VERSION,
        "node_id": str(identity.node_id),
    }
    if passphrase is None:
        doc["lock"] = "none"
        doc["seed"] = identity.seed.hex()
    else:
        if not passphrase:
            raise KeyFileError("an empty passphrase locks nothing; omit it instead")
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE, passphrase.encode(), salt, opslimit, memlimit
        )
        box = nacl.secret.SecretBox(key).encrypt(identity.seed)
        doc.update(
            lock="argon2id",
            salt=salt.hex(),
            opslimit=opslimit,
            memlimit=memlimit,
            box=bytes(box).hex(),
        )
    data = (json.dumps(doc, indent=2) + "\n").encode()

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        raise KeyFileError(f"{path} already exists; refusing to overwrite an identity")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise KeyFileError(
                f"{path} already exists; refusing to overwrite an identity"
            ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_key_doc(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}; run `p2pdm init` first") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        if _unsafe_mode(st.st_mode):
            raise KeyFileError(
                f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
                f"can read it; fix with `chmod 600 {path}`"
            )
        if st.st_size > MAX_KEY_FILE_SIZE:
            raise KeyFileError(f"key file {path} is {st.st_size} bytes: not a p2pdm key file")
        raw = f.read(MAX_KEY_FILE_SIZE + 1)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"key file {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
        raise KeyFileError(f"{path} is not a p2pdm key file")
    if doc.get("version") != KEY_FILE_VERSION:
        raise KeyFileError(
            f"key file {path} has version {doc.get('version')!r}; this p2pdm reads "
            f"version {KEY_FILE_VERSION}"
        )
    return doc


def _hex_field(doc: dict[str, Any], name: str, path: Path, length: int | None = None) -> bytes:
    value = doc.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or (length is not None and len(raw) != length):
        want = f"{length} bytes of hex" if length else "hex"
        raise KeyFileError(f"key file {path}: field {name!r} must be {want}")
    return raw


def _int_field(doc: dict[str, Any], name: str, path: Path, maximum: int) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= maximum:
        raise KeyFileError(f"key file {path}: field {name!r} must be an integer in 1..{maximum}")
    return value


def key_file_node_id(path: Path) -> NodeId:
    """The node id a key file belongs to, readable without the passphrase."""
    doc = _read_key_doc(path)
    try:
        return NodeId.parse(str(doc.get("node_id", "")))
    except InvalidNodeId as exc:
        raise KeyFileError(f"key file {path}: bad node_id: {exc}") from exc


def key_file_is_locked(path: Path) -> bool:
    return _read_key_doc(path).get("lock") == "argon2id"


def load_key_file(path: Path, passphrase: str | None = None) -> Identity:
    """Load and check a key file; every failure is a KeyFileError saying why."""
    doc = _read_key_doc(path)
    lock = doc.get("lock")
    if lock == "none":
        seed = _hex_field(doc, "seed", path, SEED_LEN)
    elif lock == "argon2id":
        if passphrase is None:
            raise KeyFileError(f"key file {path} is locked with a passphrase; give it")
        salt = _hex_field(doc, "salt", path, nacl.pwhash.argon2id.SALTBYTES)
        box = _hex_field(doc, "box", path)
        opslimit = _int_field(doc, "opslimit", path, MAX_OPSLIMIT)
        memlimit = _int_field(doc, "memlimit", path, MAX_MEMLIMIT)
        try:
            key = nacl.pwhash.argon2id.kdf(
                nacl.secret.SecretBox.KEY_SIZE, passphrase.encode(), salt, opslimit, memlimit
            )
            seed = nacl.secret.SecretBox(key).decrypt(box)
        except nacl.exceptions.CryptoError:
            raise KeyFileError(f"wrong passphrase for key file {path}") from None
        except (ValueError, RuntimeError) as exc:
            raise KeyFileError(f"key file {path}: bad Argon2id parameters: {exc}") from exc
        if len(seed) != SEED_LEN:
            raise KeyFileError(f"key file {path}: locked seed has the wrong length")
    else:
        raise KeyFileError(f"key file {path}: unknown lock {lock!r} (expected none or argon2id)")
    identity = Identity(seed)
    if str(identity.node_id) != doc.get("node_id"):
        raise KeyFileError(f"key file {path}: node_id does not match the key it holds")
    return identity


def is_node_id_like(text: str) -> bool:
    """True if `text` could be (a prefix of) a node id's text form."""
    return bool(text) and set(text.lower()) <= _BASE32_ALPHABET
