"""Fuzz harnesses: one function per target, each taking the fuzzer's bytes.

Each harness drives the project's real parsers with one input and raises
only for a real defect: an exception other than the documented error type
of what it drives, or a broken invariant (an `AssertionError` saying which).
They need no fuzzing engine: `scripts/fuzz.py` runs them under atheris, and
tests/test_fuzz_corpus.py replays every file of tests/corpus/<target>/
through them in the default test run, so a crash once found stays a test.

Inputs are split into typed pieces by `Reader` (what atheris'
FuzzedDataProvider does, in plain Python so the same bytes mean the same
thing with or without atheris). Keys and ephemeral randomness are fixed, so
an input is a complete, repeatable test case; `seed_inputs()` builds the
seed corpus with the real encoders and the same keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import re
from typing import TYPE_CHECKING

import trio
import trio.testing

from p2pdm import api, envelope, handshake, httpapi, noise, wire
from p2pdm.envelope import EnvelopeError, MessageKind
from p2pdm.handshake import PROLOGUE, Handshake, HandshakeError, NoiseStatic
from p2pdm.identity import Identity
from p2pdm.notice import DeliveryNotice, NoticeError, parse_notice
from p2pdm.peerrecord import PeerRecord, PeerRecordError, parse_record
from p2pdm.reconcile import ReconcileError, Reconciler, is_start
from p2pdm.session import (
    EPHEMERAL_FEATURE,
    FILES_FEATURE,
    MIN_WINDOW_BYTES,
    AckReceived,
    AckStatus,
    ByeReceived,
    EphemeralReceived,
    FileDataReceived,
    Hello,
    HelloReceived,
    NoticeReceived,
    PeersReceived,
    PingReceived,
    PushReceived,
    ReconReceived,
    Session,
    SessionError,
    State,
)
from tests.hostile_cbor import HOSTILE

if TYPE_CHECKING:
    from collections.abc import Callable

# --- splitting one input ------------------------------------------------------


class Reader:
    """Takes typed pieces off the front of one fuzz input; past the end, zeros and b""."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        if self.done:
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def chunk(self) -> bytes:
        """A piece with a 2-byte big-endian length in front (cut short at the end)."""
        length = (self.byte() << 8) | self.byte()
        out = self.data[self.pos : self.pos + length]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


def pack(*chunks: bytes) -> bytes:
    """The inverse of `Reader.chunk`, for building seeds."""
    return b"".join(len(c).to_bytes(2, "big") + c for c in chunks)


def _rng(label: bytes) -> Callable[[int], bytes]:
    """Repeatable 'randomness': the same input always makes the same keys."""
    counter = itertools.count()
    return lambda n: hashlib.blake2b(
        label + next(counter).to_bytes(8, "big"), digest_size=n
    ).digest()


# Fixed keys: an input replays exactly, and seeds carry valid signatures.
ME = Identity(bytes([1]) * 32)
PEER = Identity(bytes([2]) * 32)
OTHER = Identity(bytes([3]) * 32)
ME_STATIC = NoiseStatic.generate(ME, _rng(b"static-me"))
PEER_STATIC = NoiseStatic.generate(PEER, _rng(b"static-peer"))
NOW_MS = 1_800_000_000_000
"""The clock the session harness checks envelopes and records against."""


# --- wire -------------------------------------------------------------------------


def wire_decode(data: bytes) -> None:
    """`wire.decode` and `FrameReader` on arbitrary bytes.

    Invariants: decode raises only WireError; what it accepts re-encodes to
    the very same bytes (one encoding per value); tighter limits only refuse,
    never change a result; frames split off a stream re-frame to the stream.
    """
    try:
        value = wire.decode(data)
    except wire.WireError:
        value = None
        accepted = False
    else:
        accepted = True
        again = wire.encode(value)
        assert again == data, f"decode accepted a non-canonical form: {data.hex()}"
    try:
        tight = wire.decode(data, max_depth=2, max_items=64)
    except wire.WireError:
        pass
    else:
        assert accepted, "decode under tight limits accepted what the defaults refuse"
        assert tight == value, "decode under tight limits gave another value"

    if len(data) <= wire.MAX_FRAME_BUFFER:
        reader = wire.FrameReader()
        # Fed in two parts, so a frame may straddle the cut.
        cut = len(data) // 3
        frames = []
        for part in (data[:cut], data[cut:]):
            reader.feed(part)
            frames += list(reader.frames())
        framed = b"".join(wire.encode_frame(f) for f in frames)
        assert data.startswith(framed), "frames do not re-frame to the stream"
        assert len(framed) + reader.buffered == len(data), "a frame reader lost or made bytes"


# --- handshake ----------------------------------------------------------------------


def _refusal_is_readable(initiator: noise.HandshakeState, reply: bytes) -> None:
    """A responder's refusal must be a msg2 a real initiator can decrypt and read."""
    payload = initiator.read_message(reply)
    doc = wire.decode(payload)
    assert isinstance(doc, dict), "refusal payload is not a map"
    assert set(doc) == {"error"}, f"refusal payload has fields {sorted(map(str, doc))}"
    assert isinstance(doc["error"], str), "refusal reason is not text"
    assert len(doc["error"]) <= handshake.MAX_ERROR_TEXT, "refusal reason over its limit"


def _same_transport(a: handshake.TransportCipher, b_send: noise.CipherState) -> None:
    assert a.decrypt(b_send.encrypt_with_ad(b"", b"ping")) == b"ping", "transport keys differ"


def handshake_responder(data: bytes) -> None:
    """A responder fed an arbitrary msg1, or a real msg1 then an arbitrary msg3.

    First byte, mode (mod 3): 0, the rest is msg1; 1, a real initiator's msg1,
    then the rest is msg3; 2, a real Noise initiator writes msg1 and msg3
    around payloads from the input (chunk, rest), so what the responder
    reads behind the encryption is the fuzzer's.
    Invariants: only HandshakeError escapes; a refusal is readable by the
    initiator; a completed handshake names the initiator and its keys work.
    """
    r = Reader(data)
    mode = r.byte() % 3
    responder = Handshake(ME, initiator=False, static=ME_STATIC, rng=_rng(b"eph-me"))
    if mode == 0:
        try:
            responder.receive(r.rest())
        except HandshakeError:
            assert not responder.complete
        return
    initiator = noise.HandshakeState(
        initiator=True, prologue=PROLOGUE, static_private=PEER_STATIC.private, rng=_rng(b"eph-peer")
    )
    limit = noise.MAX_MESSAGE_LEN - 64
    payload1 = wire.encode({"versions": [1]}) if mode == 1 else r.chunk()
    try:
        msg2 = responder.receive(initiator.write_message(payload1[:limit]))
    except HandshakeError as exc:
        if exc.reply is not None:
            _refusal_is_readable(initiator, exc.reply)
        return
    assert msg2 is not None
    # A real initiator must accept what the responder answered.
    identity = wire.as_map(
        wire.decode(initiator.read_message(msg2)),
        "reply",
        required={"version", "key", "sig"},
    )
    assert identity["key"] == ME.node_id.public_key
    # The version an initiator checks with field_int: an integer, not a bool.
    version = identity["version"]
    assert type(version) is int, f"msg2 names version {version!r}"
    assert version in handshake.PROTOCOL_VERSIONS, f"msg2 names version {version}"
    msg3 = r.rest() if mode == 1 else initiator.write_message(r.rest()[:limit])
    try:
        answer = responder.receive(msg3)
    except HandshakeError as exc:
        refusal = exc.reply
        assert not responder.complete
    else:
        refusal = None
        assert answer is None
    assert refusal is None, "a responder has nothing to say after msg3"
    if not responder.complete:
        return
    result = responder.result
    # Only PEER has signed PEER_STATIC's key: no input names anyone else.
    assert result.peer == PEER.node_id, f"handshake completed as {result.peer}"
    if mode == 2:
        send, _ = initiator.split()
        _same_transport(result.cipher, send)
        assert initiator.handshake_hash == result.handshake_hash


def handshake_initiator(data: bytes) -> None:
    """An initiator fed an arbitrary msg2.

    First byte: bit 0, mode: 0, the rest is msg2; 1, a real Noise responder
    reads our msg1 and writes msg2 around the rest as its payload. Bit 1:
    expect the responder's node id; bit 2: expect another one; bit 3: offer
    versions (1, 2) instead of (1,).
    Invariants: only HandshakeError escapes; a completed handshake chose an
    offered version, names the responder (and the expected one), and msg3
    is read by a real responder with matching transport keys.
    """
    r = Reader(data)
    flags = r.byte()
    expected = None
    if flags & 2:
        expected = ME.node_id
    if flags & 4:
        expected = OTHER.node_id
    versions = (1, 2) if flags & 8 else (1,)
    initiator = Handshake(
        PEER,
        initiator=True,
        static=PEER_STATIC,
        expected_peer=expected,
        versions=versions,
        rng=_rng(b"eph-peer"),
    )
    msg1 = initiator.start()
    responder: noise.HandshakeState | None = None
    if flags & 1:
        responder = noise.HandshakeState(
            initiator=False,
            prologue=PROLOGUE,
            static_private=ME_STATIC.private,
            rng=_rng(b"eph-me"),
        )
        responder.read_message(msg1)
        msg2 = responder.write_message(r.rest()[: noise.MAX_MESSAGE_LEN - 96])
    else:
        msg2 = r.rest()
    try:
        msg3 = initiator.receive(msg2)
    except HandshakeError:
        assert not initiator.complete
        return
    assert msg3 is not None
    result = initiator.result
    assert result.version in versions, f"completed on version {result.version}, not offered"
    assert result.peer == ME.node_id, f"handshake completed as {result.peer}"
    assert expected in (None, result.peer), "completed with a peer other than the expected one"
    if responder is not None:
        wire.as_map(wire.decode(responder.read_message(msg3)), "msg3", required={"key", "sig"})
        send, _ = responder.split()  # split() gives each side (send, receive)
        _same_transport(result.cipher, send)


# --- session ------------------------------------------------------------------------

# Small windows, so flow control is reachable within a short input.
OUR_HELLO = Hello(
    window=4,
    relay=True,
    features=(FILES_FEATURE, EPHEMERAL_FEATURE),
    agent="fuzz",
    window_bytes=MIN_WINDOW_BYTES,
)
PEER_HELLO = Hello(window=4, relay=True, features=(FILES_FEATURE,), agent="fuzz-peer")
# Ids a relay holds, for the reconciliation a RECON frame drives.
RELAY_IDS = sorted(hashlib.blake2b(bytes([i])).digest()[:32] for i in range(40))

OP_FRAME, OP_PUSH, OP_ACK = 0, 1, 2


class _SessionDriver:
    """Our side of a session, doing with each event what the node does with it."""

    def __init__(self) -> None:
        self.session = Session(OUR_HELLO)
        self.pushed: dict[int, int] = {}
        """Our pushes in flight: seq -> envelope length."""
        self.received: list[tuple[int, int]] = []
        """The peer's pushes we have not acked: (seq, length)."""
        self.next_peer_seq = 0
        self.recon_responder: Reconciler | None = None
        self.recon_initiator = Reconciler(RELAY_IDS, initiator=True)
        self.recon_initiator.initiate()  # as if our first RECON had gone out
        self.stopped = False

    def sent(self, frame: bytes) -> None:
        # Whatever we build must be a frame a peer can decode.
        wire.decode(frame, max_size=handshake.MAX_TRANSPORT_PLAINTEXT, max_depth=2)

    def feed(self, frame: bytes) -> None:
        s = self.session
        try:
            event = s.receive(frame)
        except SessionError:
            assert s.state is State.CLOSED, "a SessionError left the session open"
            self.stopped = True
            return
        if isinstance(event, HelloReceived):
            assert s.state is State.OPEN
        elif isinstance(event, ByeReceived):
            assert s.state is State.CLOSED
            self.stopped = True
        elif isinstance(event, PushReceived):
            assert event.seq == self.next_peer_seq, "pushes out of order got through"
            self.next_peer_seq += 1
            self.received.append((event.seq, len(event.envelope)))
            assert len(self.received) <= OUR_HELLO.window, "peer went over our window"
            held = sum(n for _, n in self.received)
            assert held <= OUR_HELLO.window_bytes, "peer went over our byte window"
            self._open(event.envelope)
        elif isinstance(event, AckReceived):
            for seq in event.seqs:
                assert seq in self.pushed, f"ACK for {seq}, which is not in flight, got through"
                del self.pushed[seq]
        elif isinstance(event, PingReceived):
            self.sent(s.pong_frame(event.nonce))
        elif isinstance(event, EphemeralReceived):
            self._open(event.envelope)
        elif isinstance(event, PeersReceived):
            for record in event.records:
                with contextlib.suppress(PeerRecordError):
                    parse_record(record, now_ms=NOW_MS)
        elif isinstance(event, NoticeReceived):
            with contextlib.suppress(NoticeError):
                parse_notice(event.notice)
        elif isinstance(event, ReconReceived):
            self._recon(event)
        elif isinstance(event, FileDataReceived):
            assert event.data, "an empty FDATA got through"
            assert event.offset + len(event.data) <= event.total, "FDATA past its chunk"
        assert s.in_flight == len(self.pushed), "session and driver disagree on pushes in flight"
        assert s.send_window_free >= 0

    def _open(self, data: bytes) -> None:
        try:
            outer = envelope.parse_outer(data)
            if outer.recipient == ME.node_id:
                envelope.open_envelope(ME, data, now_ms=NOW_MS, outer=outer)
        except EnvelopeError:
            pass

    def _recon(self, event: ReconReceived) -> None:
        if event.request:
            if self.recon_responder is None or is_start(event.message):
                self.recon_responder = Reconciler(RELAY_IDS, initiator=False)
            recon = self.recon_responder
        else:
            recon = self.recon_initiator
        try:
            reply = recon.receive(event.message)
        except ReconcileError:
            self.stopped = True  # the node drops the peer
            return
        recon.pop_give()
        recon.pop_need()
        if reply is not None:
            # Our answer must fit a frame, whatever the peer asked.
            self.sent(self.session.recon_frame(reply, request=not event.request))

    def push(self, envelope_bytes: bytes) -> None:
        s = self.session
        if s.state is not State.OPEN or not envelope_bytes or not s.can_push(envelope_bytes):
            return
        if len(envelope_bytes) > handshake.MAX_TRANSPORT_PLAINTEXT - 64:
            return
        seq, frame = s.push_frame(envelope_bytes)
        self.sent(frame)
        self.pushed[seq] = len(envelope_bytes)

    def ack(self, op: int, reason: bytes) -> None:
        s = self.session
        if s.state is not State.OPEN or not self.received:
            return
        count = 1 + (op >> 2) % len(self.received)
        status = AckStatus((op >> 4) % 3)
        text = reason.decode("utf-8", "replace")
        self.sent(s.ack_frame(self.received[0][0], status, text, count))
        del self.received[:count]


def session_frames(data: bytes) -> None:
    """A session fed an arbitrary sequence of frames after a completed HELLO.

    First byte: bit 0 set, the peer's HELLO is the first frame of the input
    instead of a real one. Then steps of an op byte and a chunk: op mod 4 is
    0 or 3, the chunk is the peer's next frame; 1, we push the chunk as an
    envelope (so the peer's ACKs have something to ack); 2, we ack the
    peer's oldest pushes (count and status from the op's high bits). Events
    go where the node sends them: envelopes to `parse_outer`/`open_envelope`,
    records to `parse_record`, notices to `parse_notice`, RECON messages to
    a relay's reconciler.
    Invariants: only each parser's documented error escapes; a SessionError
    closes the session; flow control and ACK bookkeeping hold; every frame
    we build (replies included) decodes and fits a frame.
    """
    r = Reader(data)
    flags = r.byte()
    driver = _SessionDriver()
    driver.sent(driver.session.hello_frame())
    if not flags & 1:
        driver.feed(Session(PEER_HELLO).hello_frame())
    while not r.done and not driver.stopped:
        op, chunk = r.byte(), r.chunk()
        if op % 4 == OP_PUSH:
            driver.push(chunk)
        elif op % 4 == OP_ACK:
            driver.ack(op, chunk)
        else:
            driver.feed(chunk)


# --- local API ----------------------------------------------------------------------

API_TOKEN = b"fuzz-token"
# Small limits, so the refusals they cause are reachable with short inputs.
HTTP_LIMITS = httpapi.ApiLimits(max_header_bytes=2048, max_body_bytes=1024)
# Virtual seconds (the clock jumps when every task waits): every wait the
# server has is bounded by its limits, far below this.
HTTP_DEADLINE = 3600.0
# What HTTP itself says to answer (RFC 9112): a transfer coding the server
# does not implement (501), another HTTP version (505). Any other 5xx is ours.
PROTOCOL_5XX = (501, 505)
_CHUNK_SIZES = (0, 1, 2, 3, 7, 16, 100, 1000)
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


async def _echo(request: httpapi.Request) -> httpapi.Response:
    # What the parser made of the request, as the API's handlers see it.
    return httpapi.json_response(
        {
            "method": request.method,
            "path": request.path,
            "params": dict(request.params),
            "query": dict(request.query),
            "headers": dict(request.headers),
            "json": type(request.json()).__name__ if request.body else None,
        }
    )


def _echo_router() -> httpapi.Router:
    """Every route of the real API (from its OpenAPI table), answered by `_echo`."""
    router = httpapi.Router()
    for pattern, operations in api.OPENAPI["paths"].items():
        for method in operations:
            router.route(method.upper(), pattern)(_echo)
    return router


ECHO_ROUTER = _echo_router()


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _statuses(out: bytes) -> list[int]:
    """The status of every response the server wrote, in order."""
    statuses = []
    pos = 0
    while pos < len(out):
        m = _STATUS_LINE.match(out, pos)
        assert m, f"not a response at byte {pos}: {out[pos : pos + 40]!r}"
        end = out.find(b"\r\n\r\n", m.start())
        assert end >= 0, "response head not ended"
        head = out[m.end() : end].lower()
        statuses.append(int(m.group(1)))
        pos = end + 4
        length = re.search(rb"(?:^|\r\n)content-length: (\d+)", head)
        # A JSON body starts with "{"; a HEAD answer has the length but no body.
        if length and out[pos : pos + 1] == b"{":
            pos += int(length.group(1))
    return statuses


async def _http_exchange(data: bytes) -> bytes:
    r = Reader(data)
    flags = r.byte()
    token = API_TOKEN if flags & 1 else None
    limits = (
        HTTP_LIMITS if flags & 2 else httpapi.ApiLimits(max_header_bytes=2048, keep_alive=False)
    )
    size = _CHUNK_SIZES[(flags >> 2) % len(_CHUNK_SIZES)]
    request = r.rest()
    client, server = trio.testing.memory_stream_pair()
    slots, stream_slots = trio.Semaphore(1), trio.Semaphore(1)
    await slots.acquire()
    out = bytearray()

    async def talk() -> None:
        step = max(size, len(request) // 64 + 1) if size else len(request) or 1
        for at in range(0, len(request), step):
            try:
                await client.send_all(request[at : at + step])
            except trio.BrokenResourceError:
                break  # the server has closed: what it wrote is still read below
            # Let the server take this piece before the next one comes.
            await trio.testing.wait_all_tasks_blocked()
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send_eof()
        while chunk := await client.receive_some():
            out.extend(chunk)

    with trio.fail_after(HTTP_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk)
            await httpapi._serve_connection(server, ECHO_ROUTER, limits, token, slots, stream_slots)
    # The connection gave its slot back.
    assert slots.value == 1, "the connection did not release its slot"
    return bytes(out)


def http_request(data: bytes) -> None:
    """The local API's HTTP/1.1 server fed arbitrary bytes on one connection.

    First byte: bit 0, require the bearer token; bit 1, small limits with
    keep-alive (else keep-alive off); bits 2-4, the size of the pieces the
    bytes arrive in. The rest is what the client sends, then it closes its
    side. Routes are every path of the real API, answered by an echo.
    Invariants: the server ends the connection within its time limits,
    logs no error (a crash inside it, or a 500), and writes only well-formed
    responses with a 1xx, 2xx or 4xx status, or one of PROTOCOL_5XX.
    """
    errors = _Errors()
    logger = logging.getLogger(httpapi.__name__)
    logger.addHandler(errors)
    try:
        out = trio.run(_http_exchange, data, clock=trio.testing.MockClock(autojump_threshold=0))
    except trio.TooSlowError:
        raise AssertionError("the server kept the connection past every limit") from None
    finally:
        logger.removeHandler(errors)
    assert not errors.records, f"the server logged: {errors.records[0].getMessage()}"
    for status in _statuses(out):
        assert status < 500 or status in PROTOCOL_5XX, f"status {status}"


# --- the targets ------------------------------------------------------------------

TARGETS: dict[str, Callable[[bytes], None]] = {
    "wire": wire_decode,
    "handshake_responder": handshake_responder,
    "handshake_initiator": handshake_initiator,
    "session": session_frames,
    "http": http_request,
}


# --- seeds ------------------------------------------------------------------------


def _seed_envelope(kind: MessageKind, body: wire.Value, *, to: Identity = ME) -> bytes:
    return envelope.seal(
        PEER, to.node_id, kind, body, timestamp_ms=NOW_MS - 1000, expires_ms=NOW_MS + 3_600_000
    )


MAX_HOSTILE_SEED = 1024


def _wire_seeds() -> dict[str, bytes]:
    session = Session(PEER_HELLO)
    return {
        "hello": session.hello_frame(),
        "envelope": _seed_envelope(MessageKind.TEXT, "hello"),
        "nested": wire.encode({"a": [1, -1, b"x", "y", True, False, None, {"b": []}]}),
        "ints": wire.encode(
            [0, 23, 24, 255, 256, 65535, 65536, 1 << 32, (1 << 64) - 1, -(1 << 64)]
        ),
        "frames": wire.encode_frame(b"one") + wire.encode_frame(b"") + b"\x00\x05tw",
        # What the decoder must refuse (the small ones: the corpus stays small).
        **{
            "hostile-" + re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-"): data
            for what, data in HOSTILE.items()
            if len(data) <= MAX_HOSTILE_SEED
        },
    }


def _handshake_messages(
    versions: tuple[int, ...] = (1,),
) -> tuple[bytes, bytes | None, bytes | None, bytes | None]:
    """msg1, msg2 (or a refusal), msg3 between PEER and ME, with the harnesses' keys."""
    initiator = Handshake(
        PEER, initiator=True, static=PEER_STATIC, versions=versions, rng=_rng(b"eph-peer")
    )
    responder = Handshake(ME, initiator=False, static=ME_STATIC, rng=_rng(b"eph-me"))
    msg1 = initiator.start()
    try:
        msg2 = responder.receive(msg1)
    except HandshakeError as exc:
        return msg1, None, exc.reply, None
    assert msg2 is not None
    return msg1, msg2, None, initiator.receive(msg2)


def _responder_seeds() -> dict[str, bytes]:
    msg1, _, _, msg3 = _handshake_messages()
    assert msg3 is not None
    offer = wire.encode({"versions": [1]})
    identity = handshake._identity_payload(PEER_STATIC, PEER, None)
    wrong = handshake._identity_payload(NoiseStatic.generate(OTHER, _rng(b"x")), OTHER, None)
    return {
        "msg1": b"\x00" + msg1,
        "msg1-v2": b"\x00" + _handshake_messages((1, 2))[0],
        "msg3": b"\x01" + msg3,
        "payloads": b"\x02" + pack(offer) + identity,
        "payloads-no-common-version": b"\x02" + pack(wire.encode({"versions": [7, 9]})),
        "payloads-error-as-identity": b"\x02" + pack(offer) + wire.encode({"error": "no"}),
        "payloads-other-static": b"\x02" + pack(offer) + wrong,
    }


def _initiator_seeds() -> dict[str, bytes]:
    seeds = {}
    for flags in (0, 2, 4, 8):
        versions = (1, 2) if flags & 8 else (1,)
        _, msg2, refusal, _ = _handshake_messages(versions)
        assert msg2 is not None
        assert refusal is None
        seeds[f"msg2-flags{flags}"] = bytes([flags]) + msg2
    _, _, refusal, _ = _handshake_messages((5,))
    assert refusal is not None
    seeds["refusal"] = b"\x00" + refusal
    for version in (1, 2, 3):
        seeds[f"payload-v{version}"] = b"\x01" + handshake._identity_payload(ME_STATIC, ME, version)
    seeds["payload-v2-offered"] = b"\x09" + handshake._identity_payload(ME_STATIC, ME, 2)
    seeds["payload-expected-other"] = b"\x05" + handshake._identity_payload(ME_STATIC, ME, 1)
    seeds["payload-error"] = b"\x01" + wire.encode({"error": "no common protocol version"})
    return seeds


def _session_seeds() -> dict[str, bytes]:
    peer = Session(PEER_HELLO)
    peer.hello_frame()
    peer.receive(Session(OUR_HELLO).hello_frame())
    text = _seed_envelope(MessageKind.TEXT, "hi")
    typing = _seed_envelope(MessageKind.TYPING, {"active": True})
    _, push0 = peer.push_frame(text)
    _, push1 = peer.push_frame(_seed_envelope(MessageKind.TEXT, "for another", to=OTHER))
    record = PeerRecord.create(PEER, [("127.0.0.1", 4242), ("::1", 4243)], 1, NOW_MS).data
    notice = DeliveryNotice.create(PEER, [bytes(32), bytes([1]) * 32], NOW_MS).data
    responder = Reconciler(RELAY_IDS[::2], initiator=True)
    start = responder.initiate()
    ours = Reconciler(RELAY_IDS, initiator=True).initiate()
    answer = Reconciler(RELAY_IDS[5:], initiator=False).receive(ours)
    assert answer is not None
    offer = bytes(range(16))

    def frame(chunk: bytes) -> bytes:
        return bytes([0]) + pack(chunk)

    def our_push(envelope_bytes: bytes) -> bytes:
        return bytes([1]) + pack(envelope_bytes)

    # ACKs of our pushes (the peer's session only acks pushes it received).
    ack0 = wire.encode({"t": 3, "n": 0, "s": 0})
    ack_range = wire.encode({"t": 3, "n": 0, "s": 2, "c": 2, "r": "refused"})
    return {
        "hello-only": b"\x00",
        "peer-hello-fuzzed": b"\x01" + frame(Session(PEER_HELLO).hello_frame()),
        "push-and-ack": b"\x00" + frame(push0) + frame(push1) + bytes([2 | 4]) + pack(b"ok"),
        "our-pushes-acked": b"\x00" + our_push(text) + frame(ack0),
        "our-pushes-range-acked": b"\x00" + our_push(text) + our_push(text) + frame(ack_range),
        "ping": b"\x00" + frame(peer.ping_frame(7)) + frame(peer.pong_frame(7)),
        "peers": b"\x00" + frame(peer.peers_frame([record, b"junk"])),
        "notice": b"\x00" + frame(peer.notice_frame(notice)),
        "ephemeral": b"\x00" + frame(peer.ephemeral_frame(typing)),
        "recon-start": b"\x00" + frame(peer.recon_frame(start, request=True)),
        "recon-answer": b"\x00" + frame(peer.recon_frame(answer, request=False)),
        "files": b"\x00"
        + frame(peer.file_get_frame(offer, 0))
        + b"".join(frame(f) for f in peer.file_data_frames(offer, 1, bytes(100)))
        + frame(peer.file_none_frame(offer, 2, "gone")),
        "bye": b"\x00" + frame(peer.bye_frame("done")),
        # Hand-made, since a real peer keeps to our window and acks only pushes.
        "over-window": b"\x00"
        + b"".join(frame(wire.encode({"t": 2, "n": n, "env": b"x"})) for n in range(5)),
        "ack-not-in-flight": b"\x00" + frame(ack0),
    }


def _http(method: str, target: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", *headers]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _http_seeds() -> dict[str, bytes]:
    auth = f"Authorization: Bearer {API_TOKEN.decode()}"
    peer = str(PEER.node_id)
    send = b'{"to":"' + peer.encode() + b'","text":"hi"}'
    return {
        "status": b"\x00" + _http("GET", "/v1/status"),
        "status-token": b"\x01" + _http("GET", "/v1/status", b"", auth),
        "status-no-token": b"\x01" + _http("GET", "/v1/status"),
        "send": b"\x02" + _http("POST", "/v1/messages", send),
        "inbox-query": b"\x02" + _http("GET", "/v1/inbox?limit=5&unread=1&since=%20x"),
        "param": b"\x02" + _http("POST", f"/v1/contacts/{peer}/block", b"{}"),
        "percent": b"\x02" + _http("GET", "/v1/conversations/a%2Fb%ff"),
        "head": b"\x02" + _http("HEAD", "/v1/status"),
        "wrong-method": b"\x02" + _http("PUT", "/v1/status"),
        "unknown": b"\x02" + _http("GET", "/nope"),
        "bad-json": b"\x02" + _http("POST", "/v1/settings", b"{nope"),
        "keep-alive": b"\x02" + _http("GET", "/v1/status") + _http("GET", "/v1/peers"),
        "one-byte-pieces": b"\x06" + _http("GET", "/v1/status"),
        "chunked": b"\x02"
        + b"POST /v1/read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"2\r\n{}\r\n0\r\n\r\n",
        "expect-continue": b"\x02"
        + _http("POST", "/v1/typing", b'{"to":"x"}', "Expect: 100-continue"),
        "too-large": b"\x02" + _http("POST", "/v1/settings", b"[" + b"1," * 600 + b"1]"),
        "http10": b"\x02" + b"GET /v1/status HTTP/1.0\r\n\r\n",
        "unknown-transfer-coding": b"\x02"
        + b"POST /v1/read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}",
        "garbage": b"\x02" + b"\x00\xff GET / HTTP/9\r\n\r\n",
    }


def seed_inputs() -> dict[str, dict[str, bytes]]:
    """Seed inputs per target, made by the real encoders: name -> bytes."""
    return {
        "wire": _wire_seeds(),
        "handshake_responder": _responder_seeds(),
        "handshake_initiator": _initiator_seeds(),
        "session": _session_seeds(),
        "http": _http_seeds(),
    }
