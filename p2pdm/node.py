"""The daemon: wires transport, sessions, the store and the outbox.

Tasks (one nursery, structured):
- a listener per address; each accepted stream is handshaken under the
  transport's admission control, then becomes a `PeerLink`;
- a dialler per bootstrap address, redialling with exponential backoff and
  jitter while no connection to it is up;
- the dial loop, which keeps wanted peers connected (peers we hold mail
  for, contacts, recently discovered ones; `PeerTable` decides);
- mDNS discovery (when on), whose hints only add addresses and reasons to
  dial: the handshake decides who a peer is;
- the `Committer`, through which every store write goes: it batches whatever
  is queued into one transaction (group commit) and only then lets anyone
  acknowledge anything;
- a housekeeping task that expires outbox entries and forgets old ids.

Each `PeerLink` runs a reader, an acknowledger, a pusher (outbox -> peer,
within the peer's window), a keepalive and peer exchange, and ends when
any of them ends.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import ipaddress
import itertools
import logging
import math
import os
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from p2pdm import __version__, envelope, files, groups, wire
from p2pdm.envelope import CHANGE_KINDS, RECEIPT_KINDS, EnvelopeError, MessageKind
from p2pdm.handshake import (
    PROTOCOL_VERSIONS,
    HandshakeError,
    NoiseStatic,
    TransportError,
    UnexpectedPeer,
)
from p2pdm.notice import MAX_NOTICE_IDS, DeliveryNotice, NoticeError, parse_notice
from p2pdm.peerrecord import PeerRecord, PeerRecordError, parse_record, usable_from
from p2pdm.peertable import PeerTable
from p2pdm.reconcile import ReconcileError, Reconciler, is_start
from p2pdm.session import (
    DEFAULT_WINDOW,
    EPHEMERAL_FEATURE,
    FILES_FEATURE,
    PEX_WANT_FEATURE,
    AckReceived,
    AckStatus,
    ByeReceived,
    EphemeralReceived,
    FileDataReceived,
    FileGetReceived,
    FileMissingReceived,
    Hello,
    HelloReceived,
    NoticeReceived,
    PeersReceived,
    PingReceived,
    PongReceived,
    PushReceived,
    ReconReceived,
    Session,
    SessionError,
    SessionUsageError,
    State,
)
from p2pdm.settings import AcceptPolicy, ChatSettings
from p2pdm.store import (
    AcceptResult,
    AddressSource,
    MessageRef,
    Queued,
    RelayQuota,
    RelayResult,
    Store,
    StoreError,
    group_fields,
    text_of_body,
    vanish_after,
)
from p2pdm.transfer import FILE_PIECES_BUFFERED, MAX_FILE_REQUESTS, Transfers
from p2pdm.transport import (
    AdmissionControl,
    Connection,
    ConnectionClosed,
    TokenBucket,
    TransportLimits,
    accept_retrying,
    backoff_delay,
    format_address,
    parse_address,
    run_handshake,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence
    from pathlib import Path

    from p2pdm.discovery.mdns import DialHint, MdnsDiscovery
    from p2pdm.identity import Identity, NodeId
    from p2pdm.store import OutboxRow, RelayRow

log = logging.getLogger(__name__)
_E = TypeVar("_E", bound="Enqueue")
_V = TypeVar("_V")

DEFAULT_PORT = 7707
# A week: long enough for friends who are rarely online, short enough that
# relays (and the seen-id table) do not grow without bound.
DEFAULT_TTL_MS = 7 * 24 * 3600 * 1000
MAX_TTL_MS = 30 * 24 * 3600 * 1000
# Operations per group commit: large enough to amortise one fsync over a
# full window of pushes from several peers, small enough to ack promptly.
MAX_BATCH = 512
# Prepared batches waiting for the commit stage; more would only add latency.
PREPARED_AHEAD = 2
# Receipts carry many ids; one envelope holds this many comfortably.
MAX_RECEIPT_IDS = 256
# Pushes coalesced into one socket write (bounded so one write stays ~1 MiB).
PUSHES_PER_WRITE = 16
# Messages a link holds in memory to push; more wait in the store.
MAX_LINK_QUEUE = 1024
# A message pushed but not receipted is pushed again after this long.
RESEND_AFTER_MS = 60_000
# Connect timeout for dials; a bootstrap address that does not answer
# within it is retried with backoff.
DIAL_TIMEOUT = 10.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0
HOUSEKEEPING_INTERVAL = 60.0
# The dial loop looks at who is wanted at least this often (and when poked).
DIAL_CHECK_INTERVAL = 5.0
# Addresses tried per dial of a peer, best first, each within DIAL_TIMEOUT.
ADDRESSES_PER_DIAL = 4
# Peer exchange: records sent per PEERS frame (ours first), how often a
# link repeats them, and how often a peer may send us a PEERS frame.
PEX_RECORDS = 32
PEX_INTERVAL = 600.0
PEX_MIN_GAP = 5.0
# Peers whose known records we remember (each at most the peers we know).
PEX_MEMORY_PEERS = 1024
# Peer exchange news goes to this many other links, chosen at random (as
# gossip does): each record still reaches every node, from few neighbours.
PEX_NEWS_FANOUT = 6
# Writing when a link ended waits at most this long (even while stopping).
LINK_END_WRITE_TIMEOUT = 2.0
# Records already checked, by digest: the same bytes arriving again (every
# peer passes the mesh's records on) cost no second signature check.
PEX_CHECKED_RECORDS = 4096
# Our own record's addresses: listening on a wildcard address advertises
# the interface addresses, at most this many.
MAX_ADVERTISED = 8
RECORD_SEQ_KEY = "peer_record_seq"
# Our last signed record, reused at the next start if our addresses are the
# same: a new one would be news that every peer passes on to every other.
OWN_RECORD_KEY = "peer_record"
# The kind of an Outgoing that is an envelope held for someone else: its
# real kind is sealed inside.
RELAYED = -1
# Delivery notices a peer may send us: per second, and at once.
NOTICE_RATE = 20.0
NOTICE_BURST = 64.0
# How long our notices wait to gather more ids (they only save peers space).
NOTICE_DELAY = 1.0
# Relay-to-relay reconciliation: the dialling side runs one at link open;
# each side runs one when its own held set changed (at most every MIN_GAP),
# and every INTERVAL regardless. A run that takes over TIMEOUT ends the link.
# A run costs a pass over the held ids (~0.15 s of CPU at 100,000), per link:
# MIN_GAP keeps a busy relay with many links from spending its time on it.
RECONCILE_MIN_GAP = 30.0
RECONCILE_INTERVAL = 600.0
RECONCILE_TIMEOUT = 60.0
# Typing: its envelope expires after TTL (a relay that got one anyway drops
# it soon); one older than STALE, or as far ahead, is ignored. Ephemeral
# frames a peer may send us: per second, and at once (more are dropped).
TYPING_TTL_MS = 30_000
TYPING_STALE_MS = 10_000
EPHEMERAL_RATE = 4.0
EPHEMERAL_BURST = 8.0

# Events kept for a slow event-stream subscriber before it is dropped.
SUBSCRIBER_BUFFER = 1024
AGENT = f"p2pdm/{__version__}"


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    listen: tuple[tuple[str, int], ...] = (("0.0.0.0", DEFAULT_PORT),)
    bootstrap: tuple[tuple[str, int], ...] = ()
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    """Interfaces mDNS uses; empty means every interface with multicast."""
    relay: bool = True
    window: int = DEFAULT_WINDOW
    ttl_ms: int = DEFAULT_TTL_MS
    limits: TransportLimits = field(default_factory=TransportLimits)
    name: str | None = None
    """Display name (config `name`); shown in status, never sent to peers yet."""
    relay_file_max: int = files.DEFAULT_RELAYED_SIZE
    """Files up to this size are sent in parts that relays carry; larger
    ones only directly (config `relay_file_kib`)."""
    clock_offset_ms: int = 0
    """Added to the wall clock wherever the node reads it (`--clock-offset`):
    runs a node as if its clock were wrong, as users' clocks can be."""


# --- events for the local API -------------------------------------------------


class ListenError(Exception):
    """The node cannot listen on a configured address; the message names it."""


class EventHub:
    """Fan-out of node events to API subscribers; a slow one is cut off, not waited for."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[tuple[str, dict[str, Any]]]] = set()

    def publish(self, name: str, data: dict[str, Any]) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait((name, data))
            except trio.WouldBlock:
                log.warning("event subscriber too slow; dropping it")
                self._subscribers.discard(channel)
                channel.close()
            except trio.BrokenResourceError:
                self._subscribers.discard(channel)

    def subscribe(self) -> trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]]:
        # Forget subscribers that closed their end: without this they would
        # wait for the next event to be noticed, on a node with no events.
        for channel in list(self._subscribers):
            if channel.statistics().open_receive_channels == 0:
                self._subscribers.discard(channel)
        send, receive = trio.open_memory_channel[tuple[str, dict[str, Any]]](SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        return receive

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


# --- group commit -------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """What a link needs to push one outbox message."""

    message_id: bytes
    recipient: NodeId
    envelope: bytes
    kind: int

    @classmethod
    def from_row(cls, row: OutboxRow) -> Outgoing:
        return cls(row.message_id, row.recipient, row.envelope, row.kind)

    @classmethod
    def held(cls, row: RelayRow) -> Outgoing:
        return cls(row.message_id, row.recipient, row.envelope, RELAYED)

    @property
    def relayed(self) -> bool:
        """An envelope we hold for someone else (not from our outbox)."""
        return self.kind == RELAYED


class Op(abc.ABC):
    """One unit of work for the committer, applied inside a transaction."""

    needs_prepare = False
    """True for ops whose `prepare` does work (saves a thread hop otherwise)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: str | None = None
        self.prepared = False

    def prepare(self, node: Node, now_ms: int) -> None:  # noqa: B027 (optional hook)
        """Work that needs no store (crypto, parsing), done before the transaction."""

    @abc.abstractmethod
    def apply(self, store: Store, ctx: BatchContext) -> None:
        """Write this op's rows; runs in the committer's worker thread."""

    @classmethod
    def apply_run(cls, ops: Sequence[Op], store: Store, ctx: BatchContext) -> None:
        """Apply consecutive ops of this class, as `apply` one after the other
        would (a class may override it to write them all at once)."""
        for op in ops:
            op.apply(store, ctx)


@dataclass
class BatchContext:
    node: Node
    now_ms: int
    receipts: dict[NodeId, list[bytes]] = field(default_factory=dict)
    reads: dict[NodeId, list[bytes]] = field(default_factory=dict)
    """Read receipts to seal, by the sender of the messages read."""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    relayed: int = 0
    released: int = 0
    notices_back: list[tuple[NodeId, bytes]] = field(default_factory=list)
    accepted: dict[NodeId, bool] = field(default_factory=dict)
    """`Node.accepts` answers in this batch (ops that accept a peer drop theirs)."""
    offered_by: set[NodeId] = field(default_factory=set)
    """Peers that offered us files in this batch: fetch once committed."""
    vanishing: bool = False
    """A disappearing text was stored: the vanish timer may need to be sooner."""
    timers: dict[NodeId, int] = field(default_factory=dict)
    """Conversation timers set in this batch: the node's copy takes them once committed."""
    early_targets: set[bytes] | None = None
    """Ids stored in this run of pushes that changes may have overtaken (None: not known)."""

    def accepts(self, store: Store, peer: NodeId) -> bool:
        if peer not in self.accepted:
            self.accepted[peer] = self.node.accepts(store, peer)
        return self.accepted[peer]


async def send_soon(channel: trio.MemorySendChannel[_V], value: _V) -> None:
    """`channel.send`, without a trip through the scheduler when there is room.

    A link's reader calls this twice per pushed envelope; the trip (to let
    other tasks run) is left to its next read from the socket.
    """
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)


class Committer:
    """Runs queued `Op`s in batches, one transaction per batch, in a worker thread.

    Only after the commit returns are the ops' `done` events set, so nothing
    is acknowledged (to the API or to a peer) before it is durable.
    """

    def __init__(self, node: Node, store: Store) -> None:
        self._node = node
        self._store = store
        self._send, self._recv = trio.open_memory_channel[Op](MAX_BATCH * 4)
        self._commit_idle = False
        self._waiting: set[Op] = set()  # submitted, not yet done
        self.batches = 0
        self.ops = 0

    async def submit(self, op: Op) -> Op:
        """Queue `op`; await `op.done`. After the committer stopped, the op
        is done at once with an error (nothing is stored)."""
        self._waiting.add(op)
        try:
            await send_soon(self._send, op)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._finish(op, "the node stopped before this was stored")
        except trio.Cancelled:
            # A cancelled send queued nothing: forget the op (and its envelope).
            self._waiting.discard(op)
            raise
        return op

    async def run(self) -> None:
        # Two stages, each in its own worker thread, so that the crypto of
        # the next batch overlaps the commit (and fsync) of this one. When
        # the commit stage is idle there is nothing to overlap: the batch
        # goes to it unprepared and is prepared in the same thread call,
        # which saves a thread round trip of latency.
        prepared_send, prepared_recv = trio.open_memory_channel[list[Op]](PREPARED_AHEAD)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._prepare_stage, prepared_send)
                await self._commit_stage(prepared_recv)
        finally:
            # Stopping: whoever waits for an op not committed hears so.
            for op in list(self._waiting):
                self._finish(op, "the node stopped before this was stored")

    def _finish(self, op: Op, error: str | None = None) -> None:
        """The op is done (or failed with `error`): tell whoever waits for it."""
        op.error = error
        op.done.set()
        self._waiting.discard(op)

    async def _prepare_stage(self, out: trio.MemorySendChannel[list[Op]]) -> None:
        async with out, self._recv:
            async for first in self._recv:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                overlap = not self._commit_idle or out.statistics().current_buffer_used > 0
                if overlap and any(op.needs_prepare for op in batch):
                    await trio.to_thread.run_sync(self._prepare, batch, self._node.now_ms())
                await out.send(batch)

    def _prepare(self, batch: list[Op], now_ms: int) -> None:
        for op in batch:
            if op.needs_prepare and not op.prepared:
                op.prepare(self._node, now_ms)
                op.prepared = True

    async def _commit_stage(self, prepared: trio.MemoryReceiveChannel[list[Op]]) -> None:
        async with prepared:
            while True:
                self._commit_idle = True
                try:
                    batch = await prepared.receive()
                except trio.EndOfChannel:
                    return
                self._commit_idle = False
                while len(batch) < MAX_BATCH:
                    try:
                        batch += prepared.receive_nowait()
                    except trio.WouldBlock:
                        break
                ctx = BatchContext(self._node, self._node.now_ms())
                started = trio.current_time()
                try:
                    await trio.to_thread.run_sync(self._apply, batch, ctx)
                except StoreError as exc:
                    log.error("store write failed, %d operations refused: %s", len(batch), exc)
                    for op in batch:
                        self._finish(op, f"storage failure: {exc}")
                    continue
                self.batches += 1
                self.ops += len(batch)
                log.debug(
                    "committed %d ops in %.1f ms", len(batch), (trio.current_time() - started) * 1e3
                )
                self._node.messages_received += ctx.received
                self._node.messages_delivered += ctx.delivered
                self._node.duplicates_received += ctx.duplicates
                self._node.relay_received += ctx.relayed
                self._node.timers.update(ctx.timers)
                if ctx.relayed or ctx.released:
                    self._node.note_relay_change()
                for op in batch:
                    self._finish(op)
                for name, data in ctx.events:
                    self._node.events.publish(name, data)
                for out in ctx.outgoing:
                    self._node.offer(out)
                for peer, notice in ctx.notices_back:
                    self._node.send_notice(peer, notice)
                if ctx.offered_by:
                    self._node.files_offered(ctx.offered_by)
                if ctx.vanishing:
                    self._node.vanish_wake.set()

    def _apply(self, batch: list[Op], ctx: BatchContext) -> None:
        self._prepare(batch, ctx.now_ms)  # those the prepare stage passed on as they were
        store = self._store
        # Any error fails the whole batch (see _commit_stage): no savepoints.
        with store.transaction(all_or_nothing=True):
            for kind, run in itertools.groupby(batch, key=lambda op: type(op)):
                kind.apply_run(list(run), store, ctx)
            ctx.node.seal_receipts(store, ctx)


class Enqueue(Op):
    """Messages the local user sends: committed to the outbox before the API answers."""

    def __init__(self, rows: list[tuple[bytes, envelope.Outer, int, Any]]) -> None:
        super().__init__()
        self.rows = rows
        self.invalid: str | None = None
        """Why nothing was sent (nothing is stored then)."""

    def seal(
        self, node: Node, to: NodeId, kind: int, body: Any, *, now_ms: int, expires_ms: int
    ) -> None:
        """Sign and seal one message to `to`, to be queued by `apply`
        (ValueError for what the format cannot carry)."""
        sealed, outer = envelope.seal_with_outer(
            node.identity, to, kind, body, timestamp_ms=now_ms, expires_ms=expires_ms
        )
        self.rows.append((sealed, outer, int(kind), body))

    def refuse(self, why: str) -> None:
        """Nothing of this op is stored, for this reason."""
        self.invalid = why
        self.rows.clear()

    @staticmethod
    def accept_recipient(store: Store, ctx: BatchContext, to: NodeId) -> None:
        """Writing to someone accepts them (and files they offered us may
        now be fetched)."""
        store.accept_peer(to, ctx.now_ms)
        ctx.accepted.pop(to, None)
        ctx.offered_by.add(to)

    def apply(self, store: Store, ctx: BatchContext) -> None:
        items = [
            Queued(outer.message_id, outer.recipient, sealed, kind, body, outer.expires_ms)
            for sealed, outer, kind, body in self.rows
        ]
        for item, new in zip(items, store.enqueue_many(items, ctx.now_ms), strict=True):
            if new:
                ctx.outgoing.append(
                    Outgoing(item.message_id, item.recipient, item.envelope, item.kind)
                )


class SendTexts(Enqueue):
    """Texts the local user sends, sealed in the prepare stage, off the event loop."""

    needs_prepare = True

    def __init__(
        self, to: NodeId, texts: list[str], now_ms: int, expires_ms: int, vanish_ms: int = 0
    ) -> None:
        super().__init__([])
        self.to, self.texts, self.now_ms, self.expires_ms = to, texts, now_ms, expires_ms
        self.vanish_ms = vanish_ms
        """The conversation's disappearing timer (0: off)."""

    def prepare(self, node: Node, now_ms: int) -> None:
        try:
            for text in self.texts:
                body: wire.Value = {"t": text, "dis": self.vanish_ms} if self.vanish_ms else text
                self.seal(
                    node,
                    self.to,
                    MessageKind.TEXT,
                    body,
                    now_ms=self.now_ms,
                    expires_ms=self.expires_ms,
                )
        except ValueError as exc:
            self.refuse(str(exc))

    def apply(self, store: Store, ctx: BatchContext) -> None:
        if self.rows and self.expires_ms <= ctx.now_ms:
            # A lifetime shorter than the wait for this batch: refused here, as
            # the store would refuse it by failing the whole batch, others' too.
            self.refuse("the message expired before it could be stored; give it a longer life")
            return
        super().apply(store, ctx)
        if self.rows:
            self.accept_recipient(store, ctx, self.to)
            ctx.vanishing = ctx.vanishing or bool(self.vanish_ms)


class SendChange(Enqueue):
    """A reaction, edit, unsend or timer to one peer, committed together with
    its effect on our own copy."""

    def __init__(
        self,
        to: NodeId,
        kind: MessageKind,
        body: dict[wire.Key, wire.Value],
        effect: Callable[[Store, BatchContext], object],
        vanish_ms: int | None = None,
    ) -> None:
        super().__init__([])
        self.to, self.kind, self.body, self.effect = to, kind, body, effect
        self.vanish_ms = vanish_ms
        """The message it changes disappears then: the change expires no later."""

    def apply(self, store: Store, ctx: BatchContext) -> None:
        expires = ctx.now_ms + ctx.node.config.ttl_ms
        if self.vanish_ms is not None:
            expires = max(ctx.now_ms + 1, min(expires, self.vanish_ms))
        self.seal(ctx.node, self.to, self.kind, self.body, now_ms=ctx.now_ms, expires_ms=expires)
        self.effect(store, ctx)
        super().apply(store, ctx)


class GroupOp(Enqueue):
    """A group change or message: sealed inside the batch, against the group
    state held at that moment, so nothing is sealed to a member removed
    by a change committed before it."""

    def __init__(self, group_id: bytes) -> None:
        super().__init__([])
        self.group_id = group_id

    def _seal_to(self, node: Node, to: Iterable[NodeId], kind: int, body: Any, now_ms: int) -> None:
        expires = now_ms + node.config.ttl_ms
        for member in to:
            if member != node.identity.node_id:
                self.seal(node, member, kind, body, now_ms=now_ms, expires_ms=expires)

    def apply(self, store: Store, ctx: BatchContext) -> None:
        try:
            self.build(store, ctx)
        except ValueError as exc:  # GroupError is one
            self.refuse(str(exc))
            return
        super().apply(store, ctx)

    @abc.abstractmethod
    def build(self, store: Store, ctx: BatchContext) -> None:
        """Check the change against the held state and seal its envelopes."""


class ChangeGroup(GroupOp):
    """Create a group, or change one we are an admin of: the new state is
    kept and sent to every member of the old and the new list."""

    def __init__(
        self,
        group_id: bytes,
        *,
        name: str | None = None,
        add: Iterable[NodeId] = (),
        remove: Iterable[NodeId] = (),
        admins: Iterable[NodeId] = (),
        create: bool = False,
    ) -> None:
        super().__init__(group_id)
        self.name, self.add, self.remove = name, set(add), set(remove)
        self.new_admins, self.create = set(admins), create
        self.state: groups.GroupState | None = None

    def build(self, store: Store, ctx: BatchContext) -> None:
        me = ctx.node.identity.node_id
        current = groups.load(store, self.group_id)
        if self.create:
            if current is not None:
                raise ValueError("that group id is taken")
            if self.name is None:
                raise ValueError("a new group needs a name")
            new = groups.make_state(self.group_id, 1, self.name, self.add | {me}, {me})
            old_members: tuple[NodeId, ...] = ()
        else:
            if current is None:
                raise ValueError("no such group")
            if not current.is_member(me):
                raise ValueError("this node is no longer a member of that group")
            if not current.is_admin(me):
                raise ValueError("only a group admin can change it")
            new = current.changed(
                name=self.name, add=self.add, remove=self.remove, admins=self.new_admins
            )
            old_members = current.members
        groups.keep_own(store, me, new, ctx.now_ms)
        self.state = new
        to = dict.fromkeys(old_members + new.members)  # ordered, no repeats
        self._seal_to(ctx.node, to, MessageKind.GROUP, new.body(), ctx.now_ms)
        ctx.events.append(("group", group_json(new, me)))


class SendGroupText(GroupOp):
    """Texts to a group: one envelope per other member of the state held now."""

    def __init__(self, group_id: bytes, texts: list[str]) -> None:
        super().__init__(group_id)
        self.texts = texts
        self.shared_ids: list[bytes] = []

    def build(self, store: Store, ctx: BatchContext) -> None:
        me = ctx.node.identity.node_id
        state = groups.load(store, self.group_id)
        if state is None:
            raise ValueError("no such group")
        if not state.is_member(me):
            raise ValueError("this node is no longer a member of that group")
        for text in self.texts:
            gm = os.urandom(envelope.GROUP_MESSAGE_ID_LEN)
            body = {"g": self.group_id, "gm": gm, "t": text}
            self._seal_to(ctx.node, state.members, MessageKind.GROUP_TEXT, body, ctx.now_ms)
            self.shared_ids.append(gm)


class ChangeGroupMessage(GroupOp):
    """A reaction to a group message, or an edit or unsend of one of ours:
    to every other member, applied to our own copy in the same batch."""

    def __init__(
        self, shared_id: bytes, kind: MessageKind, extra: dict[wire.Key, wire.Value]
    ) -> None:
        super().__init__(b"")
        self.shared_id, self.kind, self.extra = shared_id, kind, extra

    def build(self, store: Store, ctx: BatchContext) -> None:
        me = ctx.node.identity.node_id
        found = store.group_of_shared_id(self.shared_id)
        target = None if found is None else store.group_message_ref(self.shared_id, found)
        if found is None or target is None or target[2]:
            raise ValueError("no such group message (or it was unsent)")
        self.group_id, mine = found, target[0]
        state = groups.load(store, self.group_id)
        if state is None or not state.is_member(me):
            raise ValueError("this node is no longer a member of that group")
        event: dict[str, Any] = {"id": self.shared_id.hex(), "group": self.group_id.hex()}
        event["by"] = str(me)
        if self.kind == MessageKind.REACTION:
            emoji = self.extra["e"]
            assert isinstance(emoji, str)
            store.set_reaction(self.shared_id, me, emoji, ctx.now_ms)
            ctx.events.append(("reaction", {**event, "emoji": emoji}))
        else:
            if not mine:
                raise ValueError("only your own messages can be edited or unsent")
            text = self.extra.get("t")
            assert text is None or isinstance(text, str)
            store.change_group_text(self.shared_id, author=None, text=text, ts_ms=ctx.now_ms)
            ctx.events.append(("edited", {**event, "text": text}) if text else ("deleted", event))
        body = {"ref": self.shared_id, "g": self.group_id, **self.extra}
        self._seal_to(ctx.node, state.members, self.kind, body, ctx.now_ms)


def group_json(state: groups.GroupState, me: NodeId) -> dict[str, Any]:
    """A group as the API and the event stream show it."""
    return {
        "id": state.group_id.hex(),
        "name": state.name,
        "version": state.version,
        "members": [str(m) for m in state.members],
        "admins": [str(a) for a in state.admins],
        "member": state.is_member(me),
    }


class MarkRead(Op):
    """The user saw these messages (given ids, or all from `peer`): mark them
    read, and queue read receipts to senders that may have them."""

    def __init__(self, ids: list[bytes], peer: NodeId | None) -> None:
        super().__init__()
        self.ids, self.peer = ids, peer
        self.changed: list[bytes] = []

    def apply(self, store: Store, ctx: BatchContext) -> None:
        node = ctx.node
        for sender, ids in store.mark_read_by_sender(self.ids, peer=self.peer).items():
            self.changed += ids
            if node.settings.read_receipts and ctx.accepts(store, sender):
                ctx.reads.setdefault(sender, []).extend(ids)


class IncomingPush(Op):
    """An envelope a peer pushed; the ack status is decided inside the batch."""

    needs_prepare = True

    def __init__(self, peer: NodeId, seq: int, data: bytes) -> None:
        super().__init__()
        self.peer, self.seq, self.data = peer, seq, data
        self.status = AckStatus.REFUSED
        self.reason = ""
        self.message: envelope.Message | None = None
        self.for_relay: envelope.Outer | None = None
        """Set when the envelope is for someone else and we may hold it."""
        self.holding = False
        """Mail for us that we hold and may say so (not from a blocked sender)."""

    def prepare(self, node: Node, now_ms: int) -> None:
        try:
            outer = envelope.parse_outer(self.data)
            if outer.recipient != node.identity.node_id:
                if not node.config.relay:
                    self.reason = "this node does not hold mail for others (relay is off)"
                elif outer.recipient == self.peer:
                    self.reason = "mail for the uploader itself"
                else:
                    self.for_relay = outer
                return
            message = envelope.open_envelope(node.identity, self.data, now_ms=now_ms, outer=outer)
        except EnvelopeError as exc:
            self.reason = str(exc)
            return
        if message.kind == MessageKind.TYPING:
            self.reason = "typing is ephemeral: it is never stored or relayed"
        else:
            self.message = message

    def _hold(self, outer: envelope.Outer, store: Store, ctx: BatchContext) -> None:
        """Relay role: keep the envelope for its recipient, within the quota."""
        verdict = store.accept_relay(
            outer.message_id,
            outer.recipient,
            outer.expires_ms,
            self.data,
            self.peer,
            ctx.now_ms,
            ctx.node.relay_quota,
        )
        if verdict.result is RelayResult.STORED:
            self.status = AckStatus.STORED
            ctx.relayed += 1
            ctx.events.append(("held", {"id": outer.message_id.hex(), "for": str(outer.recipient)}))
            ctx.outgoing.append(Outgoing(outer.message_id, outer.recipient, self.data, RELAYED))
        elif verdict.result is RelayResult.DUPLICATE:
            self.status = AckStatus.DUPLICATE
        elif verdict.result is RelayResult.DELIVERED:
            # Taken as a duplicate: the uploader may drop its copy once it
            # sees the recipient's notice, which goes back with the ACK.
            self.status = AckStatus.DUPLICATE
            if verdict.notice is not None:
                ctx.notices_back.append((self.peer, verdict.notice))
        else:
            self.reason = verdict.reason

    def apply(self, store: Store, ctx: BatchContext) -> None:
        self.apply_run([self], store, ctx)

    @classmethod
    def apply_run(cls, ops: Sequence[Op], store: Store, ctx: BatchContext) -> None:
        # Our mail is stored all at once (as one after the other would be),
        # then each op settles in order: nothing below reads what it wrote.
        pushes = [op for op in ops if isinstance(op, IncomingPush)]
        mine = [
            (op, op.message) for op in pushes if op.for_relay is None and op.message is not None
        ]
        # Group messages go second, so a group change in the same batch
        # (often the one that added us) is taken before they are checked.
        in_group = [
            (op, m) for op, m in mine if m.kind == MessageKind.GROUP_TEXT or _is_group_change(m)
        ]
        later = {id(op) for op, _ in in_group}
        direct = [(op, m) for op, m in mine if id(op) not in later]
        strangers = ctx.node.settings.accept is not AcceptPolicy.CONTACTS
        results = store.accept_incoming_many(
            [(msg, op.data) for op, msg in direct], ctx.now_ms, strangers=strangers
        )
        # One query for the whole batch, not one per message: changes that
        # came first are rare. Only texts and files look for them (receipts,
        # the bulk of a sender's batches, do not); group rows stored below
        # refer to shared ids.
        ctx.early_targets = store.changed_before(
            [m.message_id for _, m in direct if m.kind in (MessageKind.TEXT, MessageKind.FILE)]
        )
        outcome = {id(op): result for (op, _), result in zip(direct, results, strict=True)}
        for op in pushes:
            if op.for_relay is not None:
                op._hold(op.for_relay, store, ctx)
            elif id(op) in outcome:
                op._settle(outcome[id(op)], store, ctx)
            # else refused in prepare(); the reason is set
        members = [(op, m) for op, m in in_group if op._from_member(store, ctx)]
        # Membership stands in for being a contact: a group is people we joined.
        results = store.accept_incoming_many(
            [(msg, op.data) for op, msg in members], ctx.now_ms, strangers=True
        )
        for (op, _), result in zip(members, results, strict=True):
            op._settle(result, store, ctx)
        ctx.early_targets = None  # it covered this run's direct messages only

    def _from_member(self, store: Store, ctx: BatchContext) -> bool:
        """A group message is taken only from a member of a group we are in.
        Refused otherwise, so the sender tries again later: the change that
        makes it a member may still be on its way to us."""
        msg = self.message
        assert msg is not None
        assert isinstance(msg.body, dict)
        group_id = msg.body["g"]
        assert isinstance(group_id, bytes)
        state = groups.load(store, group_id)
        me = ctx.node.identity.node_id
        if state is None or not state.is_member(me):
            self.reason = "not a group this node is in (yet)"
        elif not state.is_member(msg.sender):
            self.reason = "the sender is not a member of this group"
        else:
            return True
        return False

    def _settle(self, result: AcceptResult, store: Store, ctx: BatchContext) -> None:
        node, msg = ctx.node, self.message
        assert msg is not None
        if result is AcceptResult.STORED:
            self.status = AckStatus.STORED
            self.holding = True
            if msg.kind == MessageKind.RECEIPT:
                ids = _receipt_ids(msg.body)
                changed = store.mark_delivered(ids, ctx.now_ms, recipient=msg.sender)
                ctx.delivered += len(changed)
                for mid in changed:
                    ctx.events.append(("delivered", {"id": mid.hex(), "by": str(msg.sender)}))
            elif msg.kind == MessageKind.READ:
                ids = _receipt_ids(msg.body)
                for mid in store.mark_outbox_read(ids, ctx.now_ms, recipient=msg.sender):
                    ctx.events.append(("read", {"id": mid.hex(), "by": str(msg.sender)}))
            elif msg.kind == MessageKind.FILE:
                # The receipt waits until the file is complete and checked:
                # "delivered" means the recipient has the file.
                offer = files.parse_offer(msg.body)
                store.add_file_in(
                    offer.offer_id, msg.message_id, msg.sender, wire.encode(msg.body), ctx.now_ms
                )
                ctx.offered_by.add(msg.sender)
                request = not ctx.accepts(store, msg.sender)
                ctx.events.append(("message", {**node.inbox_event(msg), "request": request}))
                ctx.received += 1
                _early_changes(store, ctx, msg)
            elif msg.kind == MessageKind.FILE_PART:
                ctx.receipts.setdefault(msg.sender, []).append(msg.message_id)
                ctx.offered_by.add(msg.sender)  # the file may be complete now
            elif msg.kind in CHANGE_KINDS or msg.kind == MessageKind.TIMER:
                ctx.receipts.setdefault(msg.sender, []).append(msg.message_id)
                take_change(
                    store, ctx, msg.message_id, msg.sender, msg.kind, msg.body, msg.timestamp_ms
                )
            elif msg.kind == MessageKind.GROUP:
                ctx.receipts.setdefault(msg.sender, []).append(msg.message_id)
                me = node.identity.node_id
                offered = groups.parse_state(msg.body)
                for state in groups.take(store, me, msg.sender, offered, ctx.now_ms):
                    ctx.events.append(("group", group_json(state, me)))
            else:
                ctx.receipts.setdefault(msg.sender, []).append(msg.message_id)
                request = not ctx.accepts(store, msg.sender)
                ctx.events.append(("message", {**node.inbox_event(msg), "request": request}))
                ctx.received += 1
                if msg.kind in (MessageKind.TEXT, MessageKind.GROUP_TEXT):
                    vanishes = vanish_after(msg.kind, msg.body) is not None
                    ctx.vanishing = ctx.vanishing or vanishes
                    _early_changes(store, ctx, msg)
        elif result is AcceptResult.DUPLICATE:
            self.status = AckStatus.DUPLICATE
            ctx.duplicates += 1
            # Only for a message we kept: one dropped (blocked sender, or a
            # stranger under accept = contacts) gets no receipt, copy or not.
            if store.in_inbox(msg.message_id):
                self.holding = True
                if (
                    msg.kind not in RECEIPT_KINDS
                    and _complete(store, msg)
                    # At most once per resend interval (the sender waits that
                    # long to resend), so replays cannot ask for one each.
                    and store.receipt_again(msg.message_id, ctx.now_ms, RESEND_AFTER_MS)
                ):
                    # Our first receipt may have been lost: send another.
                    ctx.receipts.setdefault(msg.sender, []).append(msg.message_id)
        elif result is AcceptResult.BLOCKED:
            # Taken and dropped: the sender is not told it is blocked, and
            # gets no receipt, so it stops pushing but never sees "delivered".
            self.status = AckStatus.STORED
        elif result is AcceptResult.EXPIRED:
            self.reason = "message has expired"
        else:
            self.reason = "timestamp is more than 24 h in the future"


def take_change(
    store: Store,
    ctx: BatchContext,
    change_id: bytes,
    sender: NodeId,
    kind: int,
    body: Any,
    ts_ms: int,
) -> None:
    """A peer's reaction, edit, unsend or timer (`change_id`), inside the
    batch. A reaction counts on a message of the conversation with its
    sender; edits and unsends only on the sender's own texts to us. One
    whose message has not arrived yet stays in the inbox and applies when
    it does (it can only be one from the same sender); an applied or
    refused one keeps nothing of what it said."""
    if isinstance(body, dict) and "g" in body:
        _take_group_change(store, ctx, change_id, sender, kind, body, ts_ms)
        return
    if kind == MessageKind.TIMER:
        # Latest wins, by the sender's clock but never ahead of ours: a
        # clock running fast must not pin the setting.
        if store.set_timer(sender, body["after"], min(ts_ms, ctx.now_ms)):
            ctx.timers[sender] = body["after"]
            ctx.events.append(("timer", {"peer": str(sender), "after": body["after"] / 1000}))
        return
    ref: bytes = body["ref"]
    target = store.conversation_message(ref)
    if target is None:
        return  # kept until its message comes (or it expires)
    store.settle_change(change_id)
    if target.peer != sender or target.deleted:
        return  # another conversation's message, or one unsent
    if kind == MessageKind.REACTION:
        if store.set_reaction(ref, sender, body["e"], min(ts_ms, ctx.now_ms)):
            ctx.events.append(
                ("reaction", {"id": ref.hex(), "by": str(sender), "emoji": body["e"]})
            )
        return
    if target.mine or target.kind != MessageKind.TEXT:
        return  # only the sender's own texts are theirs to change
    text = body["t"] if kind == MessageKind.EDIT else None
    if store.change_text(ref, mine=False, author=sender, text=text, ts_ms=ts_ms):
        name = "edited" if text is not None else "deleted"
        event = {"id": ref.hex(), "by": str(sender)} | ({"text": text} if text else {})
        ctx.events.append((name, event))


def _early_changes(store: Store, ctx: BatchContext, msg: envelope.Message) -> None:
    """Changes that overtook this message (through relays) apply now: for a
    group message, any member's (by its shared id), else its sender's."""
    _, shared_id = group_fields(msg.kind, msg.body)
    known = ctx.early_targets
    if shared_id is None and known is not None and msg.message_id not in known:
        return  # nothing overtook it (one query for the batch said so)
    early = (
        store.early_changes(shared_id, None)
        if shared_id is not None
        else store.early_changes(msg.message_id, msg.sender)
    )
    for change_id, sender, kind, body, ts in early:
        take_change(store, ctx, change_id, sender, kind, body, ts)


def _is_group_change(msg: envelope.Message) -> bool:
    return msg.kind in CHANGE_KINDS and isinstance(msg.body, dict) and "g" in msg.body


def _take_group_change(
    store: Store,
    ctx: BatchContext,
    change_id: bytes,
    sender: NodeId,
    kind: int,
    body: Any,
    ts_ms: int,
) -> None:
    """A member's reaction, edit or unsend of a group message (membership
    was checked): any member reacts, only the author edits or unsends."""
    ref: bytes = body["ref"]
    group_id: bytes = body["g"]
    # An edit or unsend names the sender's own message: looked up as theirs,
    # so another member reusing the shared id cannot stand in for it.
    author = None if kind == MessageKind.REACTION else sender
    target = store.group_message_ref(ref, group_id, author)
    if target is None:
        return  # kept until its message comes (or it expires)
    store.settle_change(change_id)
    mine, _, deleted = target
    if deleted:
        return
    event: dict[str, Any] = {"id": ref.hex(), "group": group_id.hex(), "by": str(sender)}
    if kind == MessageKind.REACTION:
        if store.set_reaction(ref, sender, body["e"], min(ts_ms, ctx.now_ms)):
            ctx.events.append(("reaction", {**event, "emoji": body["e"]}))
        return
    if mine:
        return  # only the author changes a message
    text = body["t"] if kind == MessageKind.EDIT else None
    if store.change_group_text(ref, author=sender, text=text, ts_ms=ts_ms):
        ctx.events.append(("edited", {**event, "text": text}) if text else ("deleted", event))


def _complete(store: Store, msg: envelope.Message) -> bool:
    """Is a message we hold complete (a file: fetched and checked)?"""
    if msg.kind != MessageKind.FILE:
        return True
    return all(f.state == "done" for f in store.files_in(message_ids=[msg.message_id]))


class Receipts(Op):
    """Delivery receipts for messages completed after they were stored (files)."""

    def __init__(self, sender: NodeId, ids: list[bytes]) -> None:
        super().__init__()
        self.sender, self.ids = sender, ids

    def apply(self, store: Store, ctx: BatchContext) -> None:
        ctx.receipts.setdefault(self.sender, []).extend(self.ids)


class SendFile(Enqueue):
    """A file offer, committed with what lets its recipient fetch the file."""

    def __init__(
        self, to: NodeId, offer: files.Offer, data: bytes | None, file_hash: bytes | None
    ) -> None:
        super().__init__([])
        self.to, self.offer, self.data, self.file_hash = to, offer, data, file_hash

    def apply(self, store: Store, ctx: BatchContext) -> None:
        expires = ctx.now_ms + ctx.node.config.ttl_ms
        messages: list[tuple[MessageKind, wire.Value]] = [(MessageKind.FILE, self.offer.body())]
        if self.offer.parts:
            assert self.data is not None
            parts = files.part_bodies(self.offer, self.data)
            messages += [(MessageKind.FILE_PART, body) for body in parts]
        try:
            for kind, body in messages:
                self.seal(ctx.node, self.to, kind, body, now_ms=ctx.now_ms, expires_ms=expires)
        except ValueError as exc:  # an offer the format cannot carry: this op only
            self.refuse(str(exc))
            return
        outer = self.rows[0][1]
        if self.file_hash is not None:
            store.add_file_out(
                self.offer.offer_id,
                outer.message_id,
                self.to,
                self.file_hash,
                self.offer.size,
                self.offer.key,
                expires,
            )
        super().apply(store, ctx)
        self.accept_recipient(store, ctx, self.to)


class AckOutcome(Op):
    """A peer acknowledged (or refused) a run of our pushes."""

    def __init__(
        self, peer: NodeId, rows: list[Outgoing], status: AckStatus, reason: str = ""
    ) -> None:
        super().__init__()
        self.peer, self.rows, self.status, self.reason = peer, rows, status, reason

    def apply(self, store: Store, ctx: BatchContext) -> None:
        held = [r for r in self.rows if r.relayed]
        ours = [r for r in self.rows if not r.relayed]
        if self.status is AckStatus.REFUSED:
            for row in ours:
                store.note_attempt(row.message_id, ctx.now_ms)
                ctx.events.append(
                    (
                        "refused",
                        {"id": row.message_id.hex(), "by": str(self.peer), "reason": self.reason},
                    )
                )
            return
        # The recipient itself has what we held for it: our copies are done.
        arrived = [r.message_id for r in held if r.recipient == self.peer]
        if arrived:
            for mid in store.note_delivered(arrived, self.peer, ctx.now_ms):
                ctx.released += 1
                ctx.events.append(("released", {"id": mid.hex(), "to": str(self.peer)}))
        direct = [r for r in ours if r.recipient == self.peer]
        for row in ours:
            if row.recipient != self.peer:
                store.mark_sent(row.message_id, ctx.now_ms, relay=self.peer)
                ctx.events.append(("relayed", {"id": row.message_id.hex(), "to": str(self.peer)}))
        # A receipt needs no receipt: its recipient holding it is the end.
        ends = [r.message_id for r in direct if r.kind in RECEIPT_KINDS]
        if ends:
            store.mark_delivered(ends, ctx.now_ms, recipient=self.peer)
        sent = [r.message_id for r in direct if r.message_id not in ends]
        for mid in store.mark_sent_many(sent, ctx.now_ms):
            ctx.events.append(("sent", {"id": mid.hex(), "to": str(self.peer)}))


# What a peer can make a link's task raise: each ends that link, nothing more.
PEER_FAULTS = (ConnectionClosed, TransportError, SessionError, ReconcileError)


def peer_fault(exc: BaseException, *, closed: bool = False) -> Exception | None:
    """The peer's fault that `exc` is: itself, or the first of an exception
    group made of peer faults only; None for anything else (a bug, a
    cancellation), which must propagate. With `closed` (the session has
    ended), using the closed session counts as the link ending too.

    A group may also hold cancellations, when the link was being closed
    while the fault happened: the fault still counts. Dropping those
    Cancelled is safe, as trio raises them again at the next checkpoint
    inside the cancelled scope."""
    faults = (*PEER_FAULTS, SessionUsageError) if closed else PEER_FAULTS
    leaves: list[BaseException] = []
    pending = [exc]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(reversed(item.exceptions))
        elif not isinstance(item, trio.Cancelled):
            leaves.append(item)
    if leaves and all(isinstance(e, faults) for e in leaves):
        first = leaves[0]
        assert isinstance(first, Exception)
        return first
    return None


def _receipt_ids(body: Any) -> list[bytes]:
    ids = body["ids"] if isinstance(body, dict) else []
    return [i for i in ids if isinstance(i, bytes)]


# --- one connected peer -------------------------------------------------------


class PeerLink:
    """A connection plus its session, and the tasks that drive them."""

    def __init__(self, node: Node, conn: Connection) -> None:
        self.node = node
        self.conn = conn
        self.peer = conn.peer
        self.asked_for_records = node.wants_records()
        self.peer_wants_records = False
        """The peer asked for records at open (it knows few nodes)."""
        features = (EPHEMERAL_FEATURE, FILES_FEATURE) + (
            (PEX_WANT_FEATURE,) if self.asked_for_records else ()
        )
        self.session = Session(Hello(node.config.window, node.config.relay, features, AGENT))
        self.in_flight: dict[int, Outgoing] = {}
        self._in_flight_ids: set[bytes] = set()
        # Messages to push, fed by the committer as they are committed and
        # from the store when the link opens; bounded, the store has the rest.
        self.queue: deque[Outgoing] = deque()
        self._queued: set[bytes] = set()
        self._reload = True
        self._retry_at = math.inf  # when to reload after a refusal
        self._retry_last = 0.0  # ... after the latest one
        # Acked pushes whose outcome is not committed yet: the store still
        # shows them pending, so the pusher must not send them again.
        self.settling: dict[bytes, Op] = {}
        self._wake = trio.Event()
        self._acks_send, self._acks_recv = trio.open_memory_channel[IncomingPush](
            node.config.window + 1
        )
        self.last_received = trio.current_time()
        self._pex_budget = TokenBucket(1 / PEX_MIN_GAP, 2.0, trio.current_time())
        self._notice_budget = TokenBucket(NOTICE_RATE, NOTICE_BURST, trio.current_time())
        self._ephemeral_budget = TokenBucket(EPHEMERAL_RATE, EPHEMERAL_BURST, trio.current_time())
        # Delivery notices to send this peer; a full queue drops (notices are
        # an optimisation: copies also expire).
        self._notices_send, self._notices_recv = trio.open_memory_channel[bytes](64)
        self._notice_ids: list[bytes] = []  # to tell the peer we hold, soon
        self._to_give: deque[bytes] = deque()  # ids the peer lacks, to push
        # Reconciliation messages from the peer; one is answered before the
        # next is sent, so a few buffered mean a peer ignoring the protocol.
        # One pair for the peer's runs (requests), one for ours (answers).
        self._recon_requests = trio.open_memory_channel[wire.Value](4)
        self._recon_answers = trio.open_memory_channel[wire.Value](4)
        self._notice_due = trio.Event()
        self._pex_news = trio.Event()
        # Peer records this peer has (it sent them, or we did): node id -> seq.
        # PEERS frames carry only records it lacks, so a churning mesh does not
        # resend every record to everyone on every change or reconnection.
        self.peer_has = node.records_held_by(self.peer)
        # When we last talked to this peer before this connection (None: never).
        # The first PEERS frame carries only records received since then: the
        # peer got older ones last time (or from others), and its store kept them.
        self.seen_before: int | None = None
        self.opened = trio.Event()
        self.cancel_scope = trio.CancelScope()
        self.close_reason = ""
        # File chunks the peer asked for (bounded: see transfer.MAX_FILE_REQUESTS),
        # and pieces of chunks we asked for, read by our fetcher only while
        # it has asked for some.
        self._file_get_send, self.file_requests = trio.open_memory_channel[FileGetReceived](
            MAX_FILE_REQUESTS
        )
        self._file_piece_send, self.file_pieces = trio.open_memory_channel[
            FileDataReceived | FileMissingReceived
        ](FILE_PIECES_BUFFERED)
        self.fetch_wake = trio.Event()
        self.fetching = False

    def poke(self) -> None:
        self._wake.set()

    def _busy(self, message_id: bytes) -> bool:
        """Queued, in flight, or acked with its outcome not yet committed."""
        return (
            message_id in self._queued
            or message_id in self.settling
            or message_id in self._in_flight_ids
        )

    def withdraw(self, ids: set[bytes]) -> None:
        """Drop these from the push queue (those already pushed stay pushed)."""
        self.queue = deque(out for out in self.queue if out.message_id not in ids)
        self._queued -= ids

    def offer(self, out: Outgoing) -> None:
        """A message for this peer was just committed: queue it for pushing."""
        if len(self.queue) >= MAX_LINK_QUEUE:
            self._reload = True  # the store has it; load it when the queue drains
        elif not self._busy(out.message_id):
            self.queue.append(out)
            self._queued.add(out.message_id)
        self.poke()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self.conn.aclose()

    async def _run(self) -> None:
        with self.cancel_scope:
            # HELLO goes first: the session refuses the peer's before ours is out.
            if not await self._guarded(self._send_hello):
                return
            async with trio.open_nursery() as nursery:
                for task in (
                    self._reader,
                    self._acker,
                    self._keepalive,
                    self._pusher,
                    self._pex,
                    self._notifier,
                    self._reconcile,
                    self._files,
                ):
                    nursery.start_soon(self._until_done, task)

    async def _files(self) -> None:
        """Serve the peer's file fetches and fetch what it offered us."""
        await self.opened.wait()
        hello = self.session.peer_hello
        if hello is None or FILES_FEATURE not in hello.features:
            await trio.sleep_forever()
        transfers = self.node.transfers
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transfers.serve, self)
            nursery.start_soon(transfers.fetch, self)

    async def _send_hello(self) -> None:
        await self.conn.send(self.session.hello_frame())

    async def _until_done(self, task: Callable[[], Awaitable[None]]) -> None:
        """The first of the link's tasks to end, for whatever reason, ends the link."""
        await self._guarded(task)
        self.cancel_scope.cancel()

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> bool:
        """Run `task`; a peer's fault becomes the close reason instead of an exception.

        Also when it comes wrapped in an exception group (a task with a
        nursery of its own): unhandled, it would end the whole node.
        """
        try:
            await task()
        except BaseException as exc:
            # Once the session is closed (the peer said BYE, or we did), a task
            # that was about to send finds it closed: that is the link ending.
            fault = peer_fault(exc, closed=self.session.state is State.CLOSED)
            if fault is None:
                raise
            if isinstance(fault, (ConnectionClosed, TransportError)):
                self.close_reason = self.close_reason or str(fault)
            else:
                self.close_reason = self.close_reason or f"protocol error: {fault}"
                await self.say_bye(str(fault))
            return False
        return True

    async def say_bye(self, reason: str) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(ConnectionClosed, TransportError):
                await self.conn.send(self.session.bye_frame(reason))

    async def close(self, reason: str) -> None:
        self.close_reason = reason
        await self.say_bye(reason)
        self.cancel_scope.cancel()

    async def _reader(self) -> None:
        while True:
            frame = await self.conn.receive()
            if self.session.state is State.CLOSED:
                return  # we said goodbye (e.g. a duplicate connection): stop reading
            self.last_received = trio.current_time()
            event = self.session.receive(frame)
            if isinstance(event, PushReceived):
                op = IncomingPush(self.peer, event.seq, event.envelope)
                await self.node.committer.submit(op)
                await send_soon(self._acks_send, op)
            elif isinstance(event, AckReceived):
                rows = [self.in_flight.pop(seq) for seq in event.seqs]
                self._in_flight_ids.difference_update(r.message_id for r in rows)
                if event.status is AckStatus.REFUSED:
                    # A second past the store's retry delay: the refusal is
                    # committed (its attempt time written) after this.
                    retry = trio.current_time() + RESEND_AFTER_MS / 1000 + 1.0
                    self._retry_at = min(self._retry_at, retry)
                    self._retry_last = retry
                    log.info(
                        "peer %s refused %d message(s) from %s: %s",
                        self.peer.short(),
                        len(rows),
                        rows[0].message_id.hex()[:12],
                        event.reason,
                    )
                outcome = AckOutcome(self.peer, rows, event.status, event.reason)
                for row in rows:
                    self.settling[row.message_id] = outcome
                await self.node.committer.submit(outcome)
                self.poke()
            elif isinstance(event, PingReceived) and self.session.state is State.OPEN:
                await self.conn.send(self.session.pong_frame(event.nonce))
            elif isinstance(event, HelloReceived):
                self.opened.set()
            elif isinstance(event, ReconReceived):
                send, _ = self._recon_requests if event.request else self._recon_answers
                try:
                    send.send_nowait(event.message)
                except trio.WouldBlock:
                    raise SessionError("reconciliation messages sent without waiting") from None
            elif isinstance(event, NoticeReceived):
                if self._notice_budget.take(trio.current_time()):
                    await self.node.take_notice(self.peer, event.notice)
                else:
                    log.info(
                        "peer %s sends delivery notices too fast; one ignored", self.peer.short()
                    )
            elif isinstance(event, EphemeralReceived):
                if self._ephemeral_budget.take(trio.current_time()):
                    await self.node.take_ephemeral(self.peer, event.envelope)
                else:
                    self.node.ephemeral_ignored += 1
            elif isinstance(event, PeersReceived):
                if self._pex_budget.take(trio.current_time()):
                    await self.node.take_records(self, event.records)
                else:
                    log.info("peer %s sends PEERS too often; ignored", self.peer.short())
            elif isinstance(event, ByeReceived):
                self.close_reason = f"peer said goodbye: {event.reason}"
                return
            elif isinstance(event, FileGetReceived):
                try:
                    self._file_get_send.send_nowait(event)
                except trio.WouldBlock:
                    raise SessionError("file chunks asked for without waiting") from None
            elif isinstance(event, FileDataReceived | FileMissingReceived):
                if not self.fetching:
                    raise SessionError("file data that was not asked for")
                await self._file_piece_send.send(event)
            elif isinstance(event, PongReceived):
                pass

    async def _acker(self) -> None:
        # Acks go out in push order, each only after its batch committed;
        # all that are ready leave in one write.
        pending: deque[IncomingPush] = deque()
        while True:
            if not pending:
                pending.append(await self._acks_recv.receive())
            while True:
                try:
                    pending.append(self._acks_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            await pending[0].done.wait()
            # Consecutive pushes with the same outcome share one ACK.
            runs: list[tuple[int, AckStatus, str, int]] = []
            arrived: list[bytes] = []  # mail for us that we now hold
            while pending and pending[0].done.is_set():
                op = pending.popleft()
                status, reason = op.status, op.reason
                if op.error is not None:
                    status, reason = AckStatus.REFUSED, op.error
                elif op.holding and op.message is not None:
                    arrived.append(op.message.message_id)
                if runs:
                    first, last_status, last_reason, count = runs[-1]
                    if (status, reason) == (last_status, last_reason) and op.seq == first + count:
                        runs[-1] = (first, status, reason, count + 1)
                        continue
                runs.append((op.seq, status, reason, 1))
            if self.session.state is not State.OPEN:
                return
            await self.conn.send_many(
                [self.session.ack_frame(seq, st, why, n) for seq, st, why, n in runs]
            )
            if arrived and self.peer_relays:
                self._notify(arrived)

    def _notify(self, message_ids: list[bytes]) -> None:
        """Note mail for us from a relaying peer, to tell it in a signed notice soon.

        It drops its copies and passes the notice on to relays that hold
        others. Notices wait up to NOTICE_DELAY to cover many messages: one
        signature and one write at the peer for a batch, not one each.
        """
        if len(self._notice_ids) < MAX_NOTICE_IDS * 64:
            self._notice_ids.extend(message_ids)
            self._notice_due.set()

    def send_notice(self, data: bytes) -> None:
        try:
            self._notices_send.send_nowait(data)
        except trio.WouldBlock:
            log.debug("notice queue to %s full; one dropped", self.peer.short())

    async def _notifier(self) -> None:
        await self.opened.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sign_notices)
            async for data in self._notices_recv:
                if self.session.state is not State.OPEN:
                    return
                await self.conn.send(self.session.notice_frame(data))

    async def _sign_notices(self) -> None:
        while True:
            await self._notice_due.wait()
            await trio.sleep(NOTICE_DELAY)
            self._notice_due = trio.Event()
            ids, self._notice_ids = self._notice_ids, []
            now = self.node.now_ms()
            for start in range(0, len(ids), MAX_NOTICE_IDS):
                chunk = ids[start : start + MAX_NOTICE_IDS]
                self.send_notice(DeliveryNotice.create(self.node.identity, chunk, now).data)

    async def _reconcile(self) -> None:
        """Relay to relay: find which held envelopes each lacks, and push ours over."""
        await self.opened.wait()
        if not (self.node.config.relay and self.peer_relays):
            await trio.sleep_forever()  # ending would end the link
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reconcile_as_responder)
            await self._reconcile_as_initiator()  # returns only to end the link
            nursery.cancel_scope.cancel()

    async def _reconcile_as_initiator(self) -> None:
        """Our runs: at open if we dialled (one side is enough), then on change."""
        node = self.node
        _, answers = self._recon_answers
        generation = None if self.conn.initiator else node.relay_generation
        while True:
            if generation is not None:
                await trio.sleep(RECONCILE_MIN_GAP)
                with trio.move_on_after(RECONCILE_INTERVAL - RECONCILE_MIN_GAP):
                    while node.relay_generation == generation:
                        await node.relay_changed.wait()
            generation = node.relay_generation
            ids = await node.store_call(node.store.relay_ids, node.now_ms())
            recon = Reconciler(ids, initiator=True)
            with trio.move_on_after(RECONCILE_TIMEOUT) as scope:
                await self.conn.send(self.session.recon_frame(recon.initiate(), request=True))
                while not recon.done:
                    reply = recon.receive(await answers.receive())
                    if reply is not None:
                        await self.conn.send(self.session.recon_frame(reply, request=True))
                    await self._reconciled(recon)
            if scope.cancelled_caught:
                self.close_reason = f"reconciliation took over {RECONCILE_TIMEOUT:g} s"
                return
            node.reconciliations += 1
            node.recon_bytes += recon.bytes_sent + recon.bytes_received
            node.recon_rounds += recon.rounds

    async def _reconcile_as_responder(self) -> None:
        """The peer's runs: answer each message."""
        node = self.node
        _, requests = self._recon_requests
        recon: Reconciler | None = None
        async for message in requests:
            if recon is None or is_start(message):
                ids = await node.store_call(node.store.relay_ids, node.now_ms())
                recon = Reconciler(ids, initiator=False)
            reply = recon.receive(message)
            if reply is not None:
                await self.conn.send(self.session.recon_frame(reply, request=False))
            await self._reconciled(recon)

    async def _reconciled(self, recon: Reconciler) -> None:
        """Push what the peer lacks; tell it which of its extras are already delivered."""
        node = self.node
        give, need = recon.pop_give(), recon.pop_need()
        if give:
            # Loaded in chunks by the pusher: the peer may lack our whole store.
            self._to_give.extend(sorted(give))
            self.poke()
        if need:
            for data in await node.store_call(node.store.notices_for, sorted(need)):
                self.send_notice(data)
        if give or need:
            log.info(
                "reconciled with %s: giving %d, they hold %d we lack",
                self.peer.short(),
                len(give),
                len(need),
            )

    @property
    def peer_relays(self) -> bool:
        """The peer said in its HELLO that it holds mail for others."""
        return self.session.peer_hello is not None and self.session.peer_hello.relay

    async def _pusher(self) -> None:
        await self.opened.wait()
        while True:
            self._wake = trio.Event()
            if len(self.settling) > 2 * self.node.config.window:
                self._prune_settled()  # keeps it near one window, whatever the traffic
            if self.session.send_window_free > 0 and not self.queue:
                if self._reload:
                    await self._load()
                elif self._to_give:
                    await self._load_gives()
            frames = []
            while self.queue and self.session.can_push(self.queue[0].envelope):
                out = self.queue.popleft()
                self._queued.discard(out.message_id)
                seq, frame = self.session.push_frame(out.envelope)
                self.in_flight[seq] = out
                self._in_flight_ids.add(out.message_id)
                frames.append(frame)
                if len(frames) >= PUSHES_PER_WRITE:
                    await self.conn.send_many(frames)
                    frames = []
            if frames:
                await self.conn.send_many(frames)
            with trio.move_on_at(self._retry_at):
                await self._wake.wait()
            if trio.current_time() >= self._retry_at:
                # Refused pushes are tried again (the store's retry delay
                # picks which): "not a member yet" may have changed. Those
                # refused later get their own turn.
                later = self._retry_last > self._retry_at
                self._retry_at = self._retry_last if later else math.inf
                self._reload = True

    def _prune_settled(self) -> None:
        for mid in [m for m, op in self.settling.items() if op.done.is_set()]:
            del self.settling[mid]

    async def _load(self) -> None:
        """Refill the queue from the store: at link start, and when it overflowed."""
        node = self.node
        self._prune_settled()
        limit = MAX_LINK_QUEUE + len(self.in_flight) + len(self.settling) + len(self.queue)
        now = node.now_ms()
        self._reload = False  # offer() may set it again while this awaits
        rows = await node.store_call(node.store.pending_for, self.peer, now, limit, RESEND_AFTER_MS)
        outgoing = [Outgoing.from_row(r) for r in rows]
        held = await node.store_call(node.store.relay_for, self.peer, now, limit)
        outgoing += [Outgoing.held(r) for r in held]
        if self.peer_relays:
            # Hand the peer copies of our mail for recipients who are away.
            copies = node.config.limits.relay_copies
            handoff = await node.store_call(
                node.store.outbox_for_relay, self.peer, now, copies, limit
            )
            away = node.connected()
            outgoing += [Outgoing.from_row(r) for r in handoff if r.recipient not in away]
        self._reload = self._reload or max(len(rows), len(held)) == limit
        # Checked after the await: offer() may have queued some meanwhile,
        # committed after these, so these go first (a group's change before
        # the message that needs it).
        fresh = [out for out in outgoing if not self._busy(out.message_id)]
        self.queue.extendleft(reversed(fresh))
        self._queued.update(out.message_id for out in fresh)

    async def _load_gives(self) -> None:
        """Queue the next chunk of envelopes reconciliation found the peer lacks."""
        chunk = [self._to_give.popleft() for _ in range(min(MAX_LINK_QUEUE, len(self._to_give)))]
        rows = await self.node.store_call(self.node.store.relay_rows, chunk)
        for row in rows:  # those dropped meanwhile are left out
            if not self._busy(row.message_id):
                self.queue.append(Outgoing.held(row))
                self._queued.add(row.message_id)

    def pex_news(self) -> None:
        """We learned records this peer may not have: pass them on soon."""
        self._pex_news.set()

    async def _pex(self) -> None:
        """Peer exchange: our record and those the peer lacks, at open, on news,
        and every PEX_INTERVAL.

        Records are sent once per peer (`peer_has`). At open, a peer that did
        not ask for records (PEX_WANT_FEATURE) gets ours and those we received
        since its last visit; news sends only what arrived since the last
        send; the periodic round sends whatever it still lacks.
        """
        await self.opened.wait()
        hello = self.session.peer_hello
        wants_all = hello is not None and PEX_WANT_FEATURE in hello.features
        self.peer_wants_records = wants_all
        since = None if wants_all else (self.seen_before or self.node.now_ms())
        # A node that does not relay passes on others' records only to a peer
        # that asked, for as long as the link lasts: records it learns after
        # the first round (its own links still opening) are news to that peer.
        passes_on = self.node.config.relay or wants_all
        while True:
            self._pex_news = trio.Event()
            built_at = self.node.now_ms()
            if passes_on:
                records = await self.node.records_for(self.peer, since)
            else:
                records = [self.node.own_record()]
            if self.session.state is not State.OPEN:
                return
            fresh = [r for r in records if self.peer_has.get(r[0], -1) < r[1]]
            if fresh:
                await self.conn.send(self.session.peers_frame([data for _, _, data in fresh]))
                self.peer_has.update((node_id, seq) for node_id, seq, _ in fresh)
            # Never more often than the peer accepts PEERS frames.
            await trio.sleep(PEX_MIN_GAP)
            with trio.move_on_after(PEX_INTERVAL - PEX_MIN_GAP) as periodic:
                await self._pex_news.wait()
            since = None if periodic.cancelled_caught else built_at

    @property
    def via_loopback(self) -> bool:
        """The connection runs over loopback (both nodes on one host)."""
        try:
            host, _ = parse_address(self.conn.remote)
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    async def _keepalive(self) -> None:
        limits = self.node.config.limits
        nonce = 0
        while True:
            await trio.sleep(limits.keepalive_interval)
            silent = trio.current_time() - self.last_received
            if silent >= limits.idle_timeout:
                self.close_reason = f"no frame for {silent:.0f} s: peer presumed dead"
                return
            # Refused and unreceipted messages become due again over time.
            self._reload = True
            self.poke()
            if self.session.state is State.OPEN and silent >= limits.keepalive_interval:
                nonce += 1
                await self.conn.send(self.session.ping_frame(nonce))


# --- the node -----------------------------------------------------------------


class Node:
    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        store: Store,
        *,
        clock_ms: Callable[[], int] = wall_ms,
        rng: random.Random | None = None,
        wrap_stream: Callable[[trio.abc.Stream], trio.abc.Stream] | None = None,
    ) -> None:
        self.config = config
        # Every peer connection's byte stream goes through this before the
        # handshake: tests put links that drop, delay or reorder frames here.
        self._wrap_stream = wrap_stream or (lambda stream: stream)
        self.identity = identity
        self.store = store
        offset = config.clock_offset_ms
        self.now_ms: Callable[[], int] = (lambda: clock_ms() + offset) if offset else clock_ms
        self._rng = rng or random.Random()
        self.static = NoiseStatic.generate(identity)
        self.committer = Committer(self, store)
        self.events = EventHub()
        self.links: dict[NodeId, PeerLink] = {}
        # Since start: messages stored in the inbox, our messages newly
        # receipted, and copies of messages we already held (wasted work).
        self.messages_received = 0
        self.messages_delivered = 0
        self.duplicates_received = 0
        self.bound: list[tuple[str, int]] = []
        self.record: PeerRecord | None = None
        limits = config.limits
        self.relay_quota = RelayQuota(
            max_ttl_ms=int(limits.relay_ttl_days * 86_400_000),
            max_total_bytes=limits.relay_max_bytes,
            max_peer_bytes=limits.relay_peer_bytes,
        )
        self.relay_received = 0
        self.notices_taken = 0
        # Bumped when the set of envelopes we hold for others changes.
        self.relay_generation = 0
        self.reconciliations = 0
        self.recon_bytes = 0
        self.recon_rounds = 0
        self.relay_changed = trio.Event()
        self.peer_table = PeerTable(
            rate=limits.discovery_dial_rate, burst=limits.discovery_dial_burst
        )
        self._dial_wake = trio.Event()
        self.mdns: MdnsDiscovery | None = None
        self.mdns_hints = 0
        self._admission = AdmissionControl(config.limits)
        self._store_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.transfers = Transfers(self)
        self.vanish_wake = trio.Event()
        # Conversation timers read so far, kept current by the committer: a
        # send does not wait for the store (and its current batch) to read one.
        self.timers: dict[NodeId, int] = {}
        self.started_at = time.time()
        self.settings = ChatSettings.load(store)
        self._records_held: dict[NodeId, dict[NodeId, int]] = {}  # by recency of use
        self.records_known = 0  # peer records in the store (set at start)
        self._records_checked: dict[bytes, tuple[NodeId, int]] = {}  # digest -> (id, seq)
        self._records_answered = False  # a peer answered our asking with others' records
        self.records_remembered = 0  # records recognised there, not verified again
        # Wire bytes of connections that have ended (live ones: see traffic()).
        self._ended_sent = self._ended_received = 0
        self._ended_frames: Counter[str] = Counter()
        self.typing_received = 0
        self.ephemeral_ignored = 0

    # store access: one thread at a time, off the event loop
    async def store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._store_lock:
            return await trio.to_thread.run_sync(fn, *args)

    def offer(self, out: Outgoing) -> None:
        """A message was committed: push it to its recipient, or hand it to relays."""
        link = self.links.get(out.recipient)
        if link is not None and link.opened.is_set():
            link.offer(out)
            return
        if out.relayed:
            return  # held for its recipient until it connects (or a relay asks)
        relays = [
            other
            for other in self.links.values()
            if other.opened.is_set() and other.peer_relays and other.peer != out.recipient
        ]
        for other in relays[: self.config.limits.relay_copies]:
            other.offer(out)

    def send_notice(self, peer: NodeId, data: bytes) -> None:
        link = self.links.get(peer)
        if link is not None:
            link.send_notice(data)

    async def take_notice(self, peer: NodeId, data: bytes) -> None:
        """A delivery notice from a peer: drop the copies it covers, keep it to pass on."""
        try:
            notice = await trio.to_thread.run_sync(parse_notice, data)
        except NoticeError as exc:
            log.info("refused a delivery notice from %s: %s", peer.short(), exc)
            return
        now = self.now_ms()

        def apply(store: Store) -> tuple[list[bytes], list[bytes]]:
            with store.transaction():
                recorded = store.note_delivered(
                    notice.message_ids, notice.recipient, now, notice.data
                )
                # Our own mail among them: the recipient's signature says it
                # arrived, as a receipt would. Not a file offer: for a file,
                # "delivered" waits for its receipt (the file is complete).
                offers = store.file_offer_ids(recorded)
                arrived = [mid for mid in recorded if mid not in offers]
                ours = store.mark_delivered(arrived, now, recipient=notice.recipient)
            return recorded, ours

        recorded, ours = await self.store_call(apply, self.store)
        if recorded:
            self.notices_taken += 1
            log.debug("notice from %s: %d copies done", peer.short(), len(recorded))
        for mid in recorded:
            self.events.publish("released", {"id": mid.hex(), "to": str(notice.recipient)})
        self.messages_delivered += len(ours)
        for mid in ours:
            self.events.publish("delivered", {"id": mid.hex(), "by": str(notice.recipient)})
        if recorded:
            self.note_relay_change()

    def note_relay_change(self) -> None:
        """The set of envelopes we hold for others changed: reconcile again soon."""
        self.relay_generation += 1
        self.relay_changed.set()
        self.relay_changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.committer.run)
            for host, port in self.config.listen:
                try:
                    listeners = await trio.open_tcp_listeners(port, host=host)
                except OSError as exc:
                    where = format_address(host, port)
                    raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
                for listener in listeners:
                    sockname = listener.socket.getsockname()
                    self.bound.append((sockname[0], sockname[1]))
                    nursery.start_soon(self._serve, listener)
            self.record = await self._sign_record()
            self.records_known = await self.store_call(self.store.peer_record_count)
            for host, port in self.config.bootstrap:
                nursery.start_soon(self._bootstrap, host, port)
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self.transfers.run)
            nursery.start_soon(self._vanish)
            nursery.start_soon(self._dial_loop)
            if self.config.mdns:
                # In the background: announcing takes a second or two of
                # probing, and the node is of use before that.
                nursery.start_soon(self._run_mdns)
            log.info(
                "node %s listening on %s",
                self.identity.node_id,
                ", ".join(format_address(h, p) for h, p in self.bound),
            )
            task_status.started()

    async def shutdown(self) -> None:
        """Say goodbye to every peer, then stop all tasks."""
        with trio.move_on_after(2) as scope:
            scope.shield = True
            async with trio.open_nursery() as nursery:
                for link in list(self.links.values()):
                    nursery.start_soon(link.close, "node shutting down")
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # --- connections ------------------------------------------------------

    async def _serve(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                stream = await accept_retrying(listener, "peer listener")
                assert self._nursery is not None
                self._nursery.start_soon(self._inbound, stream)

    async def _inbound(self, stream: trio.SocketStream) -> None:
        try:
            peername = stream.socket.getpeername()
        except OSError:
            await stream.aclose()
            return
        source = str(peername[0])
        remote = format_address(source, peername[1])
        refusal = self._admission.admit(source, trio.current_time(), len(self.links))
        if refusal is not None:
            log.warning("refused connection from %s: %s", remote, refusal)
            await stream.aclose()
            return
        with trio.CancelScope() as making_room:
            key = self._admission.started(trio.current_time(), making_room)
            try:
                conn = await run_handshake(
                    self._wrap_stream(stream),
                    self.identity,
                    self.static,
                    initiator=False,
                    remote=remote,
                    limits=self.config.limits,
                )
            except (HandshakeError, ConnectionClosed) as exc:
                log.info("handshake from %s failed: %s", remote, exc)
                await stream.aclose()
                return
            except BaseException:
                await stream.aclose()
                raise
            finally:
                self._admission.finished(key)
        if making_room.cancelled_caught:
            log.info("handshake from %s ended to make room for a newer one", remote)
            return
        await self._run_link(conn)

    async def dial(self, host: str, port: int, expected: NodeId | None = None) -> Connection:
        remote = format_address(host, port)
        with trio.fail_after(DIAL_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
        try:
            return await run_handshake(
                self._wrap_stream(stream),
                self.identity,
                self.static,
                initiator=True,
                remote=remote,
                limits=self.config.limits,
                expected_peer=expected,
            )
        except BaseException:
            await stream.aclose()
            raise

    async def _bootstrap(self, host: str, port: int) -> None:
        """Keep one connection to a bootstrap address, redialling with backoff."""
        remote = format_address(host, port)
        attempt = 0
        while True:
            try:
                conn = await self.dial(host, port)
            except (OSError, trio.TooSlowError, HandshakeError, ConnectionClosed) as exc:
                delay = backoff_delay(
                    attempt, base=BACKOFF_BASE, cap=BACKOFF_CAP, jitter=self._rng.random()
                )
                attempt += 1
                log.info("dial %s failed (%s); retry in %.1f s", remote, exc, delay)
                await trio.sleep(delay)
                continue
            attempt = 0
            note = functools.partial(
                self.store.note_peer_address, conn.peer, host, port, "bootstrap", self.now_ms()
            )
            await self._run_link(conn, note)
            # The link ended: wait a little before redialling, so that a peer
            # that drops us at once is not hammered.
            await trio.sleep(BACKOFF_BASE * (1 + self._rng.random()))

    def traffic(self) -> tuple[int, int]:
        """Bytes sent and received on peer connections since start (frames with
        their length prefixes, handshakes included; TCP/IP headers not)."""
        live = [link.conn for link in self.links.values()]
        return (
            self._ended_sent + sum(c.bytes_sent for c in live),
            self._ended_received + sum(c.bytes_received for c in live),
        )

    def frame_bytes(self) -> dict[str, int]:
        """Bytes of the frames sent since start, by frame type (before encryption)."""
        total = Counter(self._ended_frames)
        for link in self.links.values():
            total.update(link.session.frame_bytes)
        return dict(total.most_common())

    def _count_ended(self, conn: Connection) -> None:
        self._ended_sent += conn.bytes_sent
        self._ended_received += conn.bytes_received

    async def _run_link(self, conn: Connection, note: Callable[[], object] | None = None) -> None:
        """Run a new connection to its end, after writing `note` to the store.

        The connection is closed however this ends, also when cancelled
        before its link started (the peer would otherwise wait out its
        idle timeout for a socket nobody reads).
        """
        try:
            if note is not None:
                await self.store_call(note)
            await self._run_connection(conn)
        finally:
            await conn.aclose()
            self._count_ended(conn)

    async def _run_connection(self, conn: Connection) -> None:
        peer = conn.peer
        if peer == self.identity.node_id:
            log.info("connection %r is to ourselves; closing", conn)
            await conn.aclose()
            return
        try:
            link = PeerLink(self, conn)
        except BaseException:
            await conn.aclose()
            raise
        existing = self.links.get(peer)
        if existing is not None:
            if self._keep_new(existing.conn, conn):
                self.links[peer] = link
                await existing.close("duplicate connection")
            else:
                await link.say_bye("duplicate connection")
                await conn.aclose()
                return
        self.links[peer] = link
        log.info("connected %s %s", "to" if conn.initiator else "from", peer)
        try:
            link.seen_before = await self.store_call(self.store.peer_seen, peer, self.now_ms())
            self.events.publish("peer", {"id": str(peer), "connected": True})
            await link.run()
        finally:
            self._ended_frames.update(link.session.frame_bytes)
            current = self.links.get(peer) is link
            if current:
                del self.links[peer]
            await self._note_seen_until_now(peer)
            if current:
                self.events.publish("peer", {"id": str(peer), "connected": False})
            log.info("disconnected %s: %s", peer, link.close_reason or "closed")

    async def _note_seen_until_now(self, peer: NodeId) -> None:
        """A link ended: the peer was seen until now. Peer exchange at the next
        visit then passes on only records that arrived after this link."""
        with trio.move_on_after(LINK_END_WRITE_TIMEOUT) as scope:
            scope.shield = True  # also when the node is stopping
            try:
                await self.store_call(self.store.peer_seen, peer, self.now_ms())
            except StoreError as exc:  # closed or failing: this was only a hint
                log.debug("could not note when %s was last seen: %s", peer.short(), exc)

    def _keep_new(self, old: Connection, new: Connection) -> bool:
        """Both ends pick the same survivor: the one dialled by the lower node id."""
        me = self.identity.node_id

        def dialler(c: Connection) -> NodeId:
            return me if c.initiator else c.peer

        if dialler(old) == dialler(new):
            return False  # same dialler twice: keep the one already running
        return dialler(new) < dialler(old)

    # --- discovery and dialling -------------------------------------------

    def advertised(self) -> list[tuple[str, int]]:
        """Where others can reach us: bound addresses, or interface ones for a wildcard."""
        out: list[tuple[str, int]] = []
        for host, port in self.bound:
            ip = ipaddress.ip_address(host)
            if ip.is_unspecified:
                out += [(a, port) for a in interface_addresses(ip.version)]
            else:
                out.append((str(ip), port))
        unique = list(dict.fromkeys(out))
        # Loopback last: it only helps nodes on this host.
        unique.sort(key=lambda a: ipaddress.ip_address(a[0]).is_loopback)
        return unique[:MAX_ADVERTISED]

    async def _sign_record(self) -> PeerRecord:
        """Our peer record: the last one if it names the same addresses, else a
        new one with a sequence number above any we signed before."""
        now = self.now_ms()
        addresses = self.advertised()
        held = await self.store_call(self.store.get_meta, OWN_RECORD_KEY)
        if held is not None:
            try:
                last_record = parse_record(held, now_ms=now)
            except PeerRecordError:
                last_record = None
            if (
                last_record is not None
                and last_record.node_id == self.identity.node_id
                and list(last_record.addresses) == addresses
            ):
                return last_record
        held_seq = await self.store_call(self.store.get_meta, RECORD_SEQ_KEY)
        last = int.from_bytes(held_seq, "big") if held_seq else 0
        seq = max(now, last + 1)
        await self.store_call(self.store.set_meta, RECORD_SEQ_KEY, seq.to_bytes(8, "big"))
        record = PeerRecord.create(self.identity, addresses, seq, now)
        await self.store_call(self.store.set_meta, OWN_RECORD_KEY, record.data)
        return record

    def wants_records(self) -> bool:
        """Too few peers known, and no peer answered our asking since start
        with others' records: ask each new link for a full PEERS frame. (In
        a mesh of fewer than 32 nodes, asking on every connection would
        fetch the same set over and over.)"""
        return self.records_known < PEX_RECORDS and not self._records_answered

    def records_held_by(self, peer: NodeId) -> dict[NodeId, int]:
        """What we know `peer` holds of peer records (node id -> seq), kept
        across its connections: its store keeps them when it restarts."""
        held = self._records_held.pop(peer, None)
        if held is None:
            held = {}
            if len(self._records_held) >= PEX_MEMORY_PEERS:
                del self._records_held[next(iter(self._records_held))]  # least recent
        self._records_held[peer] = held
        return held

    async def records_for(
        self, peer: NodeId, received_after: int | None = None
    ) -> list[tuple[NodeId, int, bytes]]:
        """What a PEERS frame to `peer` may carry, as (node id, seq, record):
        our record, then others it may not know (received after the time given)."""
        others: list[tuple[NodeId, int, bytes]] = await self.store_call(
            self.store.peer_record_rows,
            PEX_RECORDS - 1,
            [peer, self.identity.node_id],
            received_after,
        )
        return [self.own_record(), *others]

    def own_record(self) -> tuple[NodeId, int, bytes]:
        assert self.record is not None
        return (self.identity.node_id, self.record.seq, self.record.data)

    async def take_records(self, link: PeerLink, records: tuple[bytes, ...]) -> None:
        """Check and keep records a peer passed on; each must be signed by its subject."""
        kept, valid = await self.store_call(self._keep_records, records, link.via_loopback)
        for node_id, seq in valid:  # the peer has these: no need to send them back
            link.peer_has[node_id] = max(seq, link.peer_has.get(node_id, -1))
        if link.asked_for_records and any(node_id != link.peer for node_id, _ in valid):
            self._records_answered = True
        if kept:
            log.info("peer exchange with %s: %d new record(s)", link.peer.short(), len(kept))
            for peer in kept:
                self.peer_table.new_address(peer)
            # Relays gossip news; a node that does not relay passes it only to
            # peers that asked for records (phones and laptops need not spend
            # their links on others' addresses, but a new peer may know no one).
            others = [other for other in self.links.values() if other is not link]
            if self.config.relay:
                chosen = self._rng.sample(others, min(PEX_NEWS_FANOUT, len(others)))
            else:
                chosen = [other for other in others if other.peer_wants_records]
            for other in chosen:
                other.pex_news()
            self.poke_dialer()

    def _keep_records(
        self, records: tuple[bytes, ...], via_loopback: bool
    ) -> tuple[list[NodeId], list[tuple[NodeId, int]]]:
        """The node ids of records newer than ours, and (id, seq) of every valid one."""
        # Runs in a worker thread: each record costs a signature check.
        now = self.now_ms()
        kept, valid = [], []
        checked = self._records_checked
        for data in records:
            digest = hashlib.blake2b(data, digest_size=16).digest()
            known = checked.pop(digest, None)
            if known is not None:
                # These exact bytes were verified and offered to the store
                # before: it holds them or something newer.
                checked[digest] = known
                valid.append(known)
                self.records_remembered += 1
                continue
            try:
                record = parse_record(data, now_ms=now)
            except PeerRecordError as exc:
                log.info("refused a peer record: %s", exc)
                continue
            valid.append((record.node_id, record.seq))
            if record.node_id != self.identity.node_id:
                addresses = usable_from(record, via_loopback=via_loopback)
                if self.store.accept_peer_record(
                    record.node_id, record.seq, record.data, addresses, now
                ):
                    kept.append(record.node_id)
            if len(checked) >= PEX_CHECKED_RECORDS:
                del checked[next(iter(checked))]  # least recently seen
            checked[digest] = (record.node_id, record.seq)
        if kept:
            self.records_known = self.store.peer_record_count()
        return kept, valid

    async def _run_mdns(self) -> None:
        from p2pdm.discovery.mdns import MdnsDiscovery, MdnsError

        interfaces = self.config.mdns_interfaces or "all"
        discovery = MdnsDiscovery(
            self.identity.node_id, self.bound[0][1], PROTOCOL_VERSIONS, interfaces=interfaces
        )
        send, receive = trio.open_memory_channel["DialHint"](64)
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(discovery.run, send)
            except MdnsError as exc:
                log.warning("mDNS is off: %s", exc)
                return
            self.mdns = discovery
            nursery.start_soon(self._take_hints, receive)

    async def _take_hints(self, hints: trio.MemoryReceiveChannel[DialHint]) -> None:
        async for hint in hints:
            if hint.node_id == self.identity.node_id:
                continue
            self.mdns_hints += 1
            now = self.now_ms()
            for text in hint.addresses:
                host, port = parse_address(text)
                await self.store_call(
                    self.store.note_peer_address, hint.node_id, host, port, AddressSource.MDNS, now
                )
            self.peer_table.discovered(hint.node_id, trio.current_time())
            self.peer_table.new_address(hint.node_id)
            self.poke_dialer()

    def poke_dialer(self) -> None:
        self._dial_wake.set()

    async def _dial_loop(self) -> None:
        assert self._nursery is not None
        while True:
            self._dial_wake = trio.Event()
            now_ms = self.now_ms()
            mail = await self.store_call(self.store.pending_recipients, now_ms)
            mail += await self.store_call(self.store.relay_recipients, now_ms)
            contacts = await self.store_call(self.store.contacts)
            now = trio.current_time()
            for peer in self.peer_table.plan(
                now,
                connected=set(self.links),
                mail=[p for p in mail if p != self.identity.node_id],
                contacts=[c.node_id for c in contacts if not c.blocked],
            ):
                self._nursery.start_soon(self._dial_peer, peer)
            wake = self.peer_table.next_wake(now)
            timeout = DIAL_CHECK_INTERVAL if wake is None else min(DIAL_CHECK_INTERVAL, wake - now)
            with trio.move_on_after(max(timeout, 0.01)):
                await self._dial_wake.wait()

    async def _dial_peer(self, peer: NodeId) -> None:
        """Try a wanted peer's best addresses; run the link if one answers as that peer."""
        rows = await self.store_call(self.store.addresses_for, peer)
        conn: Connection | None = None
        for row in rows[:ADDRESSES_PER_DIAL]:
            try:
                conn = await self.dial(row.host, row.port, expected=peer)
            except UnexpectedPeer as exc:
                # A stale or forged hint: that address is not this peer's.
                log.info("dropping address %s for %s: %s", row.host, peer.short(), exc)
                await self.store_call(self.store.forget_peer_address, peer, row.host, row.port)
                continue
            except (OSError, trio.TooSlowError, HandshakeError, ConnectionClosed) as exc:
                log.debug("dial %s at %s:%d failed: %s", peer.short(), row.host, row.port, exc)
                await self.store_call(
                    self.store.note_dial_result, peer, row.host, row.port, False, self.now_ms()
                )
                continue
            break
        self.peer_table.dial_done(
            peer, conn is not None, trio.current_time(), jitter=self._rng.random()
        )
        if conn is None:
            self.poke_dialer()  # its backoff time is now set
            return
        note = functools.partial(
            self.store.note_dial_result, peer, row.host, row.port, True, self.now_ms()
        )
        try:
            await self._run_link(conn, note)
        finally:
            self.poke_dialer()  # it may be wanted again

    # --- background work --------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            now = self.now_ms()
            expired = await self.store_call(self.store.expire_outbox, now)
            purged = await self.store_call(self.store.purge_expired, now)
            purged += await self.store_call(self.store.purge_relay, now)
            purged += await self.store_call(self.store.purge_unmatched, now)
            purged += await self.transfers.forget_finished()
            if expired or purged:
                log.info(
                    "housekeeping: %d outbox messages expired, %d ids forgotten", expired, purged
                )
            await trio.sleep(HOUSEKEEPING_INTERVAL)

    async def _vanish(self) -> None:
        """Delete disappearing texts when their time comes, both ways."""
        while True:
            self.vanish_wake = trio.Event()
            now = self.now_ms()
            for mid in await self.store_call(self.store.vanish_due, now):
                self.events.publish("vanished", {"id": mid.hex()})
            due = await self.store_call(self.store.next_vanish_ms)
            wait = HOUSEKEEPING_INTERVAL if due is None else max(due - now, 1) / 1000
            with trio.move_on_after(min(wait, HOUSEKEEPING_INTERVAL)):
                await self.vanish_wake.wait()

    def seal_receipts(self, store: Store, ctx: BatchContext) -> None:
        """Inside a batch: one delivery receipt per sender for what it committed,
        and one read receipt per sender for what the user saw."""
        for kind, by_sender in ((MessageKind.RECEIPT, ctx.receipts), (MessageKind.READ, ctx.reads)):
            for sender, ids in by_sender.items():
                for start in range(0, len(ids), MAX_RECEIPT_IDS):
                    chunk = ids[start : start + MAX_RECEIPT_IDS]
                    ids_value: list[wire.Value] = list(chunk)
                    receipt = Enqueue([])
                    receipt.seal(
                        self,
                        sender,
                        kind,
                        {"ids": ids_value},
                        now_ms=ctx.now_ms,
                        expires_ms=ctx.now_ms + self.config.ttl_ms,
                    )
                    receipt.apply(store, ctx)

    # --- chat: who is accepted, read receipts, typing --------------------------

    def accepts(self, store: Store, peer: NodeId) -> bool:
        """May `peer` get our read receipts and typing, and show its typing?

        Not if blocked; otherwise if everyone is accepted, or it is a contact
        (the user accepted its request, or wrote to it first).
        """
        if self.settings.accept is AcceptPolicy.EVERYONE:
            return not store.is_blocked(peer)
        return store.is_accepted(peer)

    async def change_settings(self, changes: object) -> ChatSettings:
        """Apply and persist setting changes (ValueError: nothing changed)."""
        new = self.settings.updated(changes)
        await self.store_call(new.save, self.store)
        turned_off = self.settings.read_receipts and not new.read_receipts
        self.settings = new
        if turned_off:
            await self._withdraw_read_receipts(None)
        self.files_offered(set(self.links))  # whom we accept may have changed
        return new

    async def set_blocked(self, peer: NodeId, blocked: bool) -> None:
        """Block or unblock `peer`; blocking also drops read receipts to it
        that have not gone out yet."""
        await self.store_call(self.store.set_blocked, peer, blocked, self.now_ms())
        if blocked:
            await self._withdraw_read_receipts(peer)
        else:
            self.files_offered({peer})

    async def _withdraw_read_receipts(self, peer: NodeId | None) -> None:
        ids = set(await self.store_call(self.store.withdraw_read_receipts, peer))
        if ids:
            log.info("dropped %d read receipt(s) not yet sent", len(ids))
            for link in self.links.values():
                link.withdraw(ids)

    async def accept_peer(self, peer: NodeId) -> bool:
        """The user accepts `peer`'s message request (makes it a contact)."""
        added: bool = await self.store_call(self.store.accept_peer, peer, self.now_ms())
        self.files_offered({peer})  # its files waited for this
        return added

    async def mark_read(self, ids: list[bytes], peer: NodeId | None = None) -> list[bytes]:
        """Mark messages read; read receipts go out as the settings allow.
        Returns the ids that were unread."""
        op = MarkRead(ids, peer)
        await self.committer.submit(op)
        await op.done.wait()
        if op.error is not None:
            raise StoreError(op.error)
        return op.changed

    async def send_typing(self, peer: NodeId, active: bool) -> str | None:
        """Tell a connected, accepted peer that we are typing (or stopped).

        Never stored, never relayed: returns why nothing was sent, or None.
        """
        if not await self.store_call(self.accepts, self.store, peer):
            return "not an accepted contact (blocked, or a request not accepted)"
        link = self.links.get(peer)
        if link is None or not link.opened.is_set() or link.session.state is not State.OPEN:
            return "not connected"
        hello = link.session.peer_hello
        if hello is None or EPHEMERAL_FEATURE not in hello.features:
            return "the peer's version does not show typing"
        now = self.now_ms()
        sealed = envelope.seal(
            self.identity,
            peer,
            MessageKind.TYPING,
            {"active": active},
            timestamp_ms=now,
            expires_ms=now + TYPING_TTL_MS,
        )
        try:
            await link.conn.send(link.session.ephemeral_frame(sealed))
        except (ConnectionClosed, TransportError) as exc:
            return f"connection lost: {exc}"
        return None

    async def take_ephemeral(self, peer: NodeId, data: bytes) -> None:
        """An EPHEMERAL frame from `peer`: a fresh typing signal from an
        accepted peer becomes a "typing" event; anything else is dropped."""
        now = self.now_ms()
        try:
            msg = envelope.open_envelope(self.identity, data, now_ms=now)
        except EnvelopeError as exc:
            log.info("ephemeral envelope from %s dropped: %s", peer.short(), exc)
            self.ephemeral_ignored += 1
            return
        fresh = abs(now - msg.timestamp_ms) <= TYPING_STALE_MS
        if (
            msg.kind != MessageKind.TYPING
            or msg.sender != peer  # never relayed: it comes from its sender
            or not fresh
            or not isinstance(msg.body, dict)
            or not await self.store_call(self.accepts, self.store, peer)
        ):
            self.ephemeral_ignored += 1
            return
        self.typing_received += 1
        self.events.publish(
            "typing",
            {"from": str(peer), "active": msg.body["active"], "ts": msg.timestamp_ms / 1000},
        )

    # --- what the API calls ---------------------------------------------------

    async def send_texts(
        self, to: NodeId, texts: Iterable[str], ttl_ms: int | None = None
    ) -> list[bytes]:
        """Seal and commit messages; returns their ids once committed."""
        ttl = self.config.ttl_ms if ttl_ms is None else ttl_ms
        if not 0 < ttl <= MAX_TTL_MS:
            raise ValueError(f"ttl must be between 1 ms and {MAX_TTL_MS // 86_400_000} days")
        now = self.now_ms()
        vanish = self.timers.get(to)
        if vanish is None:
            # setdefault: a timer committed while this read waited is newer.
            vanish = self.timers.setdefault(to, await self.store_call(self.store.timer, to))
        # A disappearing text's envelope expires with it: no relay keeps it longer.
        expires = now + (min(ttl, vanish) if vanish else ttl)
        op = await self._commit(SendTexts(to, list(texts), now, expires, vanish))
        return [outer.message_id for _, outer, _, _ in op.rows]

    def inbox_event(self, msg: envelope.Message) -> dict[str, Any]:
        event = {
            "id": msg.message_id.hex(),
            "from": str(msg.sender),
            "to": str(msg.recipient),
            "ts": msg.timestamp_ms / 1000,
            "kind": msg.kind,
            "text": text_of_body(msg.body),
        }
        vanish = vanish_after(msg.kind, msg.body)
        if vanish is not None:
            event["vanish"] = (self.now_ms() + vanish) / 1000
        group_id, shared = group_fields(msg.kind, msg.body)
        if group_id is not None and shared is not None:
            event["group"], event["gm"] = group_id.hex(), shared.hex()
        if msg.kind == MessageKind.FILE:
            offer = files.parse_offer(msg.body)
            event["file"] = {**offer.summary(), "state": "fetching", "received": 0}
        return event

    async def send_file(self, to: NodeId, path: Path) -> tuple[bytes, files.Offer]:
        """Offer a file to `to`: small ones travel in the message (relays hold
        them), larger ones are fetched by the recipient from us directly.
        Returns the message id once committed; FileError or OSError say why not."""
        offer, data, file_hash = await trio.to_thread.run_sync(self.transfers.stage, path)
        op = SendFile(to, offer, data, file_hash)
        try:
            await self._commit(op)
        finally:
            if file_hash is not None and op.done.is_set() and (op.error or op.invalid):
                # Not stored: nothing will ever serve the copy. (One still
                # waiting may yet be stored; a later start sweeps it if not.)
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.transfers.discard_copy, offer)
        return op.rows[0][1].message_id, offer

    def files_offered(self, senders: set[NodeId]) -> None:
        """Offers from these peers were committed, or they were accepted:
        fetch their files (inline and parts ones need no link)."""
        self.transfers.inline_wake.set()
        for sender in senders:
            link = self.links.get(sender)
            if link is not None:
                link.fetch_wake.set()

    async def file_complete(self, sender: NodeId, message_id: bytes) -> None:
        """A file offered to us is complete and checked: send its delivery receipt."""
        op = Receipts(sender, [message_id])
        await self.committer.submit(op)
        await op.done.wait()

    async def _commit(self, op: _E) -> _E:
        """Submit a send and wait until it is stored: StoreError if the store
        failed, ValueError if the op refused (nothing stored either way)."""
        await self.committer.submit(op)
        await op.done.wait()
        if op.error is not None:
            raise StoreError(op.error)
        if op.invalid is not None:
            raise ValueError(op.invalid)
        return op

    async def _message(self, message_id: bytes) -> MessageRef:
        found: MessageRef | None = await self.store_call(
            self.store.conversation_message, message_id
        )
        if found is None or found.deleted:
            raise ValueError("no such message (or it was unsent)")
        return found

    async def react(self, message_id: bytes, emoji: str) -> None:
        """React to a text or file of a conversation, or to a group message
        by its shared id ("" takes it back)."""
        if len(emoji) > envelope.MAX_REACTION_LEN or (emoji and not emoji.strip()):
            raise ValueError(
                f"a reaction is an emoji of at most {envelope.MAX_REACTION_LEN} characters"
            )
        if len(message_id) == envelope.GROUP_MESSAGE_ID_LEN:
            await self._commit(ChangeGroupMessage(message_id, MessageKind.REACTION, {"e": emoji}))
            return
        target = await self._message(message_id)
        peer = target.peer
        me = self.identity.node_id

        def effect(store: Store, ctx: BatchContext) -> None:
            store.set_reaction(message_id, me, emoji, ctx.now_ms)
            ctx.events.append(("reaction", {"id": message_id.hex(), "by": str(me), "emoji": emoji}))

        body: dict[wire.Key, wire.Value] = {"ref": message_id, "e": emoji}
        change = SendChange(peer, MessageKind.REACTION, body, effect, target.vanish_ms)
        await self._commit(change)

    async def change_own_text(self, message_id: bytes, text: str | None) -> None:
        """Edit (`text`) or unsend (None) one of our texts, on both sides (on
        every member's node, for a group message given by its shared id)."""
        if text is not None and not 0 < len(text) <= envelope.MAX_TEXT_LEN:
            raise ValueError(f"an edit is 1 to {envelope.MAX_TEXT_LEN} characters")
        if len(message_id) == envelope.GROUP_MESSAGE_ID_LEN:
            kind = MessageKind.DELETE if text is None else MessageKind.EDIT
            extra: dict[wire.Key, wire.Value] = {} if text is None else {"t": text}
            await self._commit(ChangeGroupMessage(message_id, kind, extra))
            return
        target = await self._message(message_id)
        peer = target.peer
        if not target.mine or target.kind != MessageKind.TEXT:
            raise ValueError("only your own texts can be edited or unsent")
        if text is not None and not 0 < len(text) <= envelope.MAX_TEXT_LEN:
            raise ValueError(f"an edit is 1 to {envelope.MAX_TEXT_LEN} characters")
        me = self.identity.node_id

        def effect(store: Store, ctx: BatchContext) -> None:
            store.change_text(message_id, mine=True, author=me, text=text, ts_ms=ctx.now_ms)
            name = "edited" if text is not None else "deleted"
            event = {"id": message_id.hex(), "by": str(me)} | ({"text": text} if text else {})
            ctx.events.append((name, event))

        body: dict[wire.Key, wire.Value] = {"ref": message_id}
        kind = MessageKind.DELETE
        if text is not None:
            kind, body["t"] = MessageKind.EDIT, text
        await self._commit(SendChange(peer, kind, body, effect, target.vanish_ms))

    async def set_timer(self, peer: NodeId, after_ms: int) -> None:
        """Set the disappearing-message timer of a conversation, for both sides."""
        if peer == self.identity.node_id:
            raise ValueError("that is this node's own id")
        if after_ms and not envelope.MIN_DISAPPEAR_MS <= after_ms <= envelope.MAX_DISAPPEAR_MS:
            raise ValueError(
                f"the timer is off (0) or {envelope.MIN_DISAPPEAR_MS // 1000} s to "
                f"{envelope.MAX_DISAPPEAR_MS // 86_400_000} days"
            )

        def effect(store: Store, ctx: BatchContext) -> None:
            if store.set_timer(peer, after_ms, ctx.now_ms):
                ctx.timers[peer] = after_ms
            ctx.events.append(("timer", {"peer": str(peer), "after": after_ms / 1000}))

        await self._commit(SendChange(peer, MessageKind.TIMER, {"after": after_ms}, effect))

    async def create_group(self, name: str, members: Iterable[NodeId]) -> groups.GroupState:
        """A new group with us as its admin; every member is told."""
        group_id = os.urandom(groups.GROUP_ID_LEN)
        op = await self._commit(ChangeGroup(group_id, name=name, add=members, create=True))
        assert op.state is not None
        return op.state

    async def change_group(
        self,
        group_id: bytes,
        *,
        name: str | None = None,
        add: Iterable[NodeId] = (),
        remove: Iterable[NodeId] = (),
        admins: Iterable[NodeId] = (),
    ) -> groups.GroupState:
        """Change a group we are an admin of (ValueError says why not)."""
        change = ChangeGroup(group_id, name=name, add=add, remove=remove, admins=admins)
        op = await self._commit(change)
        assert op.state is not None
        return op.state

    async def send_group_texts(
        self, group_id: bytes, texts: list[str]
    ) -> tuple[list[bytes], dict[NodeId, list[bytes]]]:
        """Send texts to every other member: returns the shared ids, and
        each member's envelope ids (their delivery state is per member)."""
        op = await self._commit(SendGroupText(group_id, texts))
        per_member: dict[NodeId, list[bytes]] = {}
        for _, outer, _, _ in op.rows:
            per_member.setdefault(outer.recipient, []).append(outer.message_id)
        return op.shared_ids, per_member

    def connected(self) -> set[NodeId]:
        return {peer for peer, link in self.links.items() if link.opened.is_set()}


def interface_addresses(version: int) -> list[str]:
    """This host's addresses of one IP version (IPv6 link-local left out: they need a scope)."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                continue
            if addr.version == version and not addr.is_link_local:
                out.append(str(addr))
    return out
