"""Set reconciliation between two relays: which message ids one holds and the other lacks.

Sans-IO; the caller carries messages in RECON frames. The cost grows with
the difference between the sets, not their size, in the manner of range-based
set reconciliation (negentropy), using the ids' own uniform spread:

- Ids are 32-byte hashes, so the set is cut into a 16-ary trie of id
  prefixes (4 bits a level). A node (depth d, prefix p) is every id starting
  with those 4·d bits: a contiguous slice of the sorted ids, found by
  bisection, so no range bounds travel.
- FP entry: "my count and fingerprint for node (d, p)". The fingerprint is
  BLAKE2b-96 over the count and the ids, cached per node. Equal: that part
  is done. Different: the receiver answers for the 16 children, as FP
  entries, or as IDS entries where it holds few ids there.
- IDS entry: "all my ids in node (d, p)" (at most LEAF_IDS = 16). The receiver
  now knows both sides of that node: ids it holds that the list lacks go in
  `give` (the caller pushes those envelopes), and ids it lacks go back in a
  WANT entry, which puts them in the peer's `give`.
- A side whose count for a node is 0 answers with an empty IDS list; a side
  that hears count 0 gives its whole node without further rounds.

Message (a `wire` map of byte strings, so it stays flat inside a frame):
{"fp": FP entries, "ids": IDS entries, "want": ids} plus "s": true on the
initiator's first one. Entries are packed back to back:
FP = depth (1 byte) | prefix ((depth + 1) // 2 bytes, big-endian) |
count (4 bytes) | fingerprint (12 bytes);
IDS = depth | prefix | n (1 byte) | n ids of 32 bytes; WANT = ids of 32 bytes.

Every message is answered by the responder; the initiator is done when an
answer is empty and it has nothing left to say. Work that would overflow a
message (MAX_MESSAGE_BYTES) waits in a queue for the next one.

Bounds on a hostile peer: at most MAX_MESSAGE_BYTES a message and
MAX_ROUNDS messages a run, MAX_PENDING queued entries, depth at most
MAX_DEPTH, a node named once per message,
ids checked to lie in the node they are listed for; fingerprints are
cached, so hashing costs at most one pass over our ids per trie level.
Whatever a peer says only decides which envelopes get pushed; each is still
checked on arrival.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pdm import wire

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

ID_LEN = 32
FANOUT_BITS = 4
MAX_DEPTH = ID_LEN * 8 // FANOUT_BITS  # 64: a node of one id
FP_LEN = 8
FANOUT = 1 << FANOUT_BITS
# A node with at most this many of our ids is listed rather than split.
LEAF_IDS = 16
# Leaves room for the RECON frame's own fields inside one session frame.
MAX_MESSAGE_BYTES = 60_000
MAX_ROUNDS = 4096
# Work waiting for later messages; a peer cannot make it grow past this.
MAX_PENDING = 1 << 18


class ReconcileError(Exception):
    """The peer broke the reconciliation protocol; the message says how."""


@dataclass(frozen=True)
class _Fp:
    depth: int
    prefix: int
    count: int
    fp: bytes


@dataclass(frozen=True)
class _Split:
    """The 16 children of node (depth, prefix), each as (count, fingerprint)."""

    depth: int
    prefix: int
    children: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class _Ids:
    depth: int
    prefix: int
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class _Want:
    ids: tuple[bytes, ...]


_Entry = _Fp | _Split | _Ids | _Want


class Reconciler:
    """One side of one reconciliation run over a snapshot of our ids."""

    def __init__(self, ids: Sequence[bytes], *, initiator: bool) -> None:
        self._ids = list(ids)
        if any(len(i) != ID_LEN for i in self._ids):
            raise ValueError(f"ids are {ID_LEN} bytes")
        if any(a >= b for a, b in zip(self._ids, self._ids[1:], strict=False)):
            raise ValueError("ids must be sorted and distinct")
        self.initiator = initiator
        self.done = False
        self.rounds = 0
        """Messages received."""
        self.bytes_sent = 0
        self.bytes_received = 0
        self._give: set[bytes] = set()
        self._need: set[bytes] = set()
        self._pending: list[_Entry] = []
        self._fps: dict[tuple[int, int], bytes] = {}
        self._started = False

    # --- results ------------------------------------------------------------

    def pop_give(self) -> set[bytes]:
        """Ids the peer lacks, learned since the last call: push these."""
        out, self._give = self._give, set()
        return out

    def pop_need(self) -> set[bytes]:
        """Ids the peer holds and we lack, learned since the last call."""
        out, self._need = self._need, set()
        return out

    # --- the exchange -------------------------------------------------------

    def initiate(self) -> wire.Value:
        """The initiator's first message."""
        if not self.initiator or self._started:
            raise RuntimeError("only an initiator starts, once")
        self._started = True
        count = len(self._ids)
        self._pending.append(_Fp(0, 0, count, self._fingerprint(0, 0, 0, count)))
        return self._message(start=True)

    def receive(self, message: wire.Value) -> wire.Value | None:
        """Take the peer's message; return our answer, or None when the run is over."""
        if self.done:
            raise ReconcileError("a message after the reconciliation ended")
        self.rounds += 1
        if self.rounds > MAX_ROUNDS:
            raise ReconcileError(f"over {MAX_ROUNDS} reconciliation messages")
        entries, start = _parse(message)
        self.bytes_received += len(wire.encode(message))
        # Only the initiator's first message, and nothing else, says "start".
        if start != (not self.initiator and not self._started):
            raise ReconcileError("a start marker out of place")
        self._started = True
        seen: set[tuple[int, int]] = set()
        for entry in entries:
            self._take(entry, seen)
        if len(self._pending) > MAX_PENDING:
            raise ReconcileError("the peer makes reconciliation work grow without bound")
        if self.initiator and not entries and not self._pending:
            self.done = True
            return None
        return self._message(start=False)

    # --- internals ----------------------------------------------------------

    def _message(self, *, start: bool) -> wire.Value:
        """Pack pending work, newest first (depth first keeps the queue short), to the cap."""
        parts: dict[type, bytearray] = {t: bytearray() for t in (_Fp, _Split, _Ids, _Want)}
        size = 0
        while self._pending:
            packed = _pack(self._pending[-1])
            if size and size + len(packed) > MAX_MESSAGE_BYTES:
                break
            parts[type(self._pending.pop())].extend(packed)
            size += len(packed)
        message: dict[wire.Key, wire.Value] = {
            "fp": bytes(parts[_Fp]),
            "split": bytes(parts[_Split]),
            "ids": bytes(parts[_Ids]),
            "want": bytes(parts[_Want]),
        }
        if start:
            message["s"] = True
        self.bytes_sent += len(wire.encode(message))
        return message

    def _range(self, depth: int, prefix: int) -> tuple[int, int]:
        shift = ID_LEN * 8 - FANOUT_BITS * depth
        lo = bisect.bisect_left(self._ids, (prefix << shift).to_bytes(ID_LEN, "big"))
        if prefix + 1 == 1 << (FANOUT_BITS * depth):
            return lo, len(self._ids)
        hi = bisect.bisect_left(self._ids, ((prefix + 1) << shift).to_bytes(ID_LEN, "big"), lo)
        return lo, hi

    def _fingerprint(self, depth: int, prefix: int, lo: int, hi: int) -> bytes:
        key = (depth, prefix)
        fp = self._fps.get(key)
        if fp is None:
            h = hashlib.blake2b(digest_size=FP_LEN, person=b"p2pdm-recon")
            h.update((hi - lo).to_bytes(8, "big"))
            for i in self._ids[lo:hi]:
                h.update(i)
            fp = self._fps[key] = h.digest()
        return fp

    def _take(self, entry: _Entry, seen: set[tuple[int, int]]) -> None:
        if isinstance(entry, _Want):
            self._give.update(i for i in entry.ids if self._holds(i))
            return
        if isinstance(entry, _Split):
            base = entry.prefix << FANOUT_BITS
            for c, (count, fp) in enumerate(entry.children):
                self._take(_Fp(entry.depth + 1, base + c, count, fp), seen)
            return
        key = (entry.depth, entry.prefix)
        if key in seen:
            raise ReconcileError("a node named twice in one message")
        seen.add(key)
        lo, hi = self._range(entry.depth, entry.prefix)
        if isinstance(entry, _Ids):
            self._take_ids(entry, lo, hi)
            return
        mine = hi - lo
        if entry.count == 0:
            self._give.update(self._ids[lo:hi])  # the peer has none here
        elif mine == 0:
            self._pending.append(_Ids(entry.depth, entry.prefix, ()))  # send all of yours
        elif self._fingerprint(entry.depth, entry.prefix, lo, hi) == entry.fp:
            return
        elif mine <= LEAF_IDS or entry.depth == MAX_DEPTH:
            self._pending.append(_Ids(entry.depth, entry.prefix, tuple(self._ids[lo:hi])))
        else:
            self._split(entry.depth, entry.prefix)

    def _split(self, depth: int, prefix: int) -> None:
        children = []
        for child in range(prefix << FANOUT_BITS, (prefix + 1) << FANOUT_BITS):
            lo, hi = self._range(depth + 1, child)
            fp = self._fingerprint(depth + 1, child, lo, hi) if hi > lo else b""
            children.append((hi - lo, fp))
        self._pending.append(_Split(depth, prefix, tuple(children)))

    def _take_ids(self, entry: _Ids, lo: int, hi: int) -> None:
        mine = set(self._ids[lo:hi])
        listed = set(entry.ids)
        self._give |= mine - listed
        wanted = listed - mine
        self._need |= wanted
        if wanted:
            self._pending.append(_Want(tuple(sorted(wanted))))

    def _holds(self, message_id: bytes) -> bool:
        i = bisect.bisect_left(self._ids, message_id)
        return i < len(self._ids) and self._ids[i] == message_id


def is_start(message: wire.Value) -> bool:
    """True for an initiator's first message: a responder begins a new run on it."""
    return isinstance(message, dict) and message.get("s") is True


def _prefix_len(depth: int) -> int:
    return (depth + 1) // 2


def _pack(entry: _Entry) -> bytes:
    if isinstance(entry, _Want):
        return b"".join(entry.ids)
    head = bytes([entry.depth]) + entry.prefix.to_bytes(_prefix_len(entry.depth), "big")
    if isinstance(entry, _Fp):
        return head + _varint(entry.count) + (entry.fp if entry.count else b"")
    if isinstance(entry, _Split):
        return head + b"".join(_varint(n) + (fp if n else b"") for n, fp in entry.children)
    return head + bytes([len(entry.ids)]) + b"".join(entry.ids)


def _varint(n: int) -> bytes:
    """LEB128: 7 bits a byte, low first (counts are small; most fit one byte)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset); at most 5 bytes (counts are below 2**35)."""
    value = 0
    for i in range(5):
        byte = _take_bytes(data, at + i, 1)[0]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                raise ReconcileError("a count is not in its shortest form")
            return value, at + i + 1
    raise ReconcileError("a count is too long")


def _parse(message: wire.Value) -> tuple[list[_Entry], bool]:
    if not isinstance(message, dict):
        raise ReconcileError("a reconciliation message is a map")
    try:
        fields = wire.as_map(
            message, "RECON", required={"fp", "split", "ids", "want"}, optional={"s"}
        )
        fps, splits, idss, want = (
            wire.field_bytes(fields, name, "RECON", max_size=MAX_MESSAGE_BYTES)
            for name in ("fp", "split", "ids", "want")
        )
    except wire.WireError as exc:
        raise ReconcileError(str(exc)) from None
    if len(fps) + len(splits) + len(idss) + len(want) > MAX_MESSAGE_BYTES:
        raise ReconcileError(f"a reconciliation message carries at most {MAX_MESSAGE_BYTES} bytes")
    if "s" in fields and fields["s"] is not True:
        raise ReconcileError("RECON.s is true when present")
    if len(want) % ID_LEN:
        raise ReconcileError(f"RECON.want holds {ID_LEN}-byte ids")
    entries: list[_Entry] = []
    entries += _parse_nodes(fps, "fp")
    entries += _parse_nodes(splits, "split")
    entries += _parse_nodes(idss, "ids")
    if want:
        entries.append(_Want(tuple(want[i : i + ID_LEN] for i in range(0, len(want), ID_LEN))))
    return entries, "s" in fields


def _parse_nodes(data: bytes, kind: str) -> list[_Entry]:
    out: list[_Entry] = []
    at = 0
    while at < len(data):
        depth = data[at]
        if depth > MAX_DEPTH:
            raise ReconcileError(f"depth must be 0..{MAX_DEPTH}")
        plen = _prefix_len(depth)
        prefix = int.from_bytes(_take_bytes(data, at + 1, plen), "big")
        if prefix >> (FANOUT_BITS * depth):
            raise ReconcileError("prefix out of range for its depth")
        at += 1 + plen
        if kind == "fp":
            count, at = _read_varint(data, at)
            fp = _take_bytes(data, at, FP_LEN) if count else b""
            out.append(_Fp(depth, prefix, count, fp))
            at += len(fp)
            continue
        if kind == "split":
            if depth == MAX_DEPTH:
                raise ReconcileError("a node of one id has no children")
            children = []
            for _ in range(FANOUT):
                count, at = _read_varint(data, at)
                fp = _take_bytes(data, at, FP_LEN) if count else b""
                children.append((count, fp))
                at += len(fp)
            out.append(_Split(depth, prefix, tuple(children)))
            continue
        n = _take_bytes(data, at, 1)[0]
        if n > LEAF_IDS:
            raise ReconcileError(f"an IDS entry lists at most {LEAF_IDS} ids")
        raw = _take_bytes(data, at + 1, n * ID_LEN)
        ids = tuple(raw[i : i + ID_LEN] for i in range(0, len(raw), ID_LEN))
        shift = ID_LEN * 8 - FANOUT_BITS * depth
        if depth and any(int.from_bytes(i, "big") >> shift != prefix for i in ids):
            raise ReconcileError("an id listed outside its node")
        out.append(_Ids(depth, prefix, ids))
        at += 1 + n * ID_LEN
    return out


def _take_bytes(data: bytes, at: int, n: int) -> bytes:
    if at + n > len(data):
        raise ReconcileError("an entry is cut short")
    return data[at : at + n]


def run_in_memory(a: Iterable[bytes], b: Iterable[bytes]) -> tuple[Reconciler, Reconciler]:
    """Reconcile two sets in this process (tests and benchmarks); returns both sides."""
    left = Reconciler(sorted(set(a)), initiator=True)
    right = Reconciler(sorted(set(b)), initiator=False)
    message: wire.Value | None = left.initiate()
    while message is not None:
        answer = right.receive(wire.decode(wire.encode(message), max_depth=1))
        message = left.receive(wire.decode(wire.encode(answer), max_depth=1))
    return left, right
