"""The peer session protocol, after the handshake (sans-IO).

Each transport frame carries one CBOR map with a type code "t":

    HELLO  {"t": 1, "window": int, "wbytes": int, "relay": bool, "features": [text],
            "agent": text}
    PUSH   {"t": 2, "n": seq, "env": envelope bytes}
    ACK    {"t": 3, "n": seq, "s": AckStatus, "c"?: count, "r"?: reason}
    PING   {"t": 4, "n": nonce}
    PONG   {"t": 5, "n": nonce}
    BYE    {"t": 6, "r": reason}
    PEERS  {"t": 7, "recs": [bytes]}   (signed peer records, see peerrecord.py)
    RECON  {"t": 8, "q": bool, "m": map}  (relay reconciliation, see reconcile.py)
    NOTICE {"t": 9, "notice": bytes}  (a signed delivery notice, see notice.py)
    EPHEMERAL {"t": 10, "env": envelope bytes}  (never acked, stored or relayed)
    FGET   {"t": 11, "x": offer id, "i": chunk index}  (ask for a file chunk)
    FDATA  {"t": 12, "x": offer id, "i": index, "o": offset, "n": sealed length,
            "d": bytes}  (a piece of a sealed chunk, see p2pdm.files)
    FNONE  {"t": 13, "x": offer id, "i": index, "r": reason}  (cannot serve it)

Both sides send HELLO first; nothing else is accepted before it. PUSH
sequence numbers start at 0 and go up by one per push in each direction.
A hop acknowledges a push only once it is committed to its store (the
caller decides when: `ack_frame()` just encodes). One ACK covers `c`
consecutive pushes from `n` (1 when absent) that share a status and
reason, so a busy link sends one ACK per commit, not one per push. Flow control: each side grants
a window in its HELLO, in pushes and in envelope bytes; a sender never has
more unacknowledged pushes (or bytes) than the peer's window, and a peer
that exceeds ours is disconnected, so a fast sender cannot make a slow
receiver buffer without bound.

Like h11, this class never touches a socket or a clock: `receive(frame)`
returns events, the methods that send return the bytes to encrypt and send.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum, IntEnum

from p2pdm import files, wire

# Pushes a receiver lets a peer have in flight: with range ACKs, 256 keep a
# loopback link busy through a group commit (64 held throughput to ~60%).
DEFAULT_WINDOW = 256
MAX_WINDOW = 1024
# Envelope bytes a peer may have in flight: what one connection can make a
# receiver hold in memory. At least one envelope of the largest size fits.
DEFAULT_WINDOW_BYTES = 1 << 20
MIN_WINDOW_BYTES = 1 << 16
MAX_WINDOW_BYTES = 1 << 24
MAX_FEATURES = 32
MAX_FEATURE_LEN = 32
MAX_AGENT_LEN = 64
MAX_REASON_LEN = 200
# A frame holds one Noise transport message's plaintext.
MAX_FRAME_PLAINTEXT = 65535 - 16
MAX_SEQ = (1 << 63) - 1
# Peer exchange: records per PEERS frame, and the size of one record.
MAX_PEER_RECORDS = 32
MAX_PEER_RECORD_SIZE = 1024
# A delivery notice (p2pdm.notice) lists at most 256 ids: well under this.
MAX_NOTICE_SIZE = 16 * 1024
# Ephemeral envelopes carry a few bytes of body (typing): 2 KiB is ample.
MAX_EPHEMERAL_SIZE = 2048
# A sealed file chunk, and the piece of one that fits a frame with its fields.
MAX_SEALED_CHUNK = files.CHUNK_SIZE + files.MAC_LEN
FILE_PIECE_SIZE = 64_000


class FrameType(IntEnum):
    HELLO = 1
    """First frame each way: window, relay role, features."""
    PUSH = 2
    """One envelope, numbered."""
    ACK = 3
    """A run of pushed envelopes is committed (or refused) by this hop."""
    PING = 4
    """Keepalive probe; the peer answers PONG with the same nonce."""
    PONG = 5
    """Answer to PING."""
    BYE = 6
    """Orderly close, with a reason a person can read."""
    PEERS = 7
    """Peer exchange: signed records of where nodes can be reached."""
    RECON = 8
    """One message of relay-to-relay set reconciliation (p2pdm.reconcile)."""
    NOTICE = 9
    """A recipient's signed delivery notice, passed on unchanged."""
    EPHEMERAL = 10
    """An envelope for the peer itself that is shown if fresh and then forgotten
    (typing): no ACK, never stored, never relayed. Sent only to peers whose
    HELLO lists the EPHEMERAL_FEATURE."""
    FGET = 11
    """Ask for one chunk of a file offered to us (p2pdm.files)."""
    FDATA = 12
    """A piece of a sealed file chunk, in answer to FGET."""
    FNONE = 13
    """The chunk asked for cannot be served; says why."""


# The HELLO feature that says a peer reads EPHEMERAL frames.
EPHEMERAL_FEATURE = "ephemeral"
# The HELLO feature that says a peer serves and fetches file chunks.
FILES_FEATURE = "files"
# The HELLO feature that asks for a full PEERS frame at open (the sender knows
# few peers); without it a peer sends only records that are news to us.
PEX_WANT_FEATURE = "pex-want"


class AckStatus(IntEnum):
    STORED = 0
    """Committed now: this hop has it."""
    DUPLICATE = 1
    """Already had it (same message id): the sender can stop sending it here."""
    REFUSED = 2
    """Will not take it (bad, expired, blocked, over quota, not relaying): see reason."""


_FRAME_NAMES = {t: t.name.lower() for t in FrameType}


class State(Enum):
    AWAIT_HELLO = "await-hello"
    """Our HELLO may be sent; the peer's has not arrived."""
    OPEN = "open"
    """Both HELLOs exchanged: pushes flow."""
    CLOSED = "closed"
    """BYE sent or received, or a protocol error: nothing more is processed."""


class SessionError(Exception):
    """The peer broke the protocol; the caller should send `bye_frame` and close."""


class SessionUsageError(Exception):
    """Local misuse (a bug in the caller)."""


class WindowFull(SessionUsageError):
    """The peer's window is full: wait for an ACK before pushing more."""


@dataclass(frozen=True)
class Hello:
    window: int
    relay: bool
    features: tuple[str, ...]
    agent: str
    window_bytes: int = DEFAULT_WINDOW_BYTES


@dataclass(frozen=True)
class HelloReceived:
    hello: Hello


@dataclass(frozen=True)
class PushReceived:
    seq: int
    envelope: bytes


@dataclass(frozen=True)
class AckReceived:
    seq: int
    status: AckStatus
    reason: str
    count: int = 1
    """The ACK covers pushes seq .. seq + count - 1."""

    @property
    def seqs(self) -> range:
        return range(self.seq, self.seq + self.count)


@dataclass(frozen=True)
class PingReceived:
    nonce: int


@dataclass(frozen=True)
class PongReceived:
    nonce: int


@dataclass(frozen=True)
class ByeReceived:
    reason: str


@dataclass(frozen=True)
class PeersReceived:
    records: tuple[bytes, ...]
    """Unverified: the caller checks each record's signature."""


@dataclass(frozen=True)
class ReconReceived:
    message: dict[wire.Key, wire.Value]
    """Checked only as a map; p2pdm.reconcile parses the rest."""
    request: bool
    """True: part of a run the peer started; False: an answer in one of ours."""


@dataclass(frozen=True)
class EphemeralReceived:
    envelope: bytes
    """Unopened: the caller opens and checks it (p2pdm.envelope)."""


@dataclass(frozen=True)
class NoticeReceived:
    notice: bytes
    """Unverified: the caller checks the signature (p2pdm.notice)."""


@dataclass(frozen=True)
class FileGetReceived:
    offer_id: bytes
    index: int


@dataclass(frozen=True)
class FileDataReceived:
    offer_id: bytes
    index: int
    offset: int
    total: int
    """Length of the whole sealed chunk; the piece ends it when offset + len = total."""
    data: bytes


@dataclass(frozen=True)
class FileMissingReceived:
    offer_id: bytes
    index: int
    reason: str


Event = (
    HelloReceived
    | FileGetReceived
    | FileDataReceived
    | FileMissingReceived
    | PushReceived
    | AckReceived
    | PingReceived
    | PongReceived
    | ByeReceived
    | PeersReceived
    | NoticeReceived
    | ReconReceived
    | EphemeralReceived
)


class Session:
    """One side of a session. Not thread-safe; one owner task drives it."""

    def __init__(self, hello: Hello) -> None:
        if not 1 <= hello.window <= MAX_WINDOW:
            raise SessionUsageError(f"window must be in 1..{MAX_WINDOW}")
        if not MIN_WINDOW_BYTES <= hello.window_bytes <= MAX_WINDOW_BYTES:
            raise SessionUsageError(
                f"window_bytes must be in {MIN_WINDOW_BYTES}..{MAX_WINDOW_BYTES}"
            )
        self.state = State.AWAIT_HELLO
        self._our_hello = hello
        self.peer_hello: Hello | None = None
        self._hello_sent = False
        self._next_send_seq = 0
        self._next_recv_seq = 0
        # Our pushes the peer has not acked, and theirs we have not: seq -> bytes.
        self._in_flight: dict[int, int] = {}
        self._in_flight_bytes = 0
        self._unacked: dict[int, int] = {}
        self._unacked_bytes = 0
        self.frame_bytes: Counter[str] = Counter()
        """Bytes of the frames built, by type ("push", "peers", ...), before encryption."""

    # --- sending ----------------------------------------------------------

    def _encode(self, frame: dict[wire.Key, wire.Value]) -> bytes:
        data = wire.encode(frame)
        kind = frame["t"]
        assert isinstance(kind, FrameType)  # every frame built here has one
        self.frame_bytes[_FRAME_NAMES[kind]] += len(data)
        return data

    def hello_frame(self) -> bytes:
        if self._hello_sent:
            raise SessionUsageError("HELLO already sent")
        self._hello_sent = True
        h = self._our_hello
        return self._encode(
            {
                "t": FrameType.HELLO,
                "window": h.window,
                "wbytes": h.window_bytes,
                "relay": h.relay,
                "features": list(h.features),
                "agent": h.agent,
            }
        )

    @property
    def send_window_free(self) -> int:
        """How many more pushes the peer accepts right now (if their bytes fit)."""
        if self.state is not State.OPEN or self.peer_hello is None:
            return 0
        return self.peer_hello.window - len(self._in_flight)

    def can_push(self, envelope: bytes) -> bool:
        """True if the peer's window has room for this envelope now."""
        if self.send_window_free <= 0:
            return False
        assert self.peer_hello is not None
        return self._in_flight_bytes + len(envelope) <= self.peer_hello.window_bytes

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def push_frame(self, envelope: bytes) -> tuple[int, bytes]:
        """Number and encode one push; returns (seq, frame)."""
        self._require_open()
        if not self.can_push(envelope):
            raise WindowFull("the peer's window is full; wait for an ACK")
        seq = self._next_send_seq
        frame = self._encode({"t": FrameType.PUSH, "n": seq, "env": envelope})
        if len(frame) > MAX_FRAME_PLAINTEXT:
            raise SessionUsageError(f"push of {len(frame)} bytes does not fit in one frame")
        self._next_send_seq += 1
        self._in_flight[seq] = len(envelope)
        self._in_flight_bytes += len(envelope)
        return seq, frame

    def ack_frame(self, seq: int, status: AckStatus, reason: str = "", count: int = 1) -> bytes:
        """Acknowledge the peer's pushes seq .. seq + count - 1 (after committing them)."""
        self._require_open()
        seqs = range(seq, seq + count)
        if count < 1 or not all(s in self._unacked for s in seqs):
            raise SessionUsageError(f"{_pushes(seqs)} {_are(seqs)} waiting for an ACK")
        for s in seqs:
            self._unacked_bytes -= self._unacked.pop(s)
        doc: dict[wire.Key, wire.Value] = {"t": FrameType.ACK, "n": seq, "s": status}
        if count > 1:
            doc["c"] = count
        if reason:
            doc["r"] = reason[:MAX_REASON_LEN]
        return self._encode(doc)

    def ping_frame(self, nonce: int) -> bytes:
        self._require_open()
        return self._encode({"t": FrameType.PING, "n": nonce})

    def pong_frame(self, nonce: int) -> bytes:
        self._require_open()
        return self._encode({"t": FrameType.PONG, "n": nonce})

    def peers_frame(self, records: list[bytes]) -> bytes:
        """Pass on signed peer records (at most MAX_PEER_RECORDS, each small)."""
        self._require_open()
        if len(records) > MAX_PEER_RECORDS or any(len(r) > MAX_PEER_RECORD_SIZE for r in records):
            raise SessionUsageError(
                f"a PEERS frame holds at most {MAX_PEER_RECORDS} records "
                f"of at most {MAX_PEER_RECORD_SIZE} bytes"
            )
        recs: list[wire.Value] = list(records)
        return self._encode({"t": FrameType.PEERS, "recs": recs})

    def recon_frame(self, message: wire.Value, *, request: bool) -> bytes:
        """One reconciliation message; `request` when it belongs to a run we started.

        Each side may run its own reconciliation at the same time; `q` tells
        the receiver which run a message is part of.
        """
        self._require_open()
        frame = self._encode({"t": FrameType.RECON, "q": request, "m": message})
        if len(frame) > MAX_FRAME_PLAINTEXT:
            raise SessionUsageError(f"RECON of {len(frame)} bytes does not fit in one frame")
        return frame

    def notice_frame(self, notice: bytes) -> bytes:
        """Pass on one delivery notice (the bytes as signed)."""
        self._require_open()
        if not 0 < len(notice) <= MAX_NOTICE_SIZE:
            raise SessionUsageError(f"a notice is 1 to {MAX_NOTICE_SIZE} bytes")
        return self._encode({"t": FrameType.NOTICE, "notice": notice})

    def ephemeral_frame(self, envelope: bytes) -> bytes:
        """An envelope the peer shows if fresh and forgets (see FrameType.EPHEMERAL)."""
        self._require_open()
        if not 0 < len(envelope) <= MAX_EPHEMERAL_SIZE:
            raise SessionUsageError(f"an ephemeral envelope is 1 to {MAX_EPHEMERAL_SIZE} bytes")
        return self._encode({"t": FrameType.EPHEMERAL, "env": envelope})

    def file_get_frame(self, offer_id: bytes, index: int) -> bytes:
        self._require_open()
        return self._encode({"t": FrameType.FGET, "x": offer_id, "i": index})

    def file_data_frames(self, offer_id: bytes, index: int, sealed: bytes) -> list[bytes]:
        """A sealed chunk as the FDATA frames that carry it, in order."""
        self._require_open()
        if not 0 < len(sealed) <= MAX_SEALED_CHUNK:
            raise SessionUsageError(f"a sealed chunk is 1 to {MAX_SEALED_CHUNK} bytes")
        return [
            self._encode(
                {
                    "t": FrameType.FDATA,
                    "x": offer_id,
                    "i": index,
                    "o": offset,
                    "n": len(sealed),
                    "d": sealed[offset : offset + FILE_PIECE_SIZE],
                }
            )
            for offset in range(0, len(sealed), FILE_PIECE_SIZE)
        ]

    def file_none_frame(self, offer_id: bytes, index: int, reason: str) -> bytes:
        self._require_open()
        return self._encode(
            {"t": FrameType.FNONE, "x": offer_id, "i": index, "r": reason[:MAX_REASON_LEN]}
        )

    def bye_frame(self, reason: str) -> bytes:
        """The last frame: say why, then close. Valid in any state."""
        self.state = State.CLOSED
        return self._encode({"t": FrameType.BYE, "r": reason[:MAX_REASON_LEN]})

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise SessionUsageError(f"session is {self.state.value}, not open")

    # --- receiving --------------------------------------------------------

    def receive(self, frame: bytes) -> Event:
        """Parse one decrypted frame from the peer into an event.

        Raises SessionError (and moves to CLOSED) for anything the protocol
        does not allow; no other exception escapes for any input.
        """
        if self.state is State.CLOSED:
            raise SessionUsageError("session is closed")
        try:
            return self._receive(frame)
        except wire.WireError as exc:
            self.state = State.CLOSED
            raise SessionError(f"malformed frame: {exc}") from None
        except SessionError:
            self.state = State.CLOSED
            raise

    def _receive(self, frame: bytes) -> Event:
        doc = wire.decode(frame, max_size=MAX_FRAME_PLAINTEXT, max_depth=2)
        if not isinstance(doc, dict) or "t" not in doc:
            raise SessionError("frame is not a map with a type")
        kind = wire.field_int({"t": doc["t"]}, "t", "frame", lo=0, hi=255)
        if kind == FrameType.BYE:
            fields = wire.as_map(doc, "BYE", required={"t", "r"})
            self.state = State.CLOSED
            return ByeReceived(wire.field_text(fields, "r", "BYE", max_len=MAX_REASON_LEN))
        if self.state is State.AWAIT_HELLO:
            if kind != FrameType.HELLO:
                raise SessionError("the first frame must be HELLO")
            return self._got_hello(doc)
        if kind == FrameType.PUSH:
            return self._got_push(doc)
        if kind == FrameType.ACK:
            return self._got_ack(doc)
        if kind in (FrameType.PING, FrameType.PONG):
            fields = wire.as_map(doc, "PING", required={"t", "n"})
            nonce = wire.field_int(fields, "n", "PING", lo=0, hi=MAX_SEQ)
            return PingReceived(nonce) if kind == FrameType.PING else PongReceived(nonce)
        if kind == FrameType.PEERS:
            return self._got_peers(doc)
        if kind == FrameType.RECON:
            fields = wire.as_map(doc, "RECON", required={"t", "q", "m"})
            message, request = fields["m"], fields["q"]
            if not isinstance(message, dict):
                raise SessionError("RECON.m must be a map")
            if not isinstance(request, bool):
                raise SessionError("RECON.q must be true or false")
            return ReconReceived(message, request)
        if kind == FrameType.NOTICE:
            fields = wire.as_map(doc, "NOTICE", required={"t", "notice"})
            notice = wire.field_bytes(fields, "notice", "NOTICE", max_size=MAX_NOTICE_SIZE)
            if not notice:
                raise SessionError("NOTICE.notice is empty")
            return NoticeReceived(notice)
        if kind == FrameType.EPHEMERAL:
            fields = wire.as_map(doc, "EPHEMERAL", required={"t", "env"})
            env = wire.field_bytes(fields, "env", "EPHEMERAL", max_size=MAX_EPHEMERAL_SIZE)
            if not env:
                raise SessionError("EPHEMERAL.env is empty")
            return EphemeralReceived(env)
        if kind in (FrameType.FGET, FrameType.FDATA, FrameType.FNONE):
            return self._got_file_frame(kind, doc)
        if kind == FrameType.HELLO:
            raise SessionError("HELLO sent twice")
        raise SessionError(f"unknown frame type {kind}")

    def _got_hello(self, doc: dict[wire.Key, wire.Value]) -> HelloReceived:
        if not self._hello_sent:
            raise SessionUsageError("send our HELLO before processing the peer's")
        fields = wire.as_map(
            doc, "HELLO", required={"t", "window", "wbytes", "relay", "features", "agent"}
        )
        window = wire.field_int(fields, "window", "HELLO", lo=1, hi=MAX_WINDOW)
        window_bytes = wire.field_int(
            fields, "wbytes", "HELLO", lo=MIN_WINDOW_BYTES, hi=MAX_WINDOW_BYTES
        )
        relay = fields["relay"]
        if not isinstance(relay, bool):
            raise SessionError("HELLO.relay must be true or false")
        features = fields["features"]
        if not isinstance(features, list) or len(features) > MAX_FEATURES:
            raise SessionError(f"HELLO.features must be a list of at most {MAX_FEATURES}")
        if not all(isinstance(f, str) and len(f) <= MAX_FEATURE_LEN for f in features):
            raise SessionError(f"HELLO.features are texts of at most {MAX_FEATURE_LEN}")
        agent = wire.field_text(fields, "agent", "HELLO", max_len=MAX_AGENT_LEN)
        hello = Hello(window, relay, tuple(str(f) for f in features), agent, window_bytes)
        self.peer_hello = hello
        self.state = State.OPEN
        return HelloReceived(hello)

    def _got_file_frame(
        self, kind: int, doc: dict[wire.Key, wire.Value]
    ) -> FileGetReceived | FileDataReceived | FileMissingReceived:
        what = FrameType(kind).name
        if kind == FrameType.FGET:
            fields = wire.as_map(doc, what, required={"t", "x", "i"})
        elif kind == FrameType.FNONE:
            fields = wire.as_map(doc, what, required={"t", "x", "i", "r"})
        else:
            fields = wire.as_map(doc, what, required={"t", "x", "i", "o", "n", "d"})
        offer_id = wire.field_bytes(fields, "x", what, size=files.OFFER_ID_LEN)
        index = wire.field_int(fields, "i", what, lo=0, hi=files.MAX_CHUNKS - 1)
        if kind == FrameType.FGET:
            return FileGetReceived(offer_id, index)
        if kind == FrameType.FNONE:
            reason = wire.field_text(fields, "r", what, max_len=MAX_REASON_LEN)
            return FileMissingReceived(offer_id, index, reason)
        total = wire.field_int(fields, "n", what, lo=1, hi=MAX_SEALED_CHUNK)
        offset = wire.field_int(fields, "o", what, lo=0, hi=total - 1)
        data = wire.field_bytes(fields, "d", what, max_size=FILE_PIECE_SIZE)
        if not data or offset + len(data) > total:
            raise SessionError("FDATA.d is empty or runs past the chunk")
        return FileDataReceived(offer_id, index, offset, total, data)

    def _got_push(self, doc: dict[wire.Key, wire.Value]) -> PushReceived:
        fields = wire.as_map(doc, "PUSH", required={"t", "n", "env"})
        seq = wire.field_int(fields, "n", "PUSH", lo=0, hi=MAX_SEQ)
        if seq != self._next_recv_seq:
            raise SessionError(f"PUSH {seq} out of order (expected {self._next_recv_seq})")
        if len(self._unacked) >= self._our_hello.window:
            raise SessionError(
                f"peer exceeded the flow-control window of {self._our_hello.window} pushes"
            )
        envelope = wire.field_bytes(fields, "env", "PUSH", max_size=MAX_FRAME_PLAINTEXT)
        if self._unacked_bytes + len(envelope) > self._our_hello.window_bytes:
            raise SessionError(
                f"peer exceeded the flow-control window of {self._our_hello.window_bytes} bytes"
            )
        self._next_recv_seq += 1
        self._unacked[seq] = len(envelope)
        self._unacked_bytes += len(envelope)
        return PushReceived(seq, envelope)

    def _got_peers(self, doc: dict[wire.Key, wire.Value]) -> PeersReceived:
        fields = wire.as_map(doc, "PEERS", required={"t", "recs"})
        recs = fields["recs"]
        if not isinstance(recs, list) or len(recs) > MAX_PEER_RECORDS:
            raise SessionError(f"PEERS.recs must be a list of at most {MAX_PEER_RECORDS}")
        if not all(isinstance(r, bytes) and len(r) <= MAX_PEER_RECORD_SIZE for r in recs):
            raise SessionError(f"PEERS.recs holds byte strings of at most {MAX_PEER_RECORD_SIZE}")
        return PeersReceived(tuple(r for r in recs if isinstance(r, bytes)))

    def _got_ack(self, doc: dict[wire.Key, wire.Value]) -> AckReceived:
        fields = wire.as_map(doc, "ACK", required={"t", "n", "s"}, optional={"c", "r"})
        seq = wire.field_int(fields, "n", "ACK", lo=0, hi=MAX_SEQ)
        status = wire.field_int(fields, "s", "ACK", lo=0, hi=max(AckStatus))
        # Encoders omit c for one push; c = 1 spelled out would be a second
        # encoding of the same ACK, which the canonical rule forbids.
        count = wire.field_int(fields, "c", "ACK", lo=2, hi=MAX_WINDOW) if "c" in fields else 1
        reason = (
            wire.field_text(fields, "r", "ACK", max_len=MAX_REASON_LEN) if "r" in fields else ""
        )
        seqs = range(seq, seq + count)
        if not all(s in self._in_flight for s in seqs):
            raise SessionError(f"ACK for {_pushes(seqs)}, which {_are(seqs)} in flight")
        for s in seqs:
            self._in_flight_bytes -= self._in_flight.pop(s)
        return AckReceived(seq, AckStatus(status), reason, count)


def _pushes(seqs: range) -> str:
    if len(seqs) == 1:
        return f"push {seqs.start}"
    return f"pushes {seqs.start}..{seqs.stop - 1}"


def _are(seqs: range) -> str:
    return "is not" if len(seqs) == 1 else "are not all"
