"""Strict CBOR codec, schema checks and the frame format (pure functions).

Encoding is deterministic CBOR: cbor2 with `canonical=True` (shortest
integer and length forms, definite lengths, map keys ordered by the length
of their encoding and then bytewise, as RFC 7049 section 3.9 says).

Decoding never calls cbor2: untrusted bytes go through the small parser
below, which accepts exactly the canonical encoding of the types the schema
uses and nothing else. cbor2's own `loads` ignores trailing bytes, keeps the
last of duplicate keys, builds cycles from tags 28/29, compiles regular
expressions from tag 35, and so on (docs/PROTOCOL.md lists them); none of
that can happen here because every tag, every float, every indefinite
length and every non-canonical form is a `WireError` before any work is
done on what follows it. Every size is checked against the bytes that are
actually left before anything is allocated.

`WireError` is the only exception a decoder raises, whatever the input.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, TypeAlias

import cbor2

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping

# The values the schema uses. No floats (timestamps are integer milliseconds),
# no tags, no undefined: fewer types, fewer ways to disagree about bytes.
Key: TypeAlias = int | str
Value: TypeAlias = "bool | int | bytes | str | list[Value] | dict[Key, Value] | None"

# One Noise transport message carries at most 65535 bytes, so no single CBOR
# document on the wire is larger; callers may pass a smaller limit.
MAX_DOCUMENT_SIZE = 65535
# Our deepest schema (envelope -> body -> list -> map) nests 4 levels; 16
# leaves room for new kinds and still bounds recursion tightly.
MAX_DEPTH = 16
# Items (scalars and containers) in one document. A one-byte empty array
# becomes a ~56-byte Python list, so 64 KiB of `[]` would cost ~4 MiB; this
# caps any document near 400 KiB of objects. The largest list we send (ids in
# one frame, ~1,900 of 32 bytes) fits with room.
MAX_ITEMS = 4096
# CBOR integers carry at most 64 bits; larger ones would need bignum tags.
MIN_INT = -(1 << 64)
MAX_INT = (1 << 64) - 1

# Frame: 2-byte big-endian length, then that many bytes (a Noise message).
FRAME_HEADER_LEN = 2
MAX_FRAME_PAYLOAD = 65535
# A reader holds at most one partial frame plus one read's worth of bytes.
MAX_FRAME_BUFFER = 2 * (FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD)


class WireError(ValueError):
    """Bytes from outside that are not a valid document or frame.

    This is a remote error: the peer (or file) is at fault, never the caller.
    """


class WireUsageError(Exception):
    """Local misuse: a value the format cannot carry, or a full FrameReader."""


# --- encoding ---------------------------------------------------------------


# Exact types that are valid at any depth the limit allows.
_PLAIN_LEAVES = frozenset({str, bytes, bool, type(None)})


def _check_encodable(value: object, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireUsageError(f"value nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, bytes, str)):
        return
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise WireUsageError(f"integer {value} does not fit in 64 bits")
        return
    # Most children are leaves that cannot fail: they are checked inline,
    # without a call each (`encode` runs for every frame sent).
    if isinstance(value, list):
        for item in value:
            if depth >= MAX_DEPTH or type(item) not in _PLAIN_LEAVES:
                _check_encodable(item, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if (
                depth < MAX_DEPTH
                and type(k) is str
                and (type(v) in _PLAIN_LEAVES or (type(v) is int and MIN_INT <= v <= MAX_INT))
            ):
                continue
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise WireUsageError(f"map keys are int or str, not {type(k).__name__}")
            _check_encodable(k, depth + 1)
            _check_encodable(v, depth + 1)
        return
    raise WireUsageError(f"{type(value).__name__} cannot be encoded (allowed: {_ALLOWED})")


_ALLOWED = "None, bool, int, bytes, str, list, dict"


def encode(value: Value) -> bytes:
    """Deterministic CBOR for `value`; WireUsageError if the schema cannot carry it."""
    _check_encodable(value, 0)
    data: bytes = cbor2.dumps(value, canonical=True)
    if len(data) > MAX_DOCUMENT_SIZE:
        raise WireUsageError(f"encoded document is {len(data)} bytes, over {MAX_DOCUMENT_SIZE}")
    return data


class Encoded:
    """A value `encode_field` has checked and encoded, for `encode_fields` to copy as is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def encode_field(value: Value) -> Encoded:
    """`value` checked and encoded as one field of an `encode_fields` map."""
    _check_encodable(value, 1)  # a map's values sit one level below the map
    return Encoded(cbor2.dumps(value, canonical=True))


def _write_encoded(encoder: cbor2.CBOREncoder, value: Encoded) -> None:
    # cbor2 calls this for the types it does not know; `encode_fields` lets
    # no other type through.
    encoder.write(value.data)


def _check_field(value: object) -> None:
    # Callers may pass what their annotations do not allow (a float timestamp).
    if isinstance(value, int):  # bool too: true/false, the same as `encode`
        if not MIN_INT <= value <= MAX_INT:
            raise WireUsageError(f"integer {value} does not fit in 64 bits")
    elif not isinstance(value, (bytes, Encoded)):
        _check_encodable(value, 1)  # names the types the format cannot carry
        raise WireUsageError(f"{type(value).__name__} field: pass it through encode_field")


def encode_fields(fields: dict[str, int | bytes | Encoded]) -> bytes:
    """The same bytes as `encode(fields)`, for a flat map whose keys come in canonical order.

    For the envelope's own maps, most of `encode`'s time goes to walking
    values whose types are known and to cbor2's canonical key sort (a Python
    call per key). Here the caller writes the keys already sorted (shorter
    encoding first, then bytewise: "v", "ct", "id", "to", "exp") and cbor2
    keeps that order; ints and bytes are encoded the same either way, and a
    nested value goes through `encode_field`, checked and sorted like any
    other. The tests compare every caller with `encode` byte for byte.
    """
    for value in fields.values():
        _check_field(value)
    data: bytes = cbor2.dumps(fields, default=_write_encoded)
    if len(data) > MAX_DOCUMENT_SIZE:
        raise WireUsageError(f"encoded document is {len(data)} bytes, over {MAX_DOCUMENT_SIZE}")
    return data


# --- decoding ---------------------------------------------------------------

_MAJOR_UINT, _MAJOR_NINT, _MAJOR_BYTES, _MAJOR_TEXT = 0, 1, 2, 3
_MAJOR_ARRAY, _MAJOR_MAP, _MAJOR_TAG, _MAJOR_SIMPLE = 4, 5, 6, 7
_SIMPLE_VALUES: dict[int, Value] = {20: False, 21: True, 22: None}
# Smallest argument each additional-info width may carry (shortest form rule).
_MIN_FOR_WIDTH = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}
_WIDTH_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


class _Decoder:
    """One pass over one document. `item` is written flat (no helper calls per
    item) because it runs for every value of every frame on the hot path."""

    __slots__ = ("data", "depth_left", "end", "items_left", "pos")

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.depth_left = max_depth
        self.items_left = max_items

    def fail(self, why: str, pos: int | None = None) -> WireError:
        return WireError(f"{why} (at byte {self.pos if pos is None else pos})")

    def remaining(self) -> int:
        return self.end - self.pos

    def item(self) -> Value:
        data, start = self.data, self.pos
        if start >= self.end:
            raise self.fail("truncated: expected another item")
        self.items_left -= 1
        if self.items_left < 0:
            raise self.fail("too many items in one document")
        initial = data[start]
        pos = start + 1
        major, arg = initial >> 5, initial & 0x1F
        if arg >= 24:
            width = _WIDTH_BYTES.get(arg)
            if width is None:
                if arg == 31:
                    raise self.fail("indefinite-length items are not allowed", pos)
                raise self.fail(f"reserved additional information {arg}", pos)
            if major == _MAJOR_SIMPLE:
                raise self.fail("floats and extended simple values are not allowed", pos)
            if pos + width > self.end:
                raise self.fail("truncated item head", pos)
            info = arg
            # One byte (24..255) is the usual case: no slice and int.from_bytes.
            arg = data[pos] if width == 1 else int.from_bytes(data[pos : pos + width], "big")
            pos += width
            if arg < _MIN_FOR_WIDTH[info]:
                raise self.fail("non-canonical: integer or length not in its shortest form", pos)
        self.pos = pos
        if major == _MAJOR_UINT:
            return arg
        if major in (_MAJOR_BYTES, _MAJOR_TEXT):
            stop = pos + arg
            if stop > self.end:
                raise self.fail(f"declared length {arg} exceeds the {self.end - pos} bytes left")
            self.pos = stop
            if major == _MAJOR_BYTES:
                return data[pos:stop]
            try:
                return data[pos:stop].decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("text string is not valid UTF-8") from None
        if major == _MAJOR_MAP:
            return self.map_entries(arg)
        if major == _MAJOR_ARRAY:
            # Every item takes at least one byte: a count beyond what is left
            # is a lie, refused before a single element is built.
            if arg > self.end - pos:
                raise self.fail(f"array declares {arg} items but {self.end - pos} bytes are left")
            if arg > self.items_left:
                raise self.fail(f"array declares {arg} items, over the document's item limit")
            self.enter()
            items = [self.item() for _ in range(arg)]
            self.depth_left += 1
            return items
        if major == _MAJOR_NINT:
            return -1 - arg
        if major == _MAJOR_TAG:
            raise self.fail(f"tags are not allowed (tag {arg})", start)
        if arg not in _SIMPLE_VALUES:
            raise self.fail(f"simple value {arg} is not allowed", start)
        return _SIMPLE_VALUES[arg]

    def enter(self) -> None:
        self.depth_left -= 1
        if self.depth_left < 0:
            raise self.fail("nesting too deep")

    def map_entries(self, count: int) -> dict[Key, Value]:
        if count * 2 > self.end - self.pos:
            raise self.fail(f"map declares {count} entries but {self.remaining()} bytes are left")
        if count * 2 > self.items_left:
            raise self.fail(f"map declares {count} entries, over the document's item limit")
        self.enter()
        data = self.data
        result: dict[Key, Value] = {}
        previous = b""
        for _ in range(count):
            key_start = self.pos
            key = self.item()
            # item() returns exact types, so a bool (an int subclass) fails too.
            if type(key) is not str and type(key) is not int:
                raise self.fail("map keys must be integers or text")
            encoded = data[key_start : self.pos]
            # Canonical order (shorter encoding first, then bytewise) is
            # strictly increasing, so one check refuses disorder and repeats.
            if previous and (
                len(encoded) < len(previous)
                or (len(encoded) == len(previous) and encoded <= previous)
            ):
                what = "duplicate map key" if encoded == previous else "map keys out of order"
                raise self.fail(f"{what} {key!r}")
            previous = encoded
            result[key] = self.item()
        self.depth_left += 1
        return result


def decode(
    data: bytes,
    *,
    max_size: int = MAX_DOCUMENT_SIZE,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
) -> Value:
    """Decode one canonical CBOR document that fills `data` exactly.

    Raises WireError, and nothing else, for anything that is not one.
    """
    if not isinstance(data, bytes):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise WireError(f"document is {len(data)} bytes, over the limit of {max_size}")
    decoder = _Decoder(data, max_depth, max_items)
    try:
        value = decoder.item()
    except RecursionError:
        raise WireError("nesting too deep") from None
    if decoder.remaining():
        raise decoder.fail(f"{decoder.remaining()} trailing bytes after the document")
    return value


# --- schema checks ----------------------------------------------------------
# Small explicit helpers: a message type reads its fields with these and gets
# a WireError naming the field for anything out of shape.


def as_map(
    value: Value, what: str, *, required: Collection[str], optional: Collection[str] = ()
) -> dict[str, Value]:
    """`value` as a text-keyed map with exactly the allowed keys."""
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a map")
    keys = value.keys()
    # Exactly the required fields (the usual case) needs no set arithmetic.
    if keys != required:
        missing = set(required) - keys
        if missing:
            raise WireError(f"{what} lacks field(s) {', '.join(sorted(missing))}")
        unknown = keys - set(required) - set(optional)
        if unknown:
            raise WireError(f"{what} has unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return {str(k): v for k, v in value.items()}


def field_bytes(
    m: Mapping[str, Value],
    key: str,
    what: str,
    *,
    size: int | None = None,
    max_size: int | None = None,
) -> bytes:
    value = m[key]
    if not isinstance(value, bytes):
        raise WireError(f"{what}.{key} must be a byte string")
    if size is not None and len(value) != size:
        raise WireError(f"{what}.{key} must be {size} bytes, got {len(value)}")
    if max_size is not None and len(value) > max_size:
        raise WireError(f"{what}.{key} is {len(value)} bytes, over {max_size}")
    return value


def field_int(m: Mapping[str, Value], key: str, what: str, *, lo: int, hi: int) -> int:
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{what}.{key} must be an integer")
    if not lo <= value <= hi:
        raise WireError(f"{what}.{key} = {value} is outside {lo}..{hi}")
    return value


def field_text(m: Mapping[str, Value], key: str, what: str, *, max_len: int) -> str:
    value = m[key]
    if not isinstance(value, str):
        raise WireError(f"{what}.{key} must be text")
    if len(value) > max_len:
        raise WireError(f"{what}.{key} is {len(value)} characters, over {max_len}")
    return value


# --- frames -----------------------------------------------------------------


def encode_frame(payload: bytes) -> bytes:
    """Length-prefix one payload (a Noise message) for the stream."""
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise WireUsageError(f"frame payload is {len(payload)} bytes, over {MAX_FRAME_PAYLOAD}")
    return struct.pack(">H", len(payload)) + payload


class FrameReader:
    """Splits a byte stream into frames; holds at most MAX_FRAME_BUFFER bytes.

    The 2-byte prefix cannot declare more than MAX_FRAME_PAYLOAD, so no
    length a peer sends makes us buffer more than one frame's worth.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        if len(self._buffer) + len(data) > MAX_FRAME_BUFFER:
            raise WireUsageError("FrameReader is full: drain frames() before feeding more")
        self._buffer += data

    def frames(self) -> Iterator[bytes]:
        """Yield every complete frame buffered so far."""
        buf = self._buffer
        while len(buf) >= FRAME_HEADER_LEN:
            length = (buf[0] << 8) | buf[1]
            end = FRAME_HEADER_LEN + length
            if len(buf) < end:
                return
            frame = bytes(buf[FRAME_HEADER_LEN:end])
            del buf[:end]
            yield frame

    @property
    def buffered(self) -> int:
        return len(self._buffer)
