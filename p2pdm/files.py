"""Attachments: the file offer, its chunks, and their encryption (no I/O of peers).

A file is cut into CHUNK_SIZE chunks, each named by its BLAKE2b-256; the
whole file by its own BLAKE2b-256. The sender seals a FILE message
(envelope.MessageKind.FILE) to the recipient:

    {"x": offer id (16), "name": text, "size": int, "h": file hash (32),
     "ch": [chunk hash, ...], "k": chunk key (32)}        (fetched)
    {"x": offer id, "name": text, "size": int, "h": file hash, "d": bytes}
                                                        (inline, small files)
    {"x": offer id, "name": text, "size": int, "h": file hash, "parts": n}
                                                        (in parts, up to a cap)

An inline file travels inside the envelope, so relays hold it like any other
mail. A file in parts travels as n FILE_PART messages, {"x", "i": index,
"d": bytes}, each an ordinary envelope too: files up to the sender's
relay cap (1 MiB by default) reach a recipient that is away. A fetched
file's chunks are asked for by the recipient over a direct
connection (session frames FGET / FDATA, p2pdm.session), each chunk sealed
with XSalsa20-Poly1305 (libsodium's secretbox) under the offer's key, with
the chunk index as nonce: a key serves one offer, so a nonce never repeats
under it. The recipient checks each chunk's hash before writing it and the
whole file's before showing it; a chunk that fails is asked for again.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass

import nacl.exceptions
import nacl.secret

from p2pdm import wire

CHUNK_SIZE = 256 * 1024
MAX_FILE_SIZE = 100 * 1024 * 1024
MAX_CHUNKS = -(-MAX_FILE_SIZE // CHUNK_SIZE)
HASH_LEN = 32
OFFER_ID_LEN = 16
KEY_LEN = nacl.secret.SecretBox.KEY_SIZE
MAC_LEN = nacl.secret.SecretBox.MACBYTES
# A name's UTF-8 bytes: file systems allow 255, and a taken name gets a
# " (n)" before its extension, so offers stay well under.
MAX_NAME_BYTES = 200
# Inline files ride in one envelope (whose limit is ~59 KiB with the rest of
# the message); relays hold them like any message. A file in parts uses
# envelopes of the same size.
MAX_INLINE_SIZE = 48 * 1024
PART_SIZE = MAX_INLINE_SIZE
# Files up to this size go in parts (through relays), larger ones are
# fetched directly; a node's setting, within MAX_RELAYED_SIZE.
DEFAULT_RELAYED_SIZE = 1024 * 1024
MAX_RELAYED_SIZE = 16 * 1024 * 1024
MAX_PARTS = -(-MAX_RELAYED_SIZE // PART_SIZE)
_PERSON = b"p2pdm-file"


class FileError(ValueError):
    """A file that cannot be sent or an offer that is not valid; says why."""


def chunk_hash(data: bytes) -> bytes:
    """A chunk's name (personalised: a chunk hash is never a file hash)."""
    return hashlib.blake2b(data, digest_size=HASH_LEN, person=_PERSON).digest()


def file_hash(data: bytes) -> bytes:
    """A whole file's BLAKE2b-256, plain, so `b2sum -l 256 FILE` shows the same."""
    return hashlib.blake2b(data, digest_size=HASH_LEN).digest()


def file_hasher() -> hashlib.blake2b:
    """`file_hash` of data fed in pieces."""
    return hashlib.blake2b(digest_size=HASH_LEN)


@dataclass(frozen=True)
class Offer:
    offer_id: bytes
    name: str
    size: int
    file_hash: bytes
    chunk_hashes: tuple[bytes, ...] = ()
    key: bytes = b""
    inline: bytes | None = None
    parts: int = 0
    """Sent as this many FILE_PART messages (0: inline or fetched)."""

    @property
    def chunks(self) -> int:
        return len(self.chunk_hashes)

    def summary(self) -> dict[str, str | int]:
        """What the API and events show of a file: never its key or data."""
        return {"name": self.name, "size": self.size, "blake2b": self.file_hash.hex()}

    def chunk_len(self, index: int) -> int:
        return min(CHUNK_SIZE, self.size - index * CHUNK_SIZE)

    def body(self) -> dict[wire.Key, wire.Value]:
        body: dict[wire.Key, wire.Value] = {
            "x": self.offer_id,
            "name": self.name,
            "size": self.size,
            "h": self.file_hash,
        }
        if self.inline is not None:
            body["d"] = self.inline
        elif self.parts:
            body["parts"] = self.parts
        else:
            body["ch"] = list(self.chunk_hashes)
            body["k"] = self.key
        return body


def parse_offer(body: wire.Value) -> Offer:
    """A FILE message body; raises wire.WireError."""
    fields = wire.as_map(
        body, "file", required={"x", "name", "size", "h"}, optional={"ch", "k", "d", "parts"}
    )
    offer_id = wire.field_bytes(fields, "x", "file", size=OFFER_ID_LEN)
    name = wire.field_text(fields, "name", "file", max_len=MAX_NAME_BYTES)
    if safe_name(name) != name:
        raise wire.WireError("file.name must be a plain file name")
    size = wire.field_int(fields, "size", "file", lo=0, hi=MAX_FILE_SIZE)
    digest = wire.field_bytes(fields, "h", "file", size=HASH_LEN)
    if "d" in fields:
        if "ch" in fields or "k" in fields:
            raise wire.WireError("an inline file has no chunks or key")
        data = wire.field_bytes(fields, "d", "file", max_size=MAX_INLINE_SIZE)
        if len(data) != size or file_hash(data) != digest:
            raise wire.WireError("inline file data does not match its size and hash")
        return Offer(offer_id, name, size, digest, inline=data)
    if "parts" in fields:
        if len(fields) != 5:
            raise wire.WireError("a file in parts has no chunks, key or data")
        if not MAX_INLINE_SIZE < size <= MAX_RELAYED_SIZE:
            raise wire.WireError(
                f"a file in parts is over {MAX_INLINE_SIZE} bytes, at most {MAX_RELAYED_SIZE}"
            )
        parts = wire.field_int(fields, "parts", "file", lo=1, hi=MAX_PARTS)
        if parts != -(-size // PART_SIZE):
            raise wire.WireError(f"{size} bytes are {-(-size // PART_SIZE)} parts, not {parts}")
        return Offer(offer_id, name, size, digest, parts=parts)
    if "ch" not in fields or "k" not in fields:
        raise wire.WireError("a fetched file lists its chunk hashes and key")
    key = wire.field_bytes(fields, "k", "file", size=KEY_LEN)
    chunk_list = fields["ch"]
    expected = -(-size // CHUNK_SIZE)
    if not isinstance(chunk_list, list) or len(chunk_list) != expected:
        raise wire.WireError(f"file.ch must list {expected} chunk hashes for {size} bytes")
    if not all(isinstance(h, bytes) and len(h) == HASH_LEN for h in chunk_list):
        raise wire.WireError(f"file.ch holds {HASH_LEN}-byte hashes")
    hashes = tuple(h for h in chunk_list if isinstance(h, bytes))
    return Offer(offer_id, name, size, digest, hashes, key)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:]")


def safe_name(name: str) -> str:
    """A name that is one plain file name anywhere: no folders, no controls,
    not hidden, not empty, at most MAX_NAME_BYTES in UTF-8. Offers must
    carry names already like this."""
    name = unicodedata.normalize("NFC", name)
    name = _UNSAFE.sub("_", name).strip().lstrip(".")
    # Cut by bytes, never inside a character.
    name = name.encode()[:MAX_NAME_BYTES].decode(errors="ignore").strip()
    return name or "file"


def parse_part(body: wire.Value) -> tuple[bytes, int, bytes]:
    """A FILE_PART message body: (offer id, index, data); raises wire.WireError."""
    fields = wire.as_map(body, "file part", required={"x", "i", "d"})
    offer_id = wire.field_bytes(fields, "x", "file part", size=OFFER_ID_LEN)
    index = wire.field_int(fields, "i", "file part", lo=0, hi=MAX_PARTS - 1)
    data = wire.field_bytes(fields, "d", "file part", max_size=PART_SIZE)
    if not data:
        raise wire.WireError("file part.d is empty")
    return offer_id, index, data


def assemble(offer: Offer, parts: dict[int, bytes]) -> bytes:
    """The file from all of its parts, checked against the offer (FileError)."""
    if sorted(parts) != list(range(offer.parts)):
        raise FileError("parts are missing")
    data = b"".join(parts[i] for i in range(offer.parts))
    sizes_ok = all(len(parts[i]) == PART_SIZE for i in range(offer.parts - 1))
    if not sizes_ok or len(data) != offer.size or file_hash(data) != offer.file_hash:
        raise FileError("the parts do not make the file the offer describes")
    return data


def part_bodies(offer: Offer, data: bytes) -> list[dict[wire.Key, wire.Value]]:
    return [
        {"x": offer.offer_id, "i": i, "d": data[i * PART_SIZE : (i + 1) * PART_SIZE]}
        for i in range(offer.parts)
    ]


def new_offer(
    name: str,
    size: int,
    digest: bytes,
    chunks: tuple[bytes, ...],
    data: bytes | None,
    *,
    in_parts: bool = False,
) -> Offer:
    """An offer with fresh ids: inline when `data` (the whole file) is
    given, in parts when asked, else fetched by chunks."""
    if data is not None:
        return Offer(os.urandom(OFFER_ID_LEN), safe_name(name), size, digest, inline=data)
    if in_parts:
        parts = -(-size // PART_SIZE)
        return Offer(os.urandom(OFFER_ID_LEN), safe_name(name), size, digest, parts=parts)
    return Offer(
        os.urandom(OFFER_ID_LEN), safe_name(name), size, digest, chunks, os.urandom(KEY_LEN)
    )


def _nonce(index: int) -> bytes:
    return index.to_bytes(nacl.secret.SecretBox.NONCE_SIZE, "big")


def seal_chunk(key: bytes, index: int, plain: bytes) -> bytes:
    """A chunk as it travels: secretbox under the offer key, index as nonce."""
    return nacl.secret.SecretBox(key).encrypt(plain, _nonce(index)).ciphertext


def open_chunk(offer: Offer, index: int, sealed: bytes) -> bytes:
    """The chunk's bytes if they decrypt and hash to what the offer says."""
    try:
        plain = nacl.secret.SecretBox(offer.key).decrypt(sealed, _nonce(index))
    except nacl.exceptions.CryptoError:
        raise FileError(f"chunk {index} does not decrypt under the offer's key") from None
    if len(plain) != offer.chunk_len(index) or chunk_hash(plain) != offer.chunk_hashes[index]:
        raise FileError(f"chunk {index} does not match its hash")
    return plain
