"""Encrypted connections over any trio stream: handshake, frames, limits.

`Connection` runs over any `trio.abc.Stream`, so tests drive it over memory
streams with a mock clock; the daemon gives it TCP streams. Framing is
`wire.encode_frame` (2-byte length, one Noise message); every frame after
the handshake is decrypted by the `TransportCipher` the handshake produced.

Limits (each with its reason in `TransportLimits`): handshake deadline,
half-open handshakes in total, new handshakes per source address (a token
bucket, as WireGuard does under load), established connections in total,
and frames per second from each peer (a reader that runs out of tokens stops
reading, so TCP pushes back on the peer instead of us buffering).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pdm import handshake, wire
from p2pdm.handshake import Handshake, HandshakeError, NoiseStatic

if TYPE_CHECKING:
    from collections.abc import Mapping

    from p2pdm.identity import Identity, NodeId

log = logging.getLogger(__name__)

# One read never needs more than one whole frame.
READ_SIZE = wire.FRAME_HEADER_LEN + wire.MAX_FRAME_PAYLOAD


@dataclass(frozen=True)
class TransportLimits:
    handshake_timeout: float = 10.0
    """Seconds a peer has to finish the handshake: a stalled one holds a slot."""
    max_half_open: int = 64
    """Handshakes in progress at once, from everyone."""
    half_open_grace: float = 1.0
    """When all those slots are taken, a newcomer ends the oldest handshake
    in progress if it has taken longer than this (an honest one takes a
    round trip): stalled handshakes cannot keep new peers out."""
    handshake_rate: float = 5.0
    """New handshakes per second allowed from one source address..."""
    handshake_burst: float = 20.0
    """...after a burst of this many (a restarting peer redials all at once)."""
    max_connections: int = 256
    """Established connections; a node in a small mesh keeps far fewer."""
    frame_rate: float = 20_000.0
    """Frames per second read from one peer; well above what a node sends."""
    frame_burst: float = 40_000.0
    """Frames a peer may send at once before the rate applies."""
    idle_timeout: float = 90.0
    """Seconds without any frame before a peer is declared dead."""
    keepalive_interval: float = 30.0
    """Seconds of silence after which we send a PING (well under idle_timeout)."""
    send_timeout: float = 30.0
    """Seconds one frame may take to send: a peer that stops reading is dropped."""
    discovery_dial_rate: float = 1.0
    """Dials per second to peers wanted only because discovery named them..."""
    discovery_dial_burst: float = 8.0
    """...after a burst of this many: a flood of fake announcements costs this much."""
    relay_ttl_days: float = 7.0
    """A relay holds envelopes at most this long; it refuses those that expire
    further ahead than this plus the skew a sender's clock may have (a day,
    or this much if less)."""
    relay_max_bytes: int = 256 << 20
    """Envelope bytes a relay holds for others, in all; when full it refuses."""
    relay_peer_bytes: int = 32 << 20
    """Envelope bytes a relay holds from one uploading peer (a fair share)."""
    relay_copies: int = 3
    """Relays a sender hands each message to while its recipient is away."""


# accept() failing for lack of descriptors or memory is a passing state (a
# burst of connections): wait a little and accept again, never give up.
ACCEPT_RETRY_DELAY = 0.1
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


async def accept_retrying(listener: trio.SocketListener, what: str) -> trio.SocketStream:
    """The next connection; capacity errors are logged and retried, others raised."""
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            log.error("%s: accept failed (%s); retrying", what, os.strerror(exc.errno or 0))
            await trio.sleep(ACCEPT_RETRY_DELAY)


def limits_with(
    overrides: Mapping[str, object], base: TransportLimits | None = None
) -> TransportLimits:
    """`base` (the defaults) with some limits changed; ValueError names a bad one."""
    base = base or TransportLimits()
    known = {f.name for f in dataclasses.fields(TransportLimits)}
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in known:
            raise ValueError(f"unknown limit {name!r} (known: {', '.join(sorted(known))})")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"limit {name} must be a number, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"limit {name} must be a positive number, not {value!r}")
        wants_int = getattr(base, name).__class__ is int
        if wants_int and value != int(value):
            raise ValueError(f"limit {name} must be a whole number, not {value!r}")
        changes[name] = int(value) if wants_int else float(value)
    return dataclasses.replace(base, **changes)


class TokenBucket:
    """Classic token bucket; the clock is a parameter (`now`), never read here."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens, self._stamp = burst, now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        # The tolerance absorbs float rounding in the refill, which would
        # otherwise leave 0.9999... tokens and a wait of 1e-17 s forever.
        if self._tokens >= n - 1e-9:
            self._tokens -= n
            return True
        return False

    def consume(self, now: float, n: float = 1.0) -> None:
        """Take `n` tokens even if they are not all there (a debt paid by waiting)."""
        self._refill(now)
        self._tokens -= n

    def wait_time(self, now: float, n: float = 1.0) -> float:
        """Seconds until `n` tokens are there (0 if they are now)."""
        self._refill(now)
        return max(0.0, (n - self._tokens) / self._rate)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self._burst


class ConnectionClosed(Exception):
    """The peer closed the connection or it broke; `reason` says how."""


class Connection:
    """An established, encrypted connection to a known peer."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        result: handshake.HandshakeResult,
        reader: wire.FrameReader,
        *,
        initiator: bool,
        remote: str,
        limits: TransportLimits,
        handshake_bytes: tuple[int, int] = (0, 0),
    ) -> None:
        self.stream = stream
        self.peer: NodeId = result.peer
        self.version = result.version
        self.initiator = initiator
        self.remote = remote
        self._cipher = result.cipher
        self._reader = reader
        self._pending: list[bytes] = []
        self._send_lock = trio.Lock()
        self._send_timeout = limits.send_timeout
        self._budget = TokenBucket(limits.frame_rate, limits.frame_burst, trio.current_time())
        self.closed = False
        # Bytes on the wire (frames with their length prefix), handshake included.
        self.bytes_sent, self.bytes_received = handshake_bytes

    def __repr__(self) -> str:
        way = "to" if self.initiator else "from"
        return f"<Connection {way} {self.peer.short()} at {self.remote}>"

    async def send(self, plaintext: bytes) -> None:
        """Encrypt and send one frame. Frames from concurrent senders never interleave."""
        await self.send_many([plaintext])

    async def send_many(self, plaintexts: list[bytes]) -> None:
        """Encrypt several frames and send them with one write (one syscall, not N)."""
        async with self._send_lock:
            data = b"".join(wire.encode_frame(self._cipher.encrypt(p)) for p in plaintexts)
            self.bytes_sent += len(data)
            try:
                with trio.fail_after(self._send_timeout):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosed(f"send failed: {exc}") from None
            except trio.TooSlowError:
                # Part of a frame may be out: the stream cannot be used again.
                raise ConnectionClosed(f"peer read nothing for {self._send_timeout:g} s") from None

    async def receive(self) -> bytes:
        """The next decrypted frame. Raises ConnectionClosed or TransportError."""
        while not self._pending:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosed(f"receive failed: {exc}") from None
            if not data:
                raise ConnectionClosed("peer closed the connection")
            self._reader.feed(data)
            self._pending.extend(self._reader.frames())
        frame = self._pending.pop(0)
        self.bytes_received += len(frame) + wire.FRAME_HEADER_LEN
        wait = self._budget.wait_time(trio.current_time())
        if wait > 0:
            # Throttle: while we do not read, TCP backpressure reaches the peer.
            await trio.sleep(wait)
        self._budget.consume(trio.current_time())
        return self._cipher.decrypt(frame)

    async def aclose(self) -> None:
        self.closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


async def _read_handshake_frame(stream: trio.abc.Stream, reader: wire.FrameReader) -> bytes:
    while True:
        for frame in reader.frames():
            return frame
        data = await stream.receive_some(READ_SIZE)
        if not data:
            raise HandshakeError("peer closed the connection during the handshake")
        reader.feed(data)


async def run_handshake(
    stream: trio.abc.Stream,
    identity: Identity,
    static: NoiseStatic,
    *,
    initiator: bool,
    remote: str,
    limits: TransportLimits,
    expected_peer: NodeId | None = None,
) -> Connection:
    """Run the handshake on `stream` within the limit's deadline.

    Raises HandshakeError (peer's fault: bad bytes, wrong identity, refusal,
    too slow) or ConnectionClosed. The caller closes the stream on failure.
    """
    hs = Handshake(identity, initiator=initiator, static=static, expected_peer=expected_peer)
    reader = wire.FrameReader()
    sent = received = 0

    async def send(message: bytes) -> None:
        nonlocal sent
        data = wire.encode_frame(message)
        sent += len(data)
        await stream.send_all(data)

    with trio.move_on_after(limits.handshake_timeout) as scope:
        try:
            if initiator:
                await send(hs.start())
            while not hs.complete:
                frame = await _read_handshake_frame(stream, reader)
                received += len(frame) + wire.FRAME_HEADER_LEN
                try:
                    reply = hs.receive(frame)
                except HandshakeError as exc:
                    if exc.reply is not None:
                        await send(exc.reply)
                    raise
                if reply is not None:
                    await send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionClosed(f"connection broke during the handshake: {exc}") from None
    if scope.cancelled_caught:
        raise HandshakeError(f"handshake not finished within {limits.handshake_timeout:g} s")
    return Connection(
        stream,
        hs.result,
        reader,
        initiator=initiator,
        remote=remote,
        limits=limits,
        handshake_bytes=(sent, received),
    )


@dataclass
class AdmissionControl:
    """Who may start a handshake now: per-source token buckets and a half-open cap."""

    limits: TransportLimits
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    # Bound the bucket table itself: a spoofing-free TCP attacker has few
    # addresses, but a LAN can have many; full buckets are dropped first.
    max_buckets: int = 4096
    # Handshakes in progress, oldest first: when each began, and how to end it.
    _in_progress: dict[int, tuple[float, trio.CancelScope]] = field(default_factory=dict)
    _next_key: int = 0

    @property
    def half_open(self) -> int:
        return len(self._in_progress)

    def admit(self, source: str, now: float, connections: int = 0) -> str | None:
        """None if a handshake from `source` may start now, with `connections`
        established, else why not.

        With every slot taken, the oldest handshake is ended to make room if
        it is past `half_open_grace`; only a newcomer that would be let in
        (under the connection cap, within its source's rate) gets to do that."""
        if connections >= self.limits.max_connections:
            return f"connection limit ({self.limits.max_connections}) reached"
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._forget_full(now)
            bucket = TokenBucket(self.limits.handshake_rate, self.limits.handshake_burst, now)
            self._buckets[source] = bucket
        if not bucket.take(now):
            return f"too many new connections from {source}"
        if self.half_open >= self.limits.max_half_open:
            key, (began, scope) = next(iter(self._in_progress.items()))
            if now - began < self.limits.half_open_grace:
                return f"too many handshakes in progress ({self.limits.max_half_open})"
            scope.cancel()
            del self._in_progress[key]
        return None

    def started(self, now: float, scope: trio.CancelScope) -> int:
        """A handshake began under `scope` (cancelled to make room); returns its key."""
        self._next_key += 1
        self._in_progress[self._next_key] = (now, scope)
        return self._next_key

    def finished(self, key: int) -> None:
        self._in_progress.pop(key, None)  # gone already if it was ended to make room

    def _forget_full(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_buckets:
            self._buckets.pop(next(iter(self._buckets)))


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse HOST:PORT (or [V6]:PORT); ValueError with a clear message otherwise."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}: expected [IPV6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"bad address {text!r}: expected HOST:PORT")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad address {text!r}: port must be 0..65535")
    return host, int(port_text)


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff: base * 2^attempt, capped, times (1 - jitter*random).

    `jitter` is a number in [0, 1) drawn by the caller, so tests choose it.
    """
    return min(cap, base * math.pow(2, min(attempt, 30))) * (1.0 - jitter / 2)
