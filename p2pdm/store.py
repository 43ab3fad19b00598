"""Durable node state in one SQLite file: seen ids, inbox, outbox, contacts, peers.

Synchronous, for one thread at a time: the daemon calls it from worker
threads (not always the same one, so the connection is opened with
`check_same_thread=False`). Calls are serialised by a lock that a
transaction holds for its whole block, so a call from a second thread waits
for the batch to commit instead of reading or writing into the middle of it.
It has no clock of its own: every method that needs the time takes `now_ms`.

Transactions. Outside `with store.transaction():` every mutating method is
its own transaction and has committed when it returns. Inside one, nothing
is durable until the `with` block exits normally: the daemon batches many
operations (group commit, one fsync for all of them) and acknowledges them
only after the block. Each method is atomic even inside a batch (it runs in
a savepoint), so a caller that catches a StoreError and carries on does not
commit half of a method. A batch opened with `all_or_nothing` skips those
savepoints (they cost SQLite a copy of every page they touch): an error in
any method then leaves the whole transaction able only to roll back.

Time stamps are integer milliseconds since the Unix epoch. Node ids are
stored as their 32-byte public keys, message ids as their 32 bytes, bodies
as canonical CBOR (`wire.encode`).

sqlite3 is imported by this module only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from p2pdm import wire
from p2pdm.identity import NODE_ID_TEXT_LEN, IdentityError, NodeId, is_node_id_like

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    # Type only: the store sits below the envelope layer and never calls it.
    from p2pdm.envelope import Message

# --- limits and constants ---------------------------------------------------

# Same as envelope.MESSAGE_ID_LEN (BLAKE2b-256); repeated so the store does
# not import a layer above it. A test checks they agree.
MESSAGE_ID_LEN = 32
# Integer milliseconds below 2^53, as envelopes and the local API carry them.
MAX_TIME_MS = (1 << 53) - 1
# A sender's clock may be ahead of ours; more than a day ahead is a wrong
# clock or a message crafted to sort first, so it is refused.
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000
# Seen ids outlive their envelope's expiry by this much. After it, a replay
# of the envelope is refused as EXPIRED by the expiry check, so the id is no
# longer needed; the grace covers our own clock being stepped back (NTP
# correcting a fast clock) by up to this much after we purged.
SEEN_GRACE_MS = 24 * 3600 * 1000
# Addresses kept per peer: plenty for a laptop's interfaces and a few past
# networks, and a hostile peer or mDNS responder cannot grow the table.
MAX_ADDRESSES_PER_PEER = 16
# Peers kept in all: the design's mesh is tens to a few hundred nodes, and
# peer exchange or mDNS from a hostile node must not grow the table forever.
MAX_PEERS = 4096
# Longest DNS name; IP literals are shorter.
MAX_HOST_LEN = 253
# A contact name is a label for a person, not a document.
MAX_CONTACT_NAME_LEN = 64
# Shortest node-id prefix resolve_peer accepts: 20 bits, unique among a few
# hundred peers, still typeable.
MIN_PREFIX_LEN = 4
# Small node state only (settings, cursors); blobs belong elsewhere.
MAX_META_KEY_LEN = 64
MAX_META_VALUE_SIZE = 64 * 1024
# Wait this long for another connection's lock (a `p2pdm` command reading the
# database while the daemon writes) before failing with "database is locked".
BUSY_TIMEOUT_MS = 5000
# Search: words taken from a query, and the longest word kept.
MAX_SEARCH_WORDS = 16
MAX_SEARCH_WORD_LEN = 64
_WORD = re.compile(r"\w+")
# The message kind that people write; only it is searched and listed in chats.
# Same as envelope.MessageKind.TEXT (a test checks they agree).
TEXT_KIND = 1
# A read receipt's kind: envelope.MessageKind.READ (checked by the same test).
READ_KIND = 3
# A group message's kind: envelope.MessageKind.GROUP_TEXT (checked by the same test).
GROUP_TEXT_KIND = 6
# A file offer's kind: envelope.MessageKind.FILE (a test checks).
FILE_KIND = 7
# Kinds that change another message (envelope.CHANGE_KINDS; a test checks).
REACTION_KIND, EDIT_KIND, DELETE_KIND = 8, 9, 10
# A piece of a file sent in parts; its `ref` is the offer id.
FILE_PART_KIND = 12
# Changes kept aside until their parent comes: per sender, and per group.
MAX_PENDING_PER_SENDER = 4
MAX_PENDING_GROUP_STATES = 64
# Group states kept below the newest version (older parents are history).
GROUP_HISTORY = 64
# A call from a second thread waits this long for a running batch; longer
# than any batch takes even on a slow disk, so hitting it means a stuck caller.
LOCK_WAIT_S = 60.0
# Upsert needs SQLite 3.24, UPDATE ... RETURNING 3.35.
MIN_SQLITE_VERSION = (3, 35, 0)
# "p2dm" in PRAGMA application_id tells our files from other SQLite files.
APPLICATION_ID = int.from_bytes(b"p2dm", "big")

# Migrations, in order: entry i takes the schema from version i to i + 1.
# Never edit one that has shipped; append a new one. Each runs in its own
# transaction together with the version bump. (A migration that rebuilds a
# table with foreign keys must run with foreign_keys off; none does yet.)
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;

    -- Every message id ever accepted, until its expiry plus a grace.
    CREATE TABLE seen (
        message_id BLOB PRIMARY KEY CHECK (length(message_id) = 32),
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX seen_by_expiry ON seen (expires_ms);

    -- seq never repeats (AUTOINCREMENT), so "rows after seq N" follows the inbox.
    CREATE TABLE inbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id BLOB NOT NULL UNIQUE CHECK (length(message_id) = 32),
        sender BLOB NOT NULL CHECK (length(sender) = 32),
        recipient BLOB NOT NULL CHECK (length(recipient) = 32),
        ts_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        body BLOB NOT NULL,
        envelope BLOB NOT NULL,
        read INTEGER NOT NULL DEFAULT 0 CHECK (read IN (0, 1))
    );
    CREATE INDEX inbox_by_sender ON inbox (sender, seq);

    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id BLOB NOT NULL UNIQUE CHECK (length(message_id) = 32),
        recipient BLOB NOT NULL CHECK (length(recipient) = 32),
        envelope BLOB NOT NULL,
        kind INTEGER NOT NULL,
        body BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'sent', 'delivered', 'read', 'expired')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_attempt_ms INTEGER,
        delivered_ms INTEGER,
        relayed_to INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_pending ON outbox (recipient, seq)
        WHERE state IN ('queued', 'sent');
    CREATE INDEX outbox_pending_expiry ON outbox (expires_ms)
        WHERE state IN ('queued', 'sent');

    -- Relays that acknowledged a copy; outbox.relayed_to counts them.
    CREATE TABLE outbox_relays (
        message_id BLOB NOT NULL REFERENCES outbox (message_id) ON DELETE CASCADE,
        relay BLOB NOT NULL CHECK (length(relay) = 32),
        acked_ms INTEGER NOT NULL,
        PRIMARY KEY (message_id, relay)
    ) WITHOUT ROWID;

    CREATE TABLE contacts (
        node_id BLOB PRIMARY KEY CHECK (length(node_id) = 32),
        name TEXT COLLATE NOCASE UNIQUE,
        blocked INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
        added_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- last_seen_ms: last authenticated connection; NULL if only heard of.
    CREATE TABLE peers (
        node_id BLOB PRIMARY KEY CHECK (length(node_id) = 32),
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER
    ) WITHOUT ROWID;

    CREATE TABLE peer_addresses (
        node_id BLOB NOT NULL REFERENCES peers (node_id) ON DELETE CASCADE,
        host TEXT NOT NULL,
        port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
        source TEXT NOT NULL
            CHECK (source IN ('bootstrap', 'mdns', 'pex', 'inbound', 'manual')),
        last_seen_ms INTEGER NOT NULL,
        last_ok_ms INTEGER,
        failures INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (node_id, host, port)
    ) WITHOUT ROWID;
    """,
    """
    -- Each peer's latest signed record (peer exchange), kept to pass on as is.
    CREATE TABLE peer_records (
        node_id BLOB PRIMARY KEY REFERENCES peers (node_id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        record BLOB NOT NULL,
        received_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    -- Envelopes held for others (relay role): opaque, only the outer fields.
    CREATE TABLE relay (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id BLOB NOT NULL UNIQUE CHECK (length(message_id) = 32),
        recipient BLOB NOT NULL CHECK (length(recipient) = 32),
        uploader BLOB NOT NULL CHECK (length(uploader) = 32),
        size INTEGER NOT NULL CHECK (size > 0),
        expires_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        envelope BLOB NOT NULL
    );
    CREATE INDEX relay_by_recipient ON relay (recipient, seq);
    CREATE INDEX relay_by_expiry ON relay (expires_ms);
    -- Bytes and envelopes held per uploader; the all-zero key is the total.
    -- Kept by triggers, so quota checks are two lookups, not a scan.
    CREATE TABLE relay_usage (
        uploader BLOB PRIMARY KEY,
        bytes INTEGER NOT NULL,
        count INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TRIGGER relay_usage_add AFTER INSERT ON relay BEGIN
        INSERT INTO relay_usage (uploader, bytes, count) VALUES (new.uploader, new.size, 1),
            (zeroblob(32), new.size, 1)
        ON CONFLICT (uploader) DO UPDATE SET
            bytes = bytes + excluded.bytes, count = count + 1;
    END;
    CREATE TRIGGER relay_usage_remove AFTER DELETE ON relay BEGIN
        UPDATE relay_usage SET bytes = bytes - old.size, count = count - 1
            WHERE uploader IN (old.uploader, zeroblob(32));
        DELETE FROM relay_usage WHERE count = 0 AND uploader != zeroblob(32);
    END;
    -- Signed delivery notices, kept to pass on until the mail they cover expires.
    CREATE TABLE notices (
        id INTEGER PRIMARY KEY,
        data BLOB NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    -- Ids known delivered to `recipient` (by its notice, or its own ack to us).
    CREATE TABLE delivered (
        message_id BLOB PRIMARY KEY CHECK (length(message_id) = 32),
        recipient BLOB NOT NULL CHECK (length(recipient) = 32),
        notice_id INTEGER REFERENCES notices (id) ON DELETE SET NULL,
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX delivered_by_expiry ON delivered (expires_ms);
    """,
    """
    -- Full-text search over text messages both ways, written in the same
    -- transaction as the rows it indexes. p2pdm_text() is a function the
    -- store registers on its connection (CBOR body -> text).
    CREATE VIRTUAL TABLE search USING fts5 (
        text, peer UNINDEXED, mine UNINDEXED, message_id UNINDEXED,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO search (text, peer, mine, message_id)
        SELECT text, peer, mine, message_id FROM (
            SELECT p2pdm_text(body) AS text, sender AS peer, 0 AS mine, message_id,
                received_ms AS ms FROM inbox WHERE kind = 1
            UNION ALL
            SELECT p2pdm_text(body), recipient, 1, message_id, created_ms
                FROM outbox WHERE kind = 1
        ) ORDER BY ms;
    -- Writing to someone accepts them (they are not a message request): the
    -- people this node wrote to before this version become contacts.
    INSERT INTO contacts (node_id, added_ms)
        SELECT recipient, min(created_ms) FROM outbox WHERE kind = 1 GROUP BY recipient
        ON CONFLICT (node_id) DO NOTHING;
    -- Conversation views: one peer's messages by local time, both ways, and
    -- the list of conversations from the indexes alone (no message bodies).
    CREATE INDEX inbox_by_sender_time ON inbox (sender, kind, received_ms);
    CREATE INDEX outbox_by_recipient_time ON outbox (recipient, kind, created_ms);
    CREATE INDEX inbox_unread ON inbox (sender, kind) WHERE read = 0;
    """,
    """
    -- Groups this node is or was in: the latest state taken (p2pdm.groups),
    -- as its canonical CBOR body; member = 0 once we were removed.
    CREATE TABLE groups (
        group_id BLOB PRIMARY KEY CHECK (length(group_id) = 16),
        version INTEGER NOT NULL,
        state BLOB NOT NULL,
        member INTEGER NOT NULL CHECK (member IN (0, 1)),
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Every valid state known of a group (two admins may change one parent
    -- at once), to check the parents of changes that come later.
    CREATE TABLE group_states (
        group_id BLOB NOT NULL CHECK (length(group_id) = 16),
        digest BLOB NOT NULL,
        version INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (group_id, digest)
    ) WITHOUT ROWID;
    -- Changes whose parent is not known yet: tried again after each state
    -- taken. Bounded per sender and per group by the store.
    CREATE TABLE group_pending (
        id INTEGER PRIMARY KEY,
        group_id BLOB NOT NULL CHECK (length(group_id) = 16),
        sender BLOB NOT NULL CHECK (length(sender) = 32),
        state BLOB NOT NULL,
        received_ms INTEGER NOT NULL,
        UNIQUE (group_id, sender, state)
    );
    -- Group messages: the group, and on our side the id all members' copies share.
    ALTER TABLE inbox ADD COLUMN grp BLOB;
    ALTER TABLE inbox ADD COLUMN gm BLOB;
    ALTER TABLE outbox ADD COLUMN grp BLOB;
    ALTER TABLE outbox ADD COLUMN gm BLOB;
    CREATE INDEX inbox_by_group ON inbox (grp, received_ms) WHERE grp IS NOT NULL;
    CREATE INDEX inbox_by_shared_id ON inbox (gm) WHERE gm IS NOT NULL;
    CREATE INDEX outbox_by_group ON outbox (grp, gm) WHERE grp IS NOT NULL;

    -- Files we offered: what a recipient may fetch, and with which key.
    -- The bytes are in the home folder, named by file_hash.
    CREATE TABLE files_out (
        offer_id BLOB PRIMARY KEY CHECK (length(offer_id) = 16),
        message_id BLOB NOT NULL,
        recipient BLOB NOT NULL CHECK (length(recipient) = 32),
        file_hash BLOB NOT NULL CHECK (length(file_hash) = 32),
        size INTEGER NOT NULL,
        key BLOB NOT NULL,
        served INTEGER NOT NULL DEFAULT 0,
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Files offered to us: the offer as received, and how far the fetch is.
    CREATE TABLE files_in (
        offer_id BLOB PRIMARY KEY CHECK (length(offer_id) = 16),
        message_id BLOB NOT NULL UNIQUE,
        sender BLOB NOT NULL CHECK (length(sender) = 32),
        offer BLOB NOT NULL,
        next_chunk INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('fetching', 'done', 'failed')),
        path TEXT,
        reason TEXT,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX files_in_fetching ON files_in (sender) WHERE state = 'fetching';

    -- Reactions, edits, unsends and disappearing texts. A received change
    -- (reaction, edit, delete) is an inbox row whose `ref` is its target;
    -- edits and deletes that arrive before their target are applied when
    -- it comes. vanish_ms: when a disappearing text is deleted, both ways.
    ALTER TABLE inbox ADD COLUMN ref BLOB;
    ALTER TABLE inbox ADD COLUMN edited_ms INTEGER;
    ALTER TABLE inbox ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox ADD COLUMN vanish_ms INTEGER;
    ALTER TABLE outbox ADD COLUMN edited_ms INTEGER;
    ALTER TABLE outbox ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN vanish_ms INTEGER;
    CREATE INDEX inbox_by_ref ON inbox (ref) WHERE ref IS NOT NULL;
    -- A file part's index: one row per part of an offer from its sender.
    ALTER TABLE inbox ADD COLUMN part INTEGER;
    CREATE UNIQUE INDEX inbox_file_part ON inbox (ref, sender, part) WHERE kind = 12;
    CREATE INDEX inbox_vanish ON inbox (vanish_ms) WHERE vanish_ms IS NOT NULL;
    CREATE INDEX outbox_vanish ON outbox (vanish_ms) WHERE vanish_ms IS NOT NULL;
    -- Each person's latest reaction to a message (ours too).
    CREATE TABLE reactions (
        target BLOB NOT NULL CHECK (length(target) IN (16, 32)),
        reactor BLOB NOT NULL CHECK (length(reactor) = 32),
        emoji TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        PRIMARY KEY (target, reactor)
    ) WITHOUT ROWID;
    -- Each indexed message's entry in `search`: FTS5 does not index
    -- message_id, so an edit, unsend or disappearing text finds its entry
    -- here instead of scanning the index.
    CREATE TABLE search_ids (
        message_id BLOB PRIMARY KEY,
        entry INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO search_ids (message_id, entry) SELECT message_id, rowid FROM search;
    -- A conversation's disappearing-message timer (absent: off).
    CREATE TABLE timers (
        peer BLOB PRIMARY KEY CHECK (length(peer) = 32),
        after_ms INTEGER NOT NULL,
        set_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 6: when a copy of a received message last got a receipt of its own
    # (NULL: only the first one), so that replays cannot ask for one each.
    """
    ALTER TABLE inbox ADD COLUMN receipted_again_ms INTEGER;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_TOTAL = bytes(32)  # relay_usage's key for the total


class StoreError(Exception):
    """Bad use, bad input, or a database that cannot be used; the message says which."""


class RelayResult(Enum):
    """What accept_relay did with an envelope for someone else."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    """Already held: nothing changed."""
    DELIVERED = "delivered"
    """Known delivered to its recipient: not taken (pass the notice back)."""
    REFUSED = "refused"
    """Not taken; `RelayVerdict.reason` says why."""


@dataclass(frozen=True)
class RelayQuota:
    """What a relay agrees to hold (docs/DECISIONS.md, "Relay limits")."""

    max_ttl_ms: int = 7 * 24 * 3600 * 1000
    max_total_bytes: int = 256 << 20
    max_peer_bytes: int = 32 << 20
    max_envelope_bytes: int = 64 << 10


@dataclass(frozen=True)
class RelayVerdict:
    result: RelayResult
    reason: str = ""
    notice: bytes | None = None
    """For DELIVERED: the recipient's notice, if held, to send back."""


@dataclass(frozen=True)
class RelayRow:
    message_id: bytes
    recipient: NodeId
    uploader: NodeId
    size: int
    expires_ms: int
    received_ms: int
    envelope: bytes


class AcceptResult(Enum):
    """What accept_incoming did with a message."""

    STORED = "stored"
    """New: remembered as seen and added to the inbox."""
    DUPLICATE = "duplicate"
    """Id already seen (a replay from any peer, relay or restart): nothing changed."""
    EXPIRED = "expired"
    """Its expiry is at or before our now_ms: refused, not remembered."""
    FUTURE = "future"
    """Its timestamp is more than MAX_FUTURE_SKEW_MS ahead of now_ms: refused, not remembered."""
    BLOCKED = "blocked"
    """Sender is blocked: not in the inbox, but the id is remembered so replays are DUPLICATE."""


class OutboxState(Enum):
    """Where an outgoing message is. States only move forward."""

    QUEUED = "queued"
    """Committed, no hop has acknowledged it yet."""
    SENT = "sent"
    """A hop (the recipient or a relay) acknowledged it after storing it."""
    DELIVERED = "delivered"
    """The recipient's end-to-end delivery receipt came back."""
    READ = "read"
    """The recipient reported it read."""
    EXPIRED = "expired"
    """Expired before any receipt came back: no longer retried."""


class AddressSource(Enum):
    """Where an address for a peer was learned; a dial hint either way."""

    BOOTSTRAP = "bootstrap"
    """The bootstrap list (config file or command line)."""
    MDNS = "mdns"
    """An mDNS response on the local network (anyone on the link can send one)."""
    PEX = "pex"
    """Peer exchange: a record signed by the peer it describes."""
    INBOUND = "inbound"
    """The peer connected to us from there."""
    MANUAL = "manual"
    """The user typed it."""


# Which states each state may be reached from; any other move is ignored.
_MOVES_TO: dict[OutboxState, tuple[OutboxState, ...]] = {
    OutboxState.SENT: (OutboxState.QUEUED,),
    OutboxState.DELIVERED: (OutboxState.QUEUED, OutboxState.SENT),
    OutboxState.READ: (OutboxState.QUEUED, OutboxState.SENT, OutboxState.DELIVERED),
    OutboxState.EXPIRED: (OutboxState.QUEUED, OutboxState.SENT),
}
# Kept in the same text as the partial indexes so SQLite uses them.
_PENDING = "state IN ('queued', 'sent')"
# When two sources name the same address, the more deliberate one is kept.
_SOURCE_RANK = {
    AddressSource.MDNS: 0,
    AddressSource.PEX: 1,
    AddressSource.INBOUND: 2,
    AddressSource.BOOTSTRAP: 3,
    AddressSource.MANUAL: 4,
}


@dataclass(frozen=True)
class InboxRow:
    """A received message. `seq` increases with arrival and is never reused."""

    seq: int
    message_id: bytes
    sender: NodeId
    recipient: NodeId
    timestamp_ms: int
    expires_ms: int
    received_ms: int
    kind: int
    body: wire.Value
    read: bool
    group: bytes | None = None
    """A group message's group id."""


@dataclass(frozen=True)
class MessageRef:
    """A text or file of a 1:1 conversation, as changes refer to it."""

    mine: bool
    peer: NodeId
    """The other side: its recipient (ours) or its sender (theirs)."""
    deleted: bool
    vanish_ms: int | None
    kind: int


@dataclass(frozen=True)
class FileOut:
    """A file we offered."""

    offer_id: bytes
    message_id: bytes
    recipient: NodeId
    file_hash: bytes
    size: int
    key: bytes
    served: int
    expires_ms: int


@dataclass(frozen=True)
class FileIn:
    """A file offered to us, and how far its fetch is."""

    offer_id: bytes
    message_id: bytes
    sender: NodeId
    offer: wire.Value
    """The FILE message body as received (p2pdm.files.parse_offer reads it)."""
    next_chunk: int
    state: str
    """'fetching', 'done' or 'failed'."""
    path: str | None
    reason: str | None


@dataclass(frozen=True)
class Queued:
    """An envelope to queue in the outbox (see `Store.enqueue`)."""

    message_id: bytes
    recipient: NodeId
    envelope: bytes
    kind: int
    body: wire.Value
    expires_ms: int


@dataclass(frozen=True)
class OutboxRow:
    """An outgoing message and its delivery state."""

    seq: int
    message_id: bytes
    recipient: NodeId
    envelope: bytes
    kind: int
    body: wire.Value
    created_ms: int
    expires_ms: int
    state: OutboxState
    attempts: int
    last_attempt_ms: int | None
    delivered_ms: int | None
    relayed_to: int


@dataclass(frozen=True)
class ChatRow:
    """One text message of a conversation, either way, at local time `ms`."""

    mine: bool
    seq: int
    message_id: bytes
    ms: int
    """Local time: when we received it, or when we sent it."""
    timestamp_ms: int
    """The sender's time stamp (ours for our own messages)."""
    text: str
    read: bool
    """Received messages: the user has seen it. Ours: always True."""
    state: OutboxState | None
    """Ours only."""
    relayed_to: int
    edited_ms: int | None = None
    """When its sender last edited it (their clock)."""
    deleted: bool = False
    """Unsent by its sender: the text is gone."""
    vanish_ms: int | None = None
    """A disappearing text: when it will be deleted."""
    kind: int = TEXT_KIND
    body: wire.Value = None
    """A file offer's body (FILE_KIND rows only)."""

    @property
    def cursor(self) -> str:
        """Where a page that ends at this row continues (see `conversation`)."""
        return f"{self.ms}.{int(self.mine)}.{self.seq}"


@dataclass(frozen=True)
class ConversationRow:
    """A peer we have messages with, or a contact, for a list of chats."""

    peer: NodeId
    name: str | None
    contact: bool
    blocked: bool
    last_ms: int | None
    last_text: str | None
    last_mine: bool
    unread: int
    received: int
    """Text messages received from the peer."""


@dataclass(frozen=True)
class SearchHit:
    peer: NodeId
    mine: bool
    message_id: bytes
    ms: int
    text: str
    snippet: str
    """The matching part, with the matched words between [ and ]."""


@dataclass(frozen=True)
class ContactRow:
    node_id: NodeId
    name: str | None
    blocked: bool
    added_ms: int


@dataclass(frozen=True)
class AddressRow:
    """A dial hint. `last_ok_ms` is set once a handshake there proved the node id."""

    host: str
    port: int
    source: AddressSource
    last_seen_ms: int
    last_ok_ms: int | None
    failures: int


@dataclass(frozen=True)
class PeerRow:
    """A node we know of. `last_seen_ms` is None until we have talked to it."""

    node_id: NodeId
    first_seen_ms: int
    last_seen_ms: int | None
    addresses: tuple[AddressRow, ...]


# --- argument checks --------------------------------------------------------


def _check_ms(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIME_MS:
        raise StoreError(f"{what} must be integer milliseconds in 0..2^53-1, got {value!r}")
    return value


def _check_id(message_id: bytes) -> bytes:
    if not isinstance(message_id, bytes) or len(message_id) != MESSAGE_ID_LEN:
        raise StoreError(f"a message id is {MESSAGE_ID_LEN} bytes, got {message_id!r}")
    return message_id


def _check_node(node_id: NodeId) -> bytes:
    if not isinstance(node_id, NodeId):
        raise StoreError(f"expected a NodeId, got {type(node_id).__name__}")
    return node_id.public_key


def _check_name(name: str) -> str:
    cleaned = unicodedata.normalize("NFC", name.strip()) if isinstance(name, str) else ""
    if not cleaned:
        raise StoreError("a contact name must be non-empty text")
    if len(cleaned) > MAX_CONTACT_NAME_LEN:
        raise StoreError(f"a contact name is at most {MAX_CONTACT_NAME_LEN} characters")
    if any(unicodedata.category(c).startswith("C") for c in cleaned):
        raise StoreError("a contact name may not contain control or invisible characters")
    try:
        NodeId.parse(cleaned)
    except IdentityError:
        return cleaned
    raise StoreError("a contact name may not be a node id")


def _check_host(host: str) -> str:
    if (
        not isinstance(host, str)
        or not 0 < len(host) <= MAX_HOST_LEN
        or not host.isascii()
        or not host.isprintable()
        or any(c.isspace() for c in host)
    ):
        raise StoreError(f"a host is 1..{MAX_HOST_LEN} printable ASCII characters: {host!r}")
    return host.lower()


def _check_port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise StoreError(f"a port is an integer in 1..65535, got {port!r}")
    return port


def _id_list(ids: Iterable[bytes]) -> list[bytes]:
    return [_check_id(i) for i in ids]


def _split_sql(script: str) -> list[str]:
    """A migration script as single statements (sqlite3 executes one at a time).

    `executescript` would do this, but it commits first and so cannot run
    inside our transaction.
    """
    statements, start = [], 0
    for i, ch in enumerate(script):
        if ch == ";" and sqlite3.complete_statement(script[start : i + 1]):
            statements.append(script[start : i + 1])
            start = i + 1
    if script[start:].strip():
        statements.append(script[start:])  # incomplete: SQLite will say so
    return statements


def _text_of(blob: bytes) -> str | None:
    """p2pdm_text() in SQL: a stored body's text, or NULL if it is not text."""
    try:
        value = wire.decode(blob)
    except wire.WireError:
        return None
    return text_of_body(value)


def text_of_body(body: wire.Value) -> str | None:
    """The text a person wrote, in a text or group message body."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and isinstance(body.get("t"), str):
        return str(body["t"])
    return None


def vanish_after(kind: int, body: wire.Value) -> int | None:
    """A disappearing text's timer (ms after it is stored), else None."""
    if kind == TEXT_KIND and isinstance(body, dict) and isinstance(body.get("dis"), int):
        return int(body["dis"])  # type: ignore[arg-type]
    return None


def _ref_of(kind: int, body: wire.Value) -> bytes | None:
    if kind in (REACTION_KIND, EDIT_KIND, DELETE_KIND) and isinstance(body, dict):
        ref = body.get("ref")
        return ref if isinstance(ref, bytes) else None
    if kind == FILE_PART_KIND and isinstance(body, dict):
        offer = body.get("x")
        return offer if isinstance(offer, bytes) else None
    return None


def _part_of(kind: int, body: wire.Value) -> int | None:
    if kind == FILE_PART_KIND and isinstance(body, dict) and isinstance(body.get("i"), int):
        return int(body["i"])  # type: ignore[arg-type]
    return None


def group_fields(kind: int, body: wire.Value) -> tuple[bytes | None, bytes | None]:
    """(group id, shared message id) of a group message body, else (None, None)."""
    if kind == GROUP_TEXT_KIND and isinstance(body, dict):
        g, gm = body.get("g"), body.get("gm")
        if isinstance(g, bytes) and isinstance(gm, bytes):
            return g, gm
    return None, None


def _search_query(text: str) -> str:
    """What a person typed, as an FTS5 query: every word, each as a prefix.

    Only words go through (quoted), so FTS5's query syntax cannot be
    triggered by accident and no input makes the query fail.
    """
    words = [w for w in _WORD.findall(unicodedata.normalize("NFKC", text)) if w][:MAX_SEARCH_WORDS]
    if not words:
        raise StoreError("search for at least one word (letters or digits)")
    return " ".join(f'"{w[:MAX_SEARCH_WORD_LEN]}"*' for w in words)


def _decode_body(blob: bytes) -> wire.Value:
    try:
        return wire.decode(blob)
    except wire.WireError as exc:
        raise StoreError(f"a stored message body is damaged: {exc}") from None


def _index(conn: sqlite3.Connection, rows: Sequence[tuple[str | None, bytes, int, bytes]]) -> None:
    """Add (text, peer, mine, message id) rows to the search index, and
    note where each went (FTS5 gives a new row the next rowid up)."""
    if not rows:
        return
    last = conn.execute("SELECT rowid FROM search ORDER BY rowid DESC LIMIT 1").fetchone()
    conn.executemany("INSERT INTO search (text, peer, mine, message_id) VALUES (?, ?, ?, ?)", rows)
    conn.execute(
        "INSERT INTO search_ids (message_id, entry)"
        " SELECT message_id, rowid FROM search WHERE rowid > ?",
        (0 if last is None else last[0],),
    )


def _unindex(conn: sqlite3.Connection, message_ids: Sequence[bytes]) -> None:
    """Take messages out of the search index, by their noted entries."""
    for chunk, marks in _id_chunks(message_ids):
        entries = conn.execute(
            f"DELETE FROM search_ids WHERE message_id IN ({marks}) RETURNING entry", chunk
        ).fetchall()
        conn.executemany("DELETE FROM search WHERE rowid = ?", entries)


def _plus(now_ms: int, after_ms: int | None) -> int | None:
    return None if after_ms is None else now_ms + after_ms


# --- the store --------------------------------------------------------------

# Ids bound in one statement (SQLite allows 32,766 variables since 3.32).
_IDS_PER_STATEMENT = 500


def _id_chunks(ids: Sequence[bytes]) -> Iterator[tuple[Sequence[bytes], str]]:
    """`ids` in chunks of one statement's worth, each with its "?, ?, ..." marks."""
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        chunk = ids[start : start + _IDS_PER_STATEMENT]
        yield chunk, ", ".join("?" * len(chunk))


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _db(method: Callable[Concatenate[Store, _P], _R]) -> Callable[Concatenate[Store, _P], _R]:
    """Turn SQLite errors (disk full, I/O error, corruption) into StoreError."""

    @functools.wraps(method)
    def wrapper(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        self._acquire()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._lock.release()

    return wrapper


_INBOX_COLUMNS = (
    "seq, message_id, sender, recipient, ts_ms, expires_ms, received_ms, kind, body, read, grp"
)
_OUTBOX_COLUMNS = (
    "seq, message_id, recipient, envelope, kind, body, created_ms, expires_ms, state,"
    " attempts, last_attempt_ms, delivered_ms, relayed_to"
)
_RELAY_COLUMNS = "message_id, recipient, uploader, size, expires_ms, received_ms, envelope"
_ADDRESS_COLUMNS = "host, port, source, last_seen_ms, last_ok_ms, failures"
# Best dial candidates first: proven addresses, fewest failures, freshest.
_ADDRESS_ORDER = "last_ok_ms IS NULL, failures, last_seen_ms DESC, host, port"


def _relay_row(r: Sequence[Any]) -> RelayRow:
    return RelayRow(
        bytes(r[0]), NodeId(bytes(r[1])), NodeId(bytes(r[2])), r[3], r[4], r[5], bytes(r[6])
    )


class Store:
    """The node's database. Create with `Store.open(path)` or `Store.memory()`."""

    def __init__(self, conn: sqlite3.Connection, name: str) -> None:
        """Private: use `open` or `memory`."""
        self._conn: sqlite3.Connection | None = conn
        self._name = name
        self._in_transaction = False
        # Serialises callers from several threads; re-entrant for the thread
        # that holds a transaction.
        self._lock = threading.RLock()
        # Set when SQLite itself rolled back an open batch (e.g. disk full):
        # the batch is lost and must not go on as if it were intact.
        self._aborted: str | None = None
        self._savepoints = True

    # --- opening and closing ---------------------------------------------

    @classmethod
    def open(cls, path: Path | str, *, migrations: Sequence[str] = MIGRATIONS) -> Store:
        """Open or create the database at `path` (mode 0600), migrating it if older.

        `migrations` is for tests of upgrades; callers use the default.
        """
        path = Path(path)
        try:
            # SQLite would create the file 0644 under the usual umask; messages
            # are stored in clear, so create it 0600 first. The -wal and -shm
            # files get the database file's mode from SQLite.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create database {path}: {exc.strerror}") from exc
        return cls._connect(str(path), migrations, wal=True)

    @classmethod
    def memory(cls, *, migrations: Sequence[str] = MIGRATIONS) -> Store:
        """A private in-memory database, gone on close (for tests)."""
        return cls._connect(":memory:", migrations, wal=False)

    @classmethod
    def _connect(cls, name: str, migrations: Sequence[str], *, wal: bool) -> Store:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            need = ".".join(map(str, MIN_SQLITE_VERSION))
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old; p2pdm needs {need}")
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN
            # and COMMIT ourselves, so a commit happens exactly where we say.
            conn = sqlite3.connect(
                name,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {name}: {exc}") from exc
        store = cls(conn, name)
        try:
            store._configure(wal)
            store._migrate(migrations)
        except sqlite3.Error as exc:
            conn.close()
            if exc.sqlite_errorname in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise StoreError(f"{name} is damaged or not a database: {exc}") from exc
            raise StoreError(f"cannot open database {name}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return store

    def _configure(self, wal: bool) -> None:
        conn = self._c()
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.create_function("p2pdm_text", 1, _text_of, deterministic=True)
        conn.execute("PRAGMA foreign_keys = ON")
        if wal:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"database {self._name}: cannot use WAL (journal mode {mode})")
        # FULL, not WAL's usual NORMAL: NORMAL survives a process crash but
        # may lose the last commits on power loss or an OS crash; FULL syncs
        # the WAL at every commit, so what we acknowledged survives a power
        # cut too. Group commit keeps the cost to one sync per batch.
        conn.execute("PRAGMA synchronous = FULL")
        # On macOS fsync does not reach the platter; F_FULLFSYNC does. A
        # no-op elsewhere.
        conn.execute("PRAGMA fullfsync = ON")

    def _migrate(self, migrations: Sequence[str]) -> None:
        """Apply the missing migrations, each in one transaction with its version bump.

        The version is read inside the write transaction, so two processes
        opening a new file at once cannot both apply a migration.
        """
        conn = self._c()
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = self._schema_check(conn, len(migrations))
                if version == len(migrations):
                    conn.execute("COMMIT")
                    return
                try:
                    for statement in _split_sql(migrations[version]):
                        conn.execute(statement)
                except (sqlite3.OperationalError, sqlite3.IntegrityError) as exc:
                    raise StoreError(
                        f"database {self._name}: migration to schema version {version + 1} "
                        f"failed and was rolled back: {exc}"
                    ) from exc
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _schema_check(self, conn: sqlite3.Connection, known: int) -> int:
        """The file's schema version, if it is a p2pdm database this code can read."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id not in (0, APPLICATION_ID) or (
            app_id == 0
            and version == 0
            and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        ):
            raise StoreError(f"{self._name} is an SQLite database, but not a p2pdm one")
        if version > known:
            raise StoreError(
                f"database {self._name} has schema version {version}, newer than this "
                f"p2pdm understands ({known}); upgrade p2pdm to open it"
            )
        return version

    def close(self) -> None:
        """Close the database. An open transaction is rolled back. Idempotent."""
        self._acquire()
        try:
            conn, self._conn = self._conn, None
            if conn is not None:
                self._in_transaction = False
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                conn.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    @_db
    def schema_version(self) -> int:
        version: int = self._c().execute("PRAGMA user_version").fetchone()[0]
        return version

    @_db
    def integrity_check(self) -> list[str]:
        """SQLite's full integrity check: an empty list means the file is sound."""
        rows = self._c().execute("PRAGMA integrity_check").fetchall()
        problems = [str(r[0]) for r in rows]
        return [] if problems == ["ok"] else problems

    # --- transactions ----------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, all_or_nothing: bool = False) -> Iterator[None]:
        """Group commit: everything inside commits together when the block exits.

        An exception leaving the block rolls all of it back. Transactions do
        not nest: opening one inside another is a StoreError. Report work as
        stored only after the block has exited without an exception.

        `all_or_nothing`: methods run without their own savepoints, for a
        caller that fails the whole batch on any error anyway (about a third
        of the cost of a small insert). After an error inside a method the
        transaction refuses to commit, even if the caller carries on.
        """
        self._acquire()
        try:
            conn = self._c()
            if self._in_transaction:
                raise StoreError(
                    "a store transaction is already open; transactions do not nest "
                    "(put the work in the outer one)"
                )
            try:
                # IMMEDIATE takes the write lock now rather than at the first
                # write, so a busy database fails here, before any work is done.
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            self._in_transaction = True
            self._aborted = None
            self._savepoints = not all_or_nothing
            try:
                yield
            except BaseException:
                self._in_transaction = False
                self._rollback()
                raise
            finally:
                self._savepoints = True
            self._in_transaction = False
            try:
                self._check_not_aborted()
                conn.execute("COMMIT")
            except StoreError:
                self._rollback()
                raise
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(
                    f"database {self._name}: commit failed, nothing in the transaction was "
                    f"stored: {exc}"
                ) from exc
        finally:
            self._lock.release()

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic mutation: a savepoint inside a batch, else its own transaction."""
        conn = self._c()
        if self._in_transaction and not self._savepoints:
            self._check_not_aborted()
            try:
                yield conn
            except BaseException as exc:
                self._aborted = f"{type(exc).__name__}: {exc}"  # half a method is in it
                raise
        elif self._in_transaction:
            self._check_not_aborted()
            conn.execute("SAVEPOINT op")
            try:
                yield conn
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                else:
                    self._aborted = str(exc)
                raise
            conn.execute("RELEASE op")
        else:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                self._rollback()
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise

    def _check_not_aborted(self) -> None:
        if self._aborted is not None:
            raise StoreError(
                f"database {self._name}: the transaction failed part way ({self._aborted});"
                " nothing in it was stored"
            )

    def _acquire(self) -> None:
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            raise StoreError(f"the store was busy in another thread for {LOCK_WAIT_S:g} s")

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"database {self._name}: {exc}")

    # --- groups -------------------------------------------------------------

    @_db
    def group(self, group_id: bytes) -> tuple[bytes, bool] | None:
        """A group's latest state (canonical CBOR body) and whether we are in it."""
        row = (
            self._c()
            .execute("SELECT state, member FROM groups WHERE group_id = ?", (group_id,))
            .fetchone()
        )
        return None if row is None else (bytes(row[0]), bool(row[1]))

    @_db
    def groups(self) -> list[tuple[bytes, bytes, bool]]:
        """Every group known: (id, state, member), most recently changed first."""
        rows = self._c().execute(
            "SELECT group_id, state, member FROM groups ORDER BY updated_ms DESC, group_id"
        )
        return [(bytes(r[0]), bytes(r[1]), bool(r[2])) for r in rows]

    @_db
    def save_group(
        self, group_id: bytes, version: int, state: bytes, member: bool, now_ms: int
    ) -> None:
        """Keep a group's new state (the caller checked it is newer and allowed)."""
        if len(group_id) != 16:
            raise StoreError("a group id is 16 bytes")
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO groups (group_id, version, state, member, updated_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_id) DO UPDATE SET"
                " version = excluded.version, state = excluded.state,"
                " member = excluded.member, updated_ms = excluded.updated_ms",
                (group_id, version, state, int(member), now_ms),
            )

    @_db
    def keep_pending_group_state(
        self, group_id: bytes, sender: NodeId, state: bytes, now_ms: int
    ) -> None:
        """Keep a change whose parent is not known yet; past
        MAX_PENDING_PER_SENDER for its sender or MAX_PENDING_GROUP_STATES for
        the group, the oldest go (one member cannot push out everyone's)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO group_pending (group_id, sender, state, received_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (group_id, _check_node(sender), state, _check_ms(now_ms, "now_ms")),
            )
            conn.execute(
                "DELETE FROM group_pending WHERE group_id = ? AND sender = ? AND id NOT IN"
                " (SELECT id FROM group_pending WHERE group_id = ? AND sender = ?"
                " ORDER BY id DESC LIMIT ?)",
                (group_id, sender.public_key, group_id, sender.public_key, MAX_PENDING_PER_SENDER),
            )
            conn.execute(
                "DELETE FROM group_pending WHERE group_id = ? AND id NOT IN"
                " (SELECT id FROM group_pending WHERE group_id = ? ORDER BY id DESC LIMIT ?)",
                (group_id, group_id, MAX_PENDING_GROUP_STATES),
            )

    @_db
    def add_group_state(self, group_id: bytes, digest: bytes, version: int, state: bytes) -> None:
        """Keep a valid state of a group; those GROUP_HISTORY versions below
        the newest go."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO group_states (group_id, digest, version, state) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (group_id, digest, version, state),
            )
            conn.execute(
                "DELETE FROM group_states WHERE group_id = ? AND version <"
                " (SELECT max(version) FROM group_states WHERE group_id = ?) - ?",
                (group_id, group_id, GROUP_HISTORY),
            )

    @_db
    def group_states(self, group_id: bytes) -> list[bytes]:
        """Every valid state kept of a group (canonical CBOR bodies)."""
        rows = self._c().execute("SELECT state FROM group_states WHERE group_id = ?", (group_id,))
        return [bytes(r[0]) for r in rows]

    @_db
    def take_pending_group_states(self, group_id: bytes) -> list[tuple[NodeId, bytes]]:
        """Remove and return a group's pending states, oldest first."""
        with self._write() as conn:
            rows = conn.execute(
                "DELETE FROM group_pending WHERE group_id = ? RETURNING id, sender, state",
                (group_id,),
            ).fetchall()
        return [(NodeId(r[1]), bytes(r[2])) for r in sorted(rows)]

    @_db
    def group_messages(self, group_id: bytes, limit: int = 100) -> list[dict[str, Any]]:
        """A group's latest messages both ways, oldest first: ours once per
        shared id with each member's copy's state, theirs as received."""
        limit = self._check_limit(limit)
        conn = self._c()
        theirs = conn.execute(
            "SELECT message_id, sender, ts_ms, received_ms, body, read, edited_ms, deleted, gm"
            f" FROM inbox WHERE grp = ? AND kind = {GROUP_TEXT_KIND}"
            " ORDER BY received_ms DESC LIMIT ?",
            (group_id, limit),
        ).fetchall()
        ours = conn.execute(
            "SELECT gm, min(created_ms), body, json_group_array(json_array(hex(recipient),"
            " hex(message_id), state, relayed_to)), max(edited_ms), max(deleted) FROM outbox"
            f" WHERE grp = ? AND kind = {GROUP_TEXT_KIND} GROUP BY gm"
            " ORDER BY min(created_ms) DESC LIMIT ?",
            (group_id, limit),
        ).fetchall()
        out: list[dict[str, Any]] = []
        for mid, sender, ts, received, body, read, edited, deleted, gm in theirs:
            out.append(
                {
                    "mine": False,
                    "id": bytes(mid),
                    "gm": bytes(gm),
                    "from": NodeId(sender),
                    "ts_ms": ts,
                    "ms": received,
                    "body": _decode_body(body),
                    "read": bool(read),
                    "edited": edited is not None,
                    "deleted": bool(deleted),
                }
            )
        for gm, created, body, copies, edited, deleted in ours:
            out.append(
                {
                    "mine": True,
                    "gm": bytes(gm),
                    "ms": created,
                    "ts_ms": created,
                    "edited": edited is not None,
                    "deleted": bool(deleted),
                    "body": _decode_body(body),
                    "copies": [
                        (NodeId(bytes.fromhex(r)), bytes.fromhex(m), OutboxState(st), n)
                        for r, m, st, n in json.loads(copies)
                    ],
                }
            )
        out.sort(key=lambda m: m["ms"])
        return out[-limit:]

    # --- files --------------------------------------------------------------

    @_db
    def add_file_out(
        self,
        offer_id: bytes,
        message_id: bytes,
        recipient: NodeId,
        file_hash: bytes,
        size: int,
        key: bytes,
        expires_ms: int,
    ) -> None:
        """Remember a file we offered, so its recipient (only) may fetch it."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO files_out (offer_id, message_id, recipient, file_hash, size, key,"
                " expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (offer_id, message_id, _check_node(recipient), file_hash, size, key, expires_ms),
            )

    @_db
    def file_out(self, offer_id: bytes) -> FileOut | None:
        row = (
            self._c()
            .execute(
                "SELECT offer_id, message_id, recipient, file_hash, size, key, served, expires_ms"
                " FROM files_out WHERE offer_id = ?",
                (offer_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return FileOut(row[0], row[1], NodeId(row[2]), row[3], row[4], row[5], row[6], row[7])

    @_db
    def file_offers_out(self) -> list[bytes]:
        """Ids of the files we offered that are still open."""
        return [bytes(r[0]) for r in self._c().execute("SELECT offer_id FROM files_out")]

    @_db
    def end_file_offers(self, now_ms: int) -> list[bytes]:
        """Close the offers of files that expired, or were served whole and
        then receipted (their copies can go); returns their ids. Served
        whole, too: a read receipt, or a relay's delivery notice, can come
        while the recipient is still fetching."""
        with self._write() as conn:
            rows = conn.execute(
                "DELETE FROM files_out WHERE expires_ms <= ? OR (served >= size AND message_id IN"
                " (SELECT message_id FROM outbox WHERE message_id = files_out.message_id"
                "  AND state IN ('delivered', 'read')))"
                " RETURNING offer_id",
                (_check_ms(now_ms, "now_ms"),),
            ).fetchall()
        return [bytes(r[0]) for r in rows]

    @_db
    def note_file_served(self, offer_id: bytes, served: int) -> None:
        """How many bytes of an offered file the recipient has fetched so far."""
        with self._write() as conn:
            conn.execute(
                "UPDATE files_out SET served = max(served, ?) WHERE offer_id = ?",
                (served, offer_id),
            )

    @_db
    def add_file_in(
        self, offer_id: bytes, message_id: bytes, sender: NodeId, offer: bytes, now_ms: int
    ) -> bool:
        """A file offered to us, to fetch; False if that offer id is known."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO files_in (offer_id, message_id, sender, offer, state, updated_ms)"
                " VALUES (?, ?, ?, ?, 'fetching', ?) ON CONFLICT DO NOTHING",
                (offer_id, _check_id(message_id), _check_node(sender), offer, now_ms),
            )
            return cur.rowcount == 1

    @_db
    def files_in(
        self, *, sender: NodeId | None = None, message_ids: Sequence[bytes] = ()
    ) -> list[FileIn]:
        """Files offered to us: those offered in the messages `message_ids`,
        else those still fetching (from `sender`, if given)."""
        sql = (
            "SELECT offer_id, message_id, sender, offer, next_chunk, state, path, reason"
            " FROM files_in"
        )
        conn = self._c()
        if message_ids:
            rows = []
            for chunk, marks in _id_chunks(list(message_ids)):
                rows += conn.execute(sql + f" WHERE message_id IN ({marks})", chunk).fetchall()
        elif sender is not None:
            rows = conn.execute(
                sql + " WHERE sender = ? AND state = 'fetching' ORDER BY updated_ms",
                (_check_node(sender),),
            ).fetchall()
        else:
            rows = conn.execute(sql + " WHERE state = 'fetching' ORDER BY updated_ms").fetchall()
        return [
            FileIn(r[0], r[1], NodeId(r[2]), _decode_body(r[3]), r[4], r[5], r[6], r[7])
            for r in rows
        ]

    @staticmethod
    def _has_part(
        conn: sqlite3.Connection, offer_id: bytes | None, sender: bytes, part: int
    ) -> bool:
        row = conn.execute(
            "SELECT 1 FROM inbox WHERE ref = ? AND sender = ? AND part = ?"
            f" AND kind = {FILE_PART_KIND}",
            (offer_id, sender, part),
        ).fetchone()
        return row is not None

    @_db
    def count_file_parts(self, offer_id: bytes, sender: NodeId) -> tuple[int, int]:
        """How many parts of a file in parts have arrived, and their bytes so far."""
        row = (
            self._c()
            .execute(
                f"SELECT count(*), coalesce(sum(length(body)), 0) FROM inbox"
                f" WHERE ref = ? AND sender = ? AND kind = {FILE_PART_KIND}",
                (offer_id, _check_node(sender)),
            )
            .fetchone()
        )
        return int(row[0]), int(row[1])

    @_db
    def file_parts(self, offer_id: bytes, sender: NodeId) -> dict[int, bytes]:
        """The parts of a file in parts that have arrived, by index."""
        rows = self._c().execute(
            "SELECT part, body FROM inbox WHERE ref = ? AND sender = ?"
            f" AND kind = {FILE_PART_KIND}",
            (offer_id, _check_node(sender)),
        )
        out: dict[int, bytes] = {}
        for part, blob in rows:
            body = _decode_body(blob)
            data = body.get("d") if isinstance(body, dict) else None
            out[int(part)] = data if isinstance(data, bytes) else b""
        return out

    @_db
    def drop_file_parts(self, offer_id: bytes, sender: NodeId) -> None:
        """The file is assembled: its parts need not be kept twice."""
        with self._write() as conn:
            conn.execute(
                f"DELETE FROM inbox WHERE ref = ? AND sender = ? AND kind = {FILE_PART_KIND}",
                (offer_id, _check_node(sender)),
            )

    @_db
    def file_progress(
        self,
        offer_id: bytes,
        now_ms: int,
        *,
        next_chunk: int | None = None,
        done_path: str | None = None,
        failed: str | None = None,
    ) -> None:
        """A fetch moved on: chunks before `next_chunk` are on disk, or it is
        done (the file is at `done_path`), or it failed for good."""
        with self._write() as conn:
            if done_path is not None:
                conn.execute(
                    "UPDATE files_in SET state = 'done', path = ?, updated_ms = ?"
                    " WHERE offer_id = ?",
                    (done_path, now_ms, offer_id),
                )
            elif failed is not None:
                conn.execute(
                    "UPDATE files_in SET state = 'failed', reason = ?, updated_ms = ?"
                    " WHERE offer_id = ?",
                    (failed, now_ms, offer_id),
                )
            else:
                conn.execute(
                    "UPDATE files_in SET next_chunk = ?, updated_ms = ? WHERE offer_id = ?",
                    (next_chunk, now_ms, offer_id),
                )

    # --- reactions, edits, unsends, disappearing texts -------------------------

    @_db
    def conversation_message(self, message_id: bytes) -> MessageRef | None:
        """A text or file of a 1:1 conversation by id, either way."""
        conn = self._c()
        kinds = f"({TEXT_KIND}, {FILE_KIND})"
        for table, who, mine in (("outbox", "recipient", True), ("inbox", "sender", False)):
            row = conn.execute(
                f"SELECT {who}, deleted, vanish_ms, kind FROM {table}"
                f" WHERE message_id = ? AND kind IN {kinds}",
                (_check_id(message_id),),
            ).fetchone()
            if row is not None:
                return MessageRef(mine, NodeId(row[0]), bool(row[1]), row[2], row[3])
        return None

    @_db
    def group_message_ref(
        self, shared_id: bytes, group_id: bytes, author: NodeId | None = None
    ) -> tuple[bool, NodeId | None, bool] | None:
        """A group message by its shared id in a group: (mine, its sender if
        not ours, deleted). With `author`, only one that author sent us
        (shared ids are the senders' choice: another member may reuse one)."""
        conn = self._c()
        if author is None:
            row = conn.execute(
                "SELECT deleted FROM outbox WHERE gm = ? AND grp = ?"
                f" AND kind = {GROUP_TEXT_KIND} LIMIT 1",
                (shared_id, group_id),
            ).fetchone()
            if row is not None:
                return True, None, bool(row[0])
        sql = (
            "SELECT sender, deleted FROM inbox WHERE gm = ? AND grp = ?"
            f" AND kind = {GROUP_TEXT_KIND}"
        )
        args: list[object] = [shared_id, group_id]
        if author is not None:
            sql += " AND sender = ?"
            args.append(_check_node(author))
        row = conn.execute(sql + " LIMIT 1", args).fetchone()
        return None if row is None else (False, NodeId(row[0]), bool(row[1]))

    @_db
    def group_of_shared_id(self, shared_id: bytes) -> bytes | None:
        """The group of a group message we sent or hold, by its shared id."""
        for table in ("outbox", "inbox"):
            row = (
                self._c()
                .execute(f"SELECT grp FROM {table} WHERE gm = ? LIMIT 1", (shared_id,))
                .fetchone()
            )
            if row is not None:
                return bytes(row[0])
        return None

    @_db
    def file_offer_ids(self, message_ids: Sequence[bytes]) -> set[bytes]:
        """Which of these are file offers we sent."""
        return self._ids_in(self._c(), "outbox", list(message_ids), f"kind = {FILE_KIND}")

    @_db
    def change_group_text(
        self, shared_id: bytes, *, author: NodeId | None, text: str | None, ts_ms: int
    ) -> bool:
        """Edit (`text`) or unsend (None) a group message: ours (`author`
        None: every member's copy) or one `author` sent us."""
        with self._write() as conn:
            if author is None:
                table, where, args = "outbox", "gm = ?", [shared_id]
            else:
                table, where = "inbox", "gm = ? AND sender = ?"
                args = [shared_id, _check_node(author)]
            rows = conn.execute(
                f"SELECT body, edited_ms FROM {table} WHERE {where}"
                f" AND kind = {GROUP_TEXT_KIND} AND deleted = 0",
                args,
            ).fetchall()
            if not rows or (text is not None and rows[0][1] is not None and rows[0][1] >= ts_ms):
                return False
            if text is None:
                conn.execute(
                    f"UPDATE {table} SET body = ?, deleted = 1 WHERE {where}"
                    f" AND kind = {GROUP_TEXT_KIND}",
                    [wire.encode(""), *args],
                )
                conn.execute("DELETE FROM reactions WHERE target = ?", (shared_id,))
                return True
            old = _decode_body(rows[0][0])
            body = {**old, "t": text} if isinstance(old, dict) else old
            conn.execute(
                f"UPDATE {table} SET body = ?, edited_ms = ? WHERE {where}"
                f" AND kind = {GROUP_TEXT_KIND}",
                [wire.encode(body), ts_ms, *args],
            )
            return True

    @_db
    def settle_change(self, message_id: bytes) -> None:
        """A received change (reaction, edit, unsend) was applied, or refused:
        keep its row (a copy that comes again is a duplicate that gets a
        receipt) but not what it said, and not as waiting for its target."""
        with self._write() as conn:
            conn.execute(
                "UPDATE inbox SET body = ?, ref = NULL WHERE message_id = ?",
                (wire.encode({}), _check_id(message_id)),
            )

    @_db
    def change_text(
        self, message_id: bytes, *, mine: bool, author: NodeId, text: str | None, ts_ms: int
    ) -> bool:
        """Edit (`text`) or unsend (`text` None) a text by `author`, ours
        (`mine`) or received; False if there is no such live text by them.
        An edit older than the last one applied changes nothing."""
        table, who = ("outbox", "recipient") if mine else ("inbox", "sender")
        with self._write() as conn:
            where = f"message_id = ? AND kind = {TEXT_KIND} AND deleted = 0"
            args: list[object] = [_check_id(message_id)]
            if not mine:
                where += " AND sender = ?"
                args.append(_check_node(author))
            row = conn.execute(
                f"SELECT body, edited_ms, {who} FROM {table} WHERE {where}", args
            ).fetchone()
            if row is None or (text is not None and row[1] is not None and row[1] >= ts_ms):
                return False
            _unindex(conn, [message_id])
            if text is None:
                conn.execute(
                    f"UPDATE {table} SET body = ?, deleted = 1 WHERE message_id = ?",
                    (wire.encode(""), message_id),
                )
                conn.execute("DELETE FROM reactions WHERE target = ?", (message_id,))
                return True
            old = _decode_body(row[0])
            body: wire.Value = {**old, "t": text} if isinstance(old, dict) else text
            conn.execute(
                f"UPDATE {table} SET body = ?, edited_ms = ? WHERE message_id = ?",
                (wire.encode(body), ts_ms, message_id),
            )
            _index(conn, [(text, row[2], int(mine), message_id)])
            return True

    @_db
    def early_changes(
        self, target: bytes, sender: NodeId | None
    ) -> list[tuple[bytes, NodeId, int, wire.Value, int]]:
        """Reactions, edits and unsends that arrived before their target,
        from `sender` (or anyone, for a group message's shared id):
        (change id, its sender, kind, body, ts) oldest first."""
        sql = (
            "SELECT message_id, sender, kind, body, ts_ms FROM inbox WHERE ref = ?"
            f" AND kind IN ({REACTION_KIND}, {EDIT_KIND}, {DELETE_KIND})"
        )
        args: list[object] = [target]
        if sender is not None:
            sql += " AND sender = ?"
            args.append(_check_node(sender))
        rows = self._c().execute(sql + " ORDER BY ts_ms, seq", args)
        return [(r[0], NodeId(r[1]), r[2], _decode_body(r[3]), r[4]) for r in rows]

    @_db
    def changed_before(self, targets: Sequence[bytes]) -> set[bytes]:
        """Those of `targets` that reactions, edits or unsends are waiting for
        (from anyone): `early_changes` finds nothing for the others."""
        changes = f"kind IN ({REACTION_KIND}, {EDIT_KIND}, {DELETE_KIND})"
        return self._ids_in(self._c(), "inbox", targets, changes, column="ref")

    @_db
    def purge_unmatched(self, now_ms: int) -> int:
        """Forget changes and file parts whose target or offer never came,
        once they expire (a text that vanished, or a peer that sent them alone)."""
        with self._write() as conn:
            cur = conn.execute(
                f"DELETE FROM inbox WHERE kind IN ({REACTION_KIND}, {EDIT_KIND}, {DELETE_KIND},"
                f" {FILE_PART_KIND}) AND ref IS NOT NULL AND expires_ms <= ?",
                (_check_ms(now_ms, "now_ms"),),
            )
            return cur.rowcount

    @_db
    def set_reaction(self, target: bytes, reactor: NodeId, emoji: str, ts_ms: int) -> bool:
        """Keep `reactor`'s latest reaction to `target` (a message id, or a
        group message's 16-byte shared id; "" takes it back); False if a
        later one is already held."""
        if not isinstance(target, bytes) or len(target) not in (16, MESSAGE_ID_LEN):
            raise StoreError("a reaction's target is a message id or a shared id")
        with self._write() as conn:
            row = conn.execute(
                "SELECT ts_ms FROM reactions WHERE target = ? AND reactor = ?",
                (target, _check_node(reactor)),
            ).fetchone()
            if row is not None and row[0] > ts_ms:
                return False
            if emoji:
                conn.execute(
                    "INSERT INTO reactions (target, reactor, emoji, ts_ms) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (target, reactor) DO UPDATE SET emoji = excluded.emoji,"
                    " ts_ms = excluded.ts_ms",
                    (target, reactor.public_key, emoji, ts_ms),
                )
            else:
                conn.execute(
                    "DELETE FROM reactions WHERE target = ? AND reactor = ?",
                    (target, reactor.public_key),
                )
            return True

    @_db
    def reactions(self, targets: Sequence[bytes]) -> dict[bytes, list[tuple[NodeId, str]]]:
        """Who reacted how to each of `targets`."""
        out: dict[bytes, list[tuple[NodeId, str]]] = {}
        for chunk, marks in _id_chunks(list(targets)):
            rows = self._c().execute(
                f"SELECT target, reactor, emoji FROM reactions WHERE target IN ({marks})"
                " ORDER BY ts_ms",
                chunk,
            )
            for target, reactor, emoji in rows:
                out.setdefault(bytes(target), []).append((NodeId(reactor), emoji))
        return out

    @_db
    def timer(self, peer: NodeId) -> int:
        """A conversation's disappearing-message timer in ms; 0 is off."""
        row = (
            self._c()
            .execute("SELECT after_ms FROM timers WHERE peer = ?", (_check_node(peer),))
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    @_db
    def set_timer(self, peer: NodeId, after_ms: int, ts_ms: int) -> bool:
        """Set a conversation's timer (0: off), unless a later setting is held."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT set_ms FROM timers WHERE peer = ?", (_check_node(peer),)
            ).fetchone()
            if row is not None and row[0] > ts_ms:
                return False
            conn.execute(
                "INSERT INTO timers (peer, after_ms, set_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (peer) DO UPDATE SET after_ms = excluded.after_ms,"
                " set_ms = excluded.set_ms",
                (peer.public_key, after_ms, ts_ms),
            )
            return True

    @_db
    def next_vanish_ms(self) -> int | None:
        """When the next disappearing text is due, if any."""
        row = (
            self._c()
            .execute(
                "SELECT min(t) FROM (SELECT min(vanish_ms) AS t FROM inbox"
                " WHERE vanish_ms IS NOT NULL UNION ALL SELECT min(vanish_ms) FROM outbox"
                " WHERE vanish_ms IS NOT NULL)"
            )
            .fetchone()
        )
        return None if row is None or row[0] is None else int(row[0])

    @_db
    def vanish_due(self, now_ms: int) -> list[bytes]:
        """Delete disappearing texts (and what refers to them) whose time has
        come, both ways; returns their ids. An outbox row goes too: its
        envelope expired no later than it (see Node.send_texts)."""
        with self._write() as conn:
            ids = [
                bytes(r[0])
                for table in ("inbox", "outbox")
                for r in conn.execute(
                    f"DELETE FROM {table} WHERE vanish_ms <= ? RETURNING message_id", (now_ms,)
                ).fetchall()
            ]
            _unindex(conn, ids)
            for chunk, marks in _id_chunks(ids):
                conn.execute(f"DELETE FROM reactions WHERE target IN ({marks})", chunk)
                conn.execute(f"DELETE FROM inbox WHERE ref IN ({marks})", chunk)
        return ids

    # --- seen ids and inbox ----------------------------------------------

    def accept_incoming(
        self, msg: Message, envelope_bytes: bytes, now_ms: int, *, strangers: bool = True
    ) -> AcceptResult:
        """Store an opened message once per id; say what was done with it.

        `envelope_bytes` are the exact bytes received, kept with the message
        so it can be re-verified or exported later. With `strangers` False,
        a sender that is not a contact is dropped like a blocked one.
        """
        [result] = self.accept_incoming_many([(msg, envelope_bytes)], now_ms, strangers=strangers)
        return result

    @_db
    def accept_incoming_many(
        self,
        messages: Sequence[tuple[Message, bytes]],
        now_ms: int,
        *,
        strangers: bool = True,
    ) -> list[AcceptResult]:
        """`accept_incoming` for many messages in order, with one statement
        per table: the same id twice is stored once, as one after the other."""
        _check_ms(now_ms, "now_ms")
        results: list[AcceptResult | None] = []
        for msg, _ in messages:
            _check_id(msg.message_id)
            if msg.expires_ms <= now_ms:
                results.append(AcceptResult.EXPIRED)
            elif msg.timestamp_ms > now_ms + MAX_FUTURE_SKEW_MS:
                results.append(AcceptResult.FUTURE)
            else:
                results.append(None)
        ids = [msg.message_id for (msg, _), r in zip(messages, results, strict=True) if r is None]
        with self._write() as conn:
            seen = self._ids_in(conn, "seen", ids)
            contacts: dict[bytes, tuple[int] | None] = {}
            seen_rows, inbox_rows, search_rows = [], [], []
            parts: set[tuple[bytes | None, bytes, int]] = set()
            for i, (msg, data) in enumerate(messages):
                if results[i] is not None:
                    continue
                message_id, sender = msg.message_id, msg.sender.public_key
                if message_id in seen:
                    results[i] = AcceptResult.DUPLICATE
                    continue
                seen.add(message_id)
                seen_rows.append((message_id, msg.expires_ms))
                if sender not in contacts:
                    contacts[sender] = self._contact(sender)
                contact = contacts[sender]
                if (contact is not None and contact[0]) or (contact is None and not strangers):
                    results[i] = AcceptResult.BLOCKED
                    continue
                part = _part_of(msg.kind, msg.body)
                if part is not None:
                    # One row per part of an offer: another envelope with
                    # the same part (a peer flooding us) is a duplicate.
                    key = (_ref_of(msg.kind, msg.body), sender, part)
                    if key in parts or self._has_part(conn, *key):
                        results[i] = AcceptResult.DUPLICATE
                        continue
                    parts.add(key)
                inbox_rows.append(
                    (
                        message_id,
                        sender,
                        msg.recipient.public_key,
                        msg.timestamp_ms,
                        msg.expires_ms,
                        now_ms,
                        msg.kind,
                        wire.encode(msg.body),
                        bytes(data),
                        *group_fields(msg.kind, msg.body),
                        _ref_of(msg.kind, msg.body),
                        _plus(now_ms, vanish_after(msg.kind, msg.body)),
                        part,
                    )
                )
                text = text_of_body(msg.body)
                if msg.kind == TEXT_KIND and text is not None:
                    search_rows.append((text, sender, 0, message_id))
                results[i] = AcceptResult.STORED
            conn.executemany("INSERT INTO seen (message_id, expires_ms) VALUES (?, ?)", seen_rows)
            conn.executemany(
                "INSERT INTO inbox (message_id, sender, recipient, ts_ms, expires_ms,"
                " received_ms, kind, body, envelope, grp, gm, ref, vanish_ms, part)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                inbox_rows,
            )
            _index(conn, search_rows)
        return [r for r in results if r is not None]

    @_db
    def is_seen(self, message_id: bytes) -> bool:
        row = (
            self._c()
            .execute("SELECT 1 FROM seen WHERE message_id = ?", (_check_id(message_id),))
            .fetchone()
        )
        return row is not None

    @_db
    def purge_expired(self, now_ms: int) -> int:
        """Forget seen ids whose envelopes expired more than SEEN_GRACE_MS ago."""
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            cur = conn.execute("DELETE FROM seen WHERE expires_ms <= ?", (now_ms - SEEN_GRACE_MS,))
            return cur.rowcount

    @_db
    def inbox(
        self,
        peer: NodeId | None = None,
        limit: int | None = None,
        after_seq: int | None = None,
        exclude_kinds: Sequence[int] = (),
    ) -> list[InboxRow]:
        """Received messages, oldest first, optionally only those from `peer`.

        `exclude_kinds` leaves out kinds that are not for people (receipts).

        With `after_seq`: the first `limit` rows with seq > after_seq, to
        follow the inbox (pass the last seq seen). Without it: the latest
        `limit` rows. `limit=None` means all.
        """
        where: list[str] = []
        args: list[object] = []
        if peer is not None:
            where.append("sender = ?")
            args.append(_check_node(peer))
        if after_seq is not None:
            where.append("seq > ?")
            args.append(self._check_limit(after_seq, "after_seq"))
        if exclude_kinds:
            where.append(f"kind NOT IN ({', '.join('?' * len(exclude_kinds))})")
            args.extend(int(k) for k in exclude_kinds)
        sql = f"SELECT {_INBOX_COLUMNS} FROM inbox"
        if where:
            sql += " WHERE " + " AND ".join(where)
        newest = limit is not None and after_seq is None
        sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(self._check_limit(limit))
        rows = self._c().execute(sql, args).fetchall()
        if newest:
            rows.reverse()
        return [
            InboxRow(
                seq=r[0],
                message_id=r[1],
                sender=NodeId(r[2]),
                recipient=NodeId(r[3]),
                timestamp_ms=r[4],
                expires_ms=r[5],
                received_ms=r[6],
                kind=r[7],
                body=_decode_body(r[8]),
                read=bool(r[9]),
                group=r[10],
            )
            for r in rows
        ]

    @_db
    def receipt_again(self, message_id: bytes, now_ms: int, interval_ms: int) -> bool:
        """May a copy of a message we hold get another delivery receipt now?

        At most once per `interval_ms` per message (a time ahead of `now_ms`,
        from a clock since set back, counts as due); a yes is recorded.
        """
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            row = conn.execute(
                "UPDATE inbox SET receipted_again_ms = ?1 WHERE message_id = ?2"
                " AND (receipted_again_ms IS NULL OR receipted_again_ms <= ?1 - ?3"
                " OR receipted_again_ms > ?1) RETURNING 1",
                (now_ms, _check_id(message_id), _check_ms(interval_ms, "interval_ms")),
            ).fetchone()
        return row is not None

    @_db
    def in_inbox(self, message_id: bytes) -> bool:
        """The message was stored (not only seen and dropped, as a blocked one is)."""
        row = (
            self._c()
            .execute("SELECT 1 FROM inbox WHERE message_id = ?", (_check_id(message_id),))
            .fetchone()
        )
        return row is not None

    @_db
    def inbox_envelope(self, message_id: bytes) -> bytes | None:
        """The exact envelope bytes a received message arrived in."""
        row = (
            self._c()
            .execute("SELECT envelope FROM inbox WHERE message_id = ?", (_check_id(message_id),))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def mark_read(self, message_ids: Iterable[bytes]) -> list[bytes]:
        """Mark received messages read; returns the ids that were unread before."""
        return [mid for ids in self.mark_read_by_sender(message_ids).values() for mid in ids]

    @_db
    def mark_read_by_sender(
        self, message_ids: Iterable[bytes] = (), *, peer: NodeId | None = None
    ) -> dict[NodeId, list[bytes]]:
        """Mark messages read (the given ids, or all of `peer`'s); returns
        the ones that were unread before, by sender, for read receipts."""
        ids = _id_list(message_ids)
        changed: dict[NodeId, list[bytes]] = {}
        with self._write() as conn:
            if peer is not None:
                rows = conn.execute(
                    "UPDATE inbox SET read = 1 WHERE sender = ? AND read = 0"
                    f" AND kind IN ({TEXT_KIND}, {FILE_KIND}) RETURNING message_id, seq",
                    (_check_node(peer),),
                ).fetchall()
                changed[peer] = [r[0] for r in sorted(rows, key=lambda r: r[1])]
            for mid in ids:
                row = conn.execute(
                    "UPDATE inbox SET read = 1 WHERE message_id = ? AND read = 0 RETURNING sender",
                    (mid,),
                ).fetchone()
                if row is not None:
                    changed.setdefault(NodeId(row[0]), []).append(mid)
        return {sender: mids for sender, mids in changed.items() if mids}

    @_db
    def inbox_count(self, *, unread_only: bool = False) -> int:
        sql = "SELECT count(*) FROM inbox" + (" WHERE read = 0" if unread_only else "")
        count: int = self._c().execute(sql).fetchone()[0]
        return count

    # --- outbox ----------------------------------------------------------

    def enqueue(
        self,
        *,
        message_id: bytes,
        recipient: NodeId,
        envelope: bytes,
        kind: int,
        body: wire.Value,
        expires_ms: int,
        now_ms: int,
    ) -> bool:
        """Queue a sealed envelope for sending; False if that id is already queued.

        The envelope is resent exactly as given; `kind` and `body` are kept
        to show the message.
        """
        [new] = self.enqueue_many(
            [Queued(message_id, recipient, envelope, kind, body, expires_ms)], now_ms
        )
        return new

    @_db
    def enqueue_many(self, items: Sequence[Queued], now_ms: int) -> list[bool]:
        """`enqueue` for many envelopes at once (one statement per table):
        for each, whether it was new. Nothing is queued if any is invalid."""
        _check_ms(now_ms, "now_ms")
        rows = []
        for item in items:
            _check_id(item.message_id)
            _check_ms(item.expires_ms, "expires_ms")
            if item.expires_ms <= now_ms:
                raise StoreError("cannot queue a message that has already expired")
            if not isinstance(item.envelope, bytes) or not item.envelope:
                raise StoreError("envelope must be the sealed envelope bytes")
            try:
                encoded = wire.encode(item.body)
            except wire.WireUsageError as exc:
                raise StoreError(f"message body cannot be stored: {exc}") from None
            rows.append(
                (
                    item.message_id,
                    _check_node(item.recipient),
                    item.envelope,
                    int(item.kind),
                    encoded,
                    now_ms,
                    item.expires_ms,
                    OutboxState.QUEUED.value,
                    *group_fields(item.kind, item.body),
                    _plus(now_ms, vanish_after(item.kind, item.body)),
                )
            )
        ids = [row[0] for row in rows]
        with self._write() as conn:
            held = self._ids_in(conn, "outbox", ids)
            new = []
            for mid in ids:
                new.append(mid not in held)
                held.add(mid)  # the same id twice in `items`: the first one counts
            fresh = [row for row, is_new in zip(rows, new, strict=True) if is_new]
            conn.executemany(
                "INSERT INTO outbox (message_id, recipient, envelope, kind, body, created_ms,"
                " expires_ms, state, grp, gm, vanish_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                fresh,
            )
            _index(
                conn,
                [
                    (text_of_body(item.body), item.recipient.public_key, 1, item.message_id)
                    for item, is_new in zip(items, new, strict=True)
                    if is_new and item.kind == TEXT_KIND and text_of_body(item.body) is not None
                ],
            )
        return new

    @_db
    def pending_for(
        self,
        recipient: NodeId,
        now_ms: int,
        limit: int | None = None,
        retry_after_ms: int | None = None,
    ) -> list[OutboxRow]:
        """Messages to `recipient` still to deliver (QUEUED or SENT, unexpired), oldest first.

        With `retry_after_ms`, leaves out those attempted or acknowledged by
        a hop less than that long ago.
        """
        args: list[object] = [_check_node(recipient), _check_ms(now_ms, "now_ms")]
        sql = (
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox"
            f" WHERE recipient = ? AND {_PENDING} AND expires_ms > ?"
        )
        if retry_after_ms is not None:
            sql += " AND (last_attempt_ms IS NULL OR last_attempt_ms <= ?)"
            args.append(now_ms - _check_ms(retry_after_ms, "retry_after_ms"))
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(self._check_limit(limit))
        return [self._outbox_row(r) for r in self._c().execute(sql, args)]

    @_db
    def pending_recipients(self, now_ms: int) -> list[NodeId]:
        """Everyone with a message still to deliver."""
        rows = self._c().execute(
            f"SELECT DISTINCT recipient FROM outbox WHERE {_PENDING} AND expires_ms > ?"
            " ORDER BY recipient",
            (_check_ms(now_ms, "now_ms"),),
        )
        return [NodeId(r[0]) for r in rows]

    @_db
    def outbox_pending_count(self, now_ms: int) -> int:
        count: int = (
            self._c()
            .execute(
                f"SELECT count(*) FROM outbox WHERE {_PENDING} AND expires_ms > ?",
                (_check_ms(now_ms, "now_ms"),),
            )
            .fetchone()[0]
        )
        return count

    @_db
    def note_attempt(self, message_id: bytes, now_ms: int) -> bool:
        """Count one send attempt (pushed or uploaded) of a pending message.

        False if the message is unknown or no longer pending.
        """
        _check_id(message_id)
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET attempts = attempts + 1,"
                " last_attempt_ms = max(coalesce(last_attempt_ms, 0), ?)"
                f" WHERE message_id = ? AND {_PENDING}",
                (now_ms, message_id),
            )
            return cur.rowcount == 1

    @_db
    def mark_sent(self, message_id: bytes, now_ms: int, *, relay: NodeId | None = None) -> bool:
        """A hop acknowledged the message after storing it; True if the state changed.

        `relay` is the relay that took it (None when the recipient itself
        acknowledged); each distinct relay counts once in `relayed_to`.
        """
        _check_id(message_id)
        _check_ms(now_ms, "now_ms")
        relay_key = None if relay is None else _check_node(relay)
        with self._write() as conn:
            changed = self._advance(conn, [message_id], OutboxState.SENT, now_ms)
            if relay_key is None:
                # The recipient took it now: that is the latest attempt, for
                # retry_after_ms. A relay taking a copy is not: the message
                # still goes straight to its recipient when it connects.
                conn.execute(
                    "UPDATE outbox SET last_attempt_ms = max(coalesce(last_attempt_ms, 0), ?)"
                    f" WHERE message_id = ? AND {_PENDING}",
                    (now_ms, message_id),
                )
            else:
                cur = conn.execute(
                    "INSERT INTO outbox_relays (message_id, relay, acked_ms)"
                    f" SELECT message_id, ?, ? FROM outbox WHERE message_id = ? AND {_PENDING}"
                    " ON CONFLICT (message_id, relay) DO NOTHING",
                    (relay_key, now_ms, message_id),
                )
                if cur.rowcount:
                    conn.execute(
                        "UPDATE outbox SET relayed_to = relayed_to + 1 WHERE message_id = ?",
                        (message_id,),
                    )
        return bool(changed)

    @_db
    def mark_sent_many(self, message_ids: Iterable[bytes], now_ms: int) -> list[bytes]:
        """The recipient itself acknowledged these pushes: `mark_sent` for a
        batch. Returns the ids that moved from queued to sent (a push acked
        again, after a resend, moves nothing)."""
        _check_ms(now_ms, "now_ms")
        rows = [(now_ms, _check_id(mid)) for mid in message_ids]
        with self._write() as conn:
            ids = [mid for _, mid in rows]
            queued = self._ids_in(conn, "outbox", ids, "state = 'queued'")
            # One statement per id: queued -> sent, and a hop took it now
            # (the latest attempt, for retry_after_ms).
            conn.executemany(
                "UPDATE outbox SET"
                " state = CASE state WHEN 'queued' THEN 'sent' ELSE state END,"
                " last_attempt_ms = max(coalesce(last_attempt_ms, 0), ?)"
                f" WHERE message_id = ? AND {_PENDING}",
                rows,
            )
        return [mid for mid in dict.fromkeys(ids) if mid in queued]

    @_db
    def relays_for(self, message_id: bytes) -> list[NodeId]:
        """Relays that acknowledged a copy of an outgoing message."""
        rows = self._c().execute(
            "SELECT relay FROM outbox_relays WHERE message_id = ? ORDER BY acked_ms, relay",
            (_check_id(message_id),),
        )
        return [NodeId(r[0]) for r in rows]

    @_db
    def mark_delivered(
        self, message_ids: Iterable[bytes], now_ms: int, *, recipient: NodeId
    ) -> list[bytes]:
        """A delivery receipt signed by `recipient` came back; returns the ids it moved.

        Only messages sent to `recipient` move: anyone who learned a message
        id (every relay sees them) could sign a receipt for it, and must not
        stop us retrying a message to someone else. Idempotent: ids already
        delivered, read or expired, or never sent, change nothing.
        """
        _check_ms(now_ms, "now_ms")
        key = _check_node(recipient)
        ids = _id_list(message_ids)
        with self._write() as conn:
            return self._advance(conn, ids, OutboxState.DELIVERED, now_ms, key)

    @_db
    def mark_outbox_read(
        self, message_ids: Iterable[bytes], now_ms: int, *, recipient: NodeId
    ) -> list[bytes]:
        """`recipient` read these messages (so they were delivered); returns ids moved."""
        _check_ms(now_ms, "now_ms")
        key = _check_node(recipient)
        ids = _id_list(message_ids)
        with self._write() as conn:
            return self._advance(conn, ids, OutboxState.READ, now_ms, key)

    @_db
    def withdraw_read_receipts(self, recipient: NodeId | None = None) -> list[bytes]:
        """Read receipts that no one has taken yet (queued, no relay holds a
        copy), to `recipient` or to anyone, are dropped: they move to EXPIRED
        and are never sent. Returns their ids. Those already handed to a
        peer cannot be called back."""
        sql = (
            "UPDATE outbox SET state = ? WHERE kind = ? AND state = ? AND relayed_to = 0"
            + (" AND recipient = ?" if recipient is not None else "")
            + " RETURNING message_id"
        )
        args: list[object] = [OutboxState.EXPIRED.value, READ_KIND, OutboxState.QUEUED.value]
        if recipient is not None:
            args.append(_check_node(recipient))
        with self._write() as conn:
            return [bytes(r[0]) for r in conn.execute(sql, args).fetchall()]

    @_db
    def expire_outbox(self, now_ms: int) -> int:
        """Move pending messages at or past their expiry to EXPIRED; returns how many."""
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE outbox SET state = ? WHERE {_PENDING} AND expires_ms <= ?",
                (OutboxState.EXPIRED.value, now_ms),
            )
            return cur.rowcount

    @_db
    def outbox(self, limit: int | None = None) -> list[OutboxRow]:
        """Outgoing messages, oldest first: all, or the latest `limit`."""
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY seq DESC"
        args: list[object] = []
        if limit is not None:
            sql += " LIMIT ?"
            args.append(self._check_limit(limit))
        rows = [self._outbox_row(r) for r in self._c().execute(sql, args)]
        rows.reverse()
        return rows

    @_db
    def outbox_message(self, message_id: bytes) -> OutboxRow | None:
        row = (
            self._c()
            .execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE message_id = ?",
                (_check_id(message_id),),
            )
            .fetchone()
        )
        return None if row is None else self._outbox_row(row)

    @staticmethod
    def _ids_in(
        conn: sqlite3.Connection,
        table: str,
        ids: Sequence[bytes],
        where: str = "1",
        column: str = "message_id",
    ) -> set[bytes]:
        """Which of `ids` the table holds in `column`, in rows that also meet
        `where` (a constant SQL condition)."""
        found: set[bytes] = set()
        for chunk, marks in _id_chunks(ids):
            rows = conn.execute(
                f"SELECT {column} FROM {table} WHERE {column} IN ({marks}) AND {where}", chunk
            )
            found.update(bytes(r[0]) for r in rows)
        return found

    @staticmethod
    def _advance(
        conn: sqlite3.Connection,
        ids: list[bytes],
        to: OutboxState,
        now_ms: int,
        recipient: bytes | None = None,
    ) -> list[bytes]:
        # The states are written into the statement, not bound: our own
        # constants, and SQLite updates the partial indexes on state faster
        # when it sees them (a receipt's rows: 27 -> 16 µs each here).
        sources = ", ".join(f"'{state.value}'" for state in _MOVES_TO[to])
        delivered = to in (OutboxState.DELIVERED, OutboxState.READ)
        changed = []
        # A statement per chunk of ids, not per id: a receipt covers hundreds.
        for chunk, id_marks in _id_chunks(list(dict.fromkeys(ids))):
            sql = (
                f"UPDATE outbox SET state = '{to.value}'"
                + (", delivered_ms = coalesce(delivered_ms, ?)" if delivered else "")
                + f" WHERE message_id IN ({id_marks})"
                + f" AND state IN ({sources})"
                + (" AND recipient = ?" if recipient is not None else "")
                + " RETURNING message_id"
            )
            args: list[object] = []
            if delivered:
                args.append(now_ms)
            args.extend(chunk)
            if recipient is not None:
                args.append(recipient)
            moved = {bytes(r[0]) for r in conn.execute(sql, args).fetchall()}
            changed += [mid for mid in chunk if mid in moved]
        return changed

    @staticmethod
    def _outbox_row(r: Sequence[Any]) -> OutboxRow:
        return OutboxRow(
            seq=r[0],
            message_id=r[1],
            recipient=NodeId(r[2]),
            envelope=r[3],
            kind=r[4],
            body=_decode_body(r[5]),
            created_ms=r[6],
            expires_ms=r[7],
            state=OutboxState(r[8]),
            attempts=r[9],
            last_attempt_ms=r[10],
            delivered_ms=r[11],
            relayed_to=r[12],
        )

    @staticmethod
    def _check_limit(value: int, what: str = "limit") -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StoreError(f"{what} must be a non-negative integer, got {value!r}")
        return value

    # --- contacts --------------------------------------------------------

    @_db
    def add_contact(self, node_id: NodeId, name: str | None, now_ms: int) -> ContactRow:
        """Add a contact, or rename one (name None clears it); keeps its blocked flag.

        Names are unique, ignoring ASCII case.
        """
        key = _check_node(node_id)
        _check_ms(now_ms, "now_ms")
        clean = None if name is None else _check_name(name)
        with self._write() as conn:
            if clean is not None:
                row = conn.execute(
                    "SELECT node_id FROM contacts WHERE name = ? AND node_id != ?", (clean, key)
                ).fetchone()
                if row is not None:
                    raise StoreError(
                        f"the name {clean!r} is already used for {NodeId(row[0])}; "
                        "remove or rename that contact first"
                    )
            conn.execute(
                "INSERT INTO contacts (node_id, name, added_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (node_id) DO UPDATE SET name = excluded.name",
                (key, clean, now_ms),
            )
            row = conn.execute(
                "SELECT blocked, added_ms FROM contacts WHERE node_id = ?", (key,)
            ).fetchone()
        return ContactRow(node_id, clean, bool(row[0]), row[1])

    @_db
    def remove_contact(self, node_id: NodeId) -> bool:
        """Forget a contact, its name and its blocked flag; False if unknown."""
        key = _check_node(node_id)
        with self._write() as conn:
            return conn.execute("DELETE FROM contacts WHERE node_id = ?", (key,)).rowcount == 1

    @_db
    def set_blocked(self, node_id: NodeId, blocked: bool, now_ms: int) -> None:
        """Block or unblock a node; blocking a stranger adds it as an unnamed contact."""
        key = _check_node(node_id)
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            if blocked:
                conn.execute(
                    "INSERT INTO contacts (node_id, blocked, added_ms) VALUES (?, 1, ?)"
                    " ON CONFLICT (node_id) DO UPDATE SET blocked = 1",
                    (key, now_ms),
                )
            else:
                conn.execute("UPDATE contacts SET blocked = 0 WHERE node_id = ?", (key,))

    @_db
    def is_blocked(self, node_id: NodeId) -> bool:
        return self._blocked(_check_node(node_id))

    def _blocked(self, key: bytes) -> bool:
        found = self._contact(key)
        return found is not None and bool(found[0])

    def _contact(self, key: bytes) -> tuple[int] | None:
        """(blocked,) for a contact, None for a stranger."""
        row: tuple[int] | None = (
            self._c().execute("SELECT blocked FROM contacts WHERE node_id = ?", (key,)).fetchone()
        )
        return row

    @_db
    def is_accepted(self, node_id: NodeId) -> bool:
        """A contact that is not blocked (messages from anyone else are requests)."""
        found = self._contact(_check_node(node_id))
        return found is not None and not found[0]

    @_db
    def accept_peer(self, node_id: NodeId, now_ms: int) -> bool:
        """Make a stranger an (unnamed) contact; False if it already was one.

        Called when the user accepts a request or writes to someone first.
        A blocked peer stays blocked: unblocking is its own decision.
        """
        key = _check_node(node_id)
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO contacts (node_id, added_ms) VALUES (?, ?)"
                " ON CONFLICT (node_id) DO NOTHING",
                (key, now_ms),
            )
            return cur.rowcount == 1

    @_db
    def contacts(self) -> list[ContactRow]:
        """All contacts, named ones first by name."""
        rows = self._c().execute(
            "SELECT node_id, name, blocked, added_ms FROM contacts"
            " ORDER BY name IS NULL, name, node_id"
        )
        return [ContactRow(NodeId(r[0]), r[1], bool(r[2]), r[3]) for r in rows]

    # --- chat views: conversations, requests, search ---------------------

    @_db
    def conversations(self) -> list[ConversationRow]:
        """Contacts and everyone we exchanged text with, latest activity first.

        Strangers (not contacts) are message requests: `contact` is False.
        """
        c = self._c()
        peers: dict[bytes, dict[str, Any]] = {}

        def entry(key: bytes) -> dict[str, Any]:
            return peers.setdefault(
                key,
                {
                    "name": None,
                    "contact": False,
                    "blocked": False,
                    "in_ms": None,
                    "out_ms": None,
                    "unread": 0,
                    "received": 0,
                },
            )

        for key, name, blocked in c.execute("SELECT node_id, name, blocked FROM contacts"):
            e = entry(key)
            e.update(name=name, contact=True, blocked=bool(blocked))
        for key, last, count in c.execute(
            "SELECT sender, max(received_ms), count(*) FROM inbox"
            f" WHERE kind = {TEXT_KIND} GROUP BY sender"
        ):
            entry(key).update(in_ms=last, received=count)
        for key, unread in c.execute(
            f"SELECT sender, count(*) FROM inbox WHERE read = 0 AND kind = {TEXT_KIND}"
            " GROUP BY sender"
        ):
            entry(key)["unread"] = unread
        for key, last in c.execute(
            f"SELECT recipient, max(created_ms) FROM outbox WHERE kind = {TEXT_KIND}"
            " GROUP BY recipient"
        ):
            entry(key)["out_ms"] = last
        out = []
        for key, e in peers.items():
            text, mine, last = None, False, None
            if e["in_ms"] is not None or e["out_ms"] is not None:
                mine = e["out_ms"] is not None and (e["in_ms"] is None or e["out_ms"] >= e["in_ms"])
                table, who, ms = (
                    ("outbox", "recipient", "created_ms")
                    if mine
                    else ("inbox", "sender", "received_ms")
                )
                body, last = c.execute(
                    f"SELECT body, {ms} FROM {table} WHERE {who} = ? AND kind = {TEXT_KIND}"
                    f" ORDER BY {ms} DESC, seq DESC LIMIT 1",
                    (key,),
                ).fetchone()
                text = _text_of(body)
            out.append(
                ConversationRow(
                    NodeId(key),
                    e["name"],
                    e["contact"],
                    e["blocked"],
                    last,
                    text,
                    mine,
                    e["unread"],
                    e["received"],
                )
            )
        out.sort(key=lambda r: (r.last_ms is None, -(r.last_ms or 0), r.name or "", str(r.peer)))
        return out

    @_db
    def conversation(self, peer: NodeId, limit: int, before: str | None = None) -> list[ChatRow]:
        """The latest `limit` texts and files with `peer`, both ways, oldest first.

        `before` is a row's `cursor`: the page then ends just before that row,
        so a view loads older history as its user scrolls up.
        """
        key = _check_node(peer)
        limit = self._check_limit(limit)
        bound: tuple[int, int, int] = (MAX_TIME_MS + 1, 2, 0)
        if before is not None:
            parts = before.split(".") if isinstance(before, str) else []
            if len(parts) != 3 or not all(
                p.isascii() and p.isdigit() and len(p) <= 19 for p in parts
            ):
                raise StoreError(f"bad cursor {before!r}: use a message's cursor")
            bound = (int(parts[0]), int(parts[1]), int(parts[2]))
            if bound[0] > MAX_TIME_MS + 1 or bound[1] > 2 or bound[2] >= 1 << 63:
                raise StoreError(f"bad cursor {before!r}: use a message's cursor")
        rows = (
            self._c()
            .execute(
                "SELECT * FROM ("
                " SELECT received_ms AS ms, 0 AS mine, seq, message_id, ts_ms, body, read,"
                "  NULL AS state, 0 AS relayed_to, edited_ms, deleted, vanish_ms, kind FROM inbox"
                f"  WHERE sender = ? AND kind IN ({TEXT_KIND}, {FILE_KIND})"
                "  AND (received_ms, 0, seq) < (?, ?, ?)"
                " UNION ALL"
                " SELECT created_ms, 1, seq, message_id, created_ms, body, 1, state, relayed_to,"
                "  edited_ms, deleted, vanish_ms, kind"
                f"  FROM outbox WHERE recipient = ? AND kind IN ({TEXT_KIND}, {FILE_KIND})"
                "  AND (created_ms, 1, seq) < (?, ?, ?)"
                ") ORDER BY ms DESC, mine DESC, seq DESC LIMIT ?",
                (key, *bound, key, *bound, limit),
            )
            .fetchall()
        )
        rows.reverse()
        return [
            ChatRow(
                mine=bool(r[1]),
                seq=r[2],
                message_id=r[3],
                ms=r[0],
                timestamp_ms=r[4],
                text=_text_of(r[5]) or "",
                read=bool(r[6]),
                state=None if r[7] is None else OutboxState(r[7]),
                relayed_to=r[8],
                edited_ms=r[9],
                deleted=bool(r[10]),
                vanish_ms=r[11],
                kind=r[12],
                body=_decode_body(r[5]) if r[12] == FILE_KIND else None,
            )
            for r in rows
        ]

    @_db
    def search(self, text: str, limit: int, peer: NodeId | None = None) -> list[SearchHit]:
        """Text messages either way that hold every word of `text` (as word
        prefixes, ignoring case and accents), newest first."""
        query = _search_query(text)
        limit = self._check_limit(limit)
        sql = (
            "SELECT s.peer, s.mine, s.message_id, coalesce(i.received_ms, o.created_ms), s.text,"
            " snippet(search, 0, '[', ']', '…', 12)"
            " FROM search s"
            " LEFT JOIN inbox i ON s.mine = 0 AND i.message_id = s.message_id"
            " LEFT JOIN outbox o ON s.mine = 1 AND o.message_id = s.message_id"
            " WHERE search MATCH ?"
        )
        args: list[object] = [query]
        if peer is not None:
            sql += " AND s.peer = ?"
            args.append(_check_node(peer))
        sql += " ORDER BY s.rowid DESC LIMIT ?"
        args.append(limit)
        return [
            SearchHit(NodeId(r[0]), bool(r[1]), r[2], r[3] or 0, r[4], r[5])
            for r in self._c().execute(sql, args)
        ]

    @_db
    def resolve_peer(self, text: str) -> NodeId:
        """A full node id, a contact name, or a unique prefix of a known node id.

        In that order: a name wins over a prefix it happens to be. Known ids
        are contacts, peers, inbox senders and outbox recipients.
        """
        cleaned = text.strip() if isinstance(text, str) else ""
        if not cleaned:
            raise StoreError("give a node id, a contact name or a node id prefix")
        bad_id: str | None = None
        if len(cleaned) == NODE_ID_TEXT_LEN and is_node_id_like(cleaned):
            try:
                return NodeId.parse(cleaned)
            except IdentityError as exc:
                bad_id = str(exc)
        conn = self._c()
        row = conn.execute(
            "SELECT node_id FROM contacts WHERE name = ?",
            (unicodedata.normalize("NFC", cleaned),),
        ).fetchone()
        if row is not None:
            return NodeId(row[0])
        if bad_id is not None:
            raise StoreError(f"{cleaned!r} is not a valid node id: {bad_id}")
        if not is_node_id_like(cleaned):
            raise StoreError(f"no contact is named {cleaned!r}")
        if len(cleaned) < MIN_PREFIX_LEN:
            raise StoreError(
                f"no contact is named {cleaned!r}, and a node id prefix needs at least "
                f"{MIN_PREFIX_LEN} characters"
            )
        prefix = cleaned.lower()
        known = conn.execute(
            "SELECT node_id FROM contacts UNION SELECT node_id FROM peers"
            " UNION SELECT sender FROM inbox UNION SELECT recipient FROM outbox"
        )
        matches = sorted(
            {nid for (raw,) in known if str(nid := NodeId(raw)).startswith(prefix)},
            key=str,
        )
        if not matches:
            raise StoreError(f"no contact is named {cleaned!r} and no known node id starts so")
        if len(matches) > 1:
            names = {
                bytes(r[0]): r[1]
                for r in conn.execute("SELECT node_id, name FROM contacts WHERE name IS NOT NULL")
            }
            listed = ", ".join(
                str(m) + (f" ({names[m.public_key]})" if m.public_key in names else "")
                for m in matches
            )
            raise StoreError(f"{cleaned!r} matches {len(matches)} node ids: {listed}")
        return matches[0]

    # --- peers and addresses ---------------------------------------------

    @_db
    def peer_seen(self, node_id: NodeId, now_ms: int) -> int | None:
        """We talked to this node (a handshake proved its id); returns when we
        had last talked to it before, or None if never."""
        key = _check_node(node_id)
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            row = conn.execute("SELECT last_seen_ms FROM peers WHERE node_id = ?", (key,))
            found = row.fetchone()
            before: int | None = None if found is None else found[0]
            if self._ensure_peer(conn, key, now_ms, seen=True):
                conn.execute(
                    "UPDATE peers SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?)"
                    " WHERE node_id = ?",
                    (now_ms, key),
                )
            return before

    @_db
    def note_peer_address(
        self,
        node_id: NodeId,
        host: str,
        port: int,
        source: AddressSource | str,
        now_ms: int,
    ) -> None:
        """Remember a dial hint for a node. Adds or refreshes; never removes others.

        When a peer has more than MAX_ADDRESSES_PER_PEER, one is dropped:
        never-proven ones before proven ones, then the one that failed most,
        then the one heard of least recently. So a flood of made-up addresses
        only churns other unproven hints.
        """
        key = _check_node(node_id)
        host = _check_host(host)
        _check_port(port)
        _check_ms(now_ms, "now_ms")
        try:
            src = AddressSource(source)
        except ValueError:
            known = ", ".join(s.value for s in AddressSource)
            raise StoreError(f"unknown address source {source!r} (one of {known})") from None
        with self._write() as conn:
            if self._ensure_peer(conn, key, now_ms, seen=False):
                self._note_address(conn, key, host, port, src, now_ms)

    @staticmethod
    def _note_address(
        conn: sqlite3.Connection, key: bytes, host: str, port: int, src: AddressSource, now_ms: int
    ) -> None:
        row = conn.execute(
            "SELECT source FROM peer_addresses WHERE node_id = ? AND host = ? AND port = ?",
            (key, host, port),
        ).fetchone()
        if row is not None:
            old = AddressSource(row[0])
            keep = old if _SOURCE_RANK[old] >= _SOURCE_RANK[src] else src
            conn.execute(
                "UPDATE peer_addresses SET source = ?,"
                " last_seen_ms = max(last_seen_ms, ?)"
                " WHERE node_id = ? AND host = ? AND port = ?",
                (keep.value, now_ms, key, host, port),
            )
            return
        conn.execute(
            "INSERT INTO peer_addresses (node_id, host, port, source, last_seen_ms)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, host, port, src.value, now_ms),
        )
        count = conn.execute(
            "SELECT count(*) FROM peer_addresses WHERE node_id = ?", (key,)
        ).fetchone()[0]
        if count > MAX_ADDRESSES_PER_PEER:
            conn.execute(
                "DELETE FROM peer_addresses WHERE (node_id, host, port) IN"
                " (SELECT node_id, host, port FROM peer_addresses WHERE node_id = ?"
                "  ORDER BY last_ok_ms IS NOT NULL, failures DESC, last_seen_ms, host, port"
                "  LIMIT ?)",
                (key, count - MAX_ADDRESSES_PER_PEER),
            )

    @_db
    def accept_peer_record(
        self,
        node_id: NodeId,
        seq: int,
        record: bytes,
        addresses: Sequence[tuple[str, int]],
        now_ms: int,
    ) -> bool:
        """Keep a verified peer record if it is newer than the one held; True if kept.

        Its addresses replace those that came from the node's older records;
        addresses from other sources stay (they are hints of their own).
        """
        key = _check_node(node_id)
        _check_ms(now_ms, "now_ms")
        checked = [(_check_host(h), _check_port(p)) for h, p in addresses]
        if not isinstance(record, bytes) or not 0 < len(record) <= MAX_META_VALUE_SIZE:
            raise StoreError(f"a peer record is bytes of at most {MAX_META_VALUE_SIZE}")
        with self._write() as conn:
            held = conn.execute("SELECT seq FROM peer_records WHERE node_id = ?", (key,)).fetchone()
            if held is not None and held[0] >= seq:
                return False
            if not self._ensure_peer(conn, key, now_ms, seen=False):
                return False
            conn.execute(
                "INSERT INTO peer_records (node_id, seq, record, received_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (node_id) DO UPDATE SET seq = excluded.seq,"
                " record = excluded.record, received_ms = excluded.received_ms",
                (key, seq, record, now_ms),
            )
            stale = [
                (host, port)
                for host, port in conn.execute(
                    "SELECT host, port FROM peer_addresses WHERE node_id = ? AND source = ?",
                    (key, AddressSource.PEX.value),
                )
                if (host, port) not in checked
            ]
            conn.executemany(
                "DELETE FROM peer_addresses WHERE node_id = ? AND host = ? AND port = ?",
                [(key, host, port) for host, port in stale],
            )
            for host, port in checked:
                self._note_address(conn, key, host, port, AddressSource.PEX, now_ms)
        return True

    @_db
    def peer_records(self, limit: int, exclude: Iterable[NodeId] = ()) -> list[bytes]:
        """Records to pass on: those of the peers we talked to most recently."""
        return [data for _, _, data in self.peer_record_rows(limit, exclude)]

    @_db
    def peer_record_count(self) -> int:
        count: int = self._c().execute("SELECT count(*) FROM peer_records").fetchone()[0]
        return count

    @_db
    def peer_record_rows(
        self, limit: int, exclude: Iterable[NodeId] = (), received_after: int | None = None
    ) -> list[tuple[NodeId, int, bytes]]:
        """`peer_records` with each record's node id and sequence number; only
        those received after `received_after` if it is given."""
        skip = {_check_node(n) for n in exclude}
        after = -1 if received_after is None else _check_ms(received_after, "received_after")
        rows = self._c().execute(
            "SELECT r.node_id, r.seq, r.record FROM peer_records r JOIN peers p USING (node_id)"
            " WHERE r.received_ms > ?"
            " ORDER BY p.last_seen_ms IS NULL, p.last_seen_ms DESC, r.received_ms DESC"
            " LIMIT ?",
            (after, self._check_limit(limit) + len(skip)),
        )
        return [(NodeId(r[0]), r[1], bytes(r[2])) for r in rows if bytes(r[0]) not in skip][:limit]

    @_db
    def forget_peer_address(self, node_id: NodeId, host: str, port: int) -> bool:
        """Drop one address hint (another node answered there); True if it was known."""
        key = _check_node(node_id)
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM peer_addresses WHERE node_id = ? AND host = ? AND port = ?",
                (key, _check_host(host), _check_port(port)),
            )
            return cur.rowcount == 1

    @_db
    def note_dial_result(
        self, node_id: NodeId, host: str, port: int, ok: bool, now_ms: int
    ) -> None:
        """A dial to a known address proved the node id (ok) or failed."""
        key = _check_node(node_id)
        host = _check_host(host)
        _check_port(port)
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            if ok:
                conn.execute(
                    "UPDATE peer_addresses SET failures = 0, last_ok_ms = ?,"
                    " last_seen_ms = max(last_seen_ms, ?)"
                    " WHERE node_id = ? AND host = ? AND port = ?",
                    (now_ms, now_ms, key, host, port),
                )
            else:
                conn.execute(
                    "UPDATE peer_addresses SET failures = failures + 1"
                    " WHERE node_id = ? AND host = ? AND port = ?",
                    (key, host, port),
                )

    @_db
    def addresses_for(self, node_id: NodeId) -> list[AddressRow]:
        """A node's addresses, best dial candidates first."""
        rows = self._c().execute(
            f"SELECT {_ADDRESS_COLUMNS} FROM peer_addresses WHERE node_id = ?"
            f" ORDER BY {_ADDRESS_ORDER}",
            (_check_node(node_id),),
        )
        return [self._address_row(r) for r in rows]

    @_db
    def peers(self) -> list[PeerRow]:
        """Every known node with its addresses, most recently seen first."""
        conn = self._c()
        by_node: dict[bytes, list[AddressRow]] = {}
        for r in conn.execute(
            f"SELECT node_id, {_ADDRESS_COLUMNS} FROM peer_addresses"
            f" ORDER BY node_id, {_ADDRESS_ORDER}"
        ):
            by_node.setdefault(r[0], []).append(self._address_row(r[1:]))
        return [
            PeerRow(NodeId(r[0]), r[1], r[2], tuple(by_node.get(r[0], ())))
            for r in conn.execute(
                "SELECT node_id, first_seen_ms, last_seen_ms FROM peers"
                " ORDER BY last_seen_ms IS NULL, last_seen_ms DESC, first_seen_ms DESC, node_id"
            )
        ]

    @staticmethod
    def _ensure_peer(conn: sqlite3.Connection, key: bytes, now_ms: int, *, seen: bool) -> bool:
        """Add a peer row if missing; False if the bound evicted the new row itself."""
        cur = conn.execute(
            "INSERT INTO peers (node_id, first_seen_ms, last_seen_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (node_id) DO NOTHING",
            (key, now_ms, now_ms if seen else None),
        )
        if cur.rowcount != 1:
            return True
        if conn.execute("SELECT count(*) FROM peers").fetchone()[0] <= MAX_PEERS:
            return True
        # Over the bound: drop a node that is not a contact and that we have
        # never talked to, the one heard of longest ago; failing that, the
        # one seen longest ago. A flood of made-up ids (peer exchange, mDNS)
        # thus only churns other strangers, itself included.
        victim = conn.execute(
            "SELECT node_id FROM peers"
            " ORDER BY node_id IN (SELECT node_id FROM contacts), last_seen_ms IS NOT NULL,"
            " coalesce(last_seen_ms, first_seen_ms), node_id LIMIT 1"
        ).fetchone()[0]
        conn.execute("DELETE FROM peers WHERE node_id = ?", (victim,))
        return bytes(victim) != key

    @staticmethod
    def _address_row(r: Sequence[Any]) -> AddressRow:
        return AddressRow(
            host=r[0],
            port=r[1],
            source=AddressSource(r[2]),
            last_seen_ms=r[3],
            last_ok_ms=r[4],
            failures=r[5],
        )

    # --- small node state ------------------------------------------------

    @_db
    def get_meta(self, key: str) -> bytes | None:
        row = (
            self._c()
            .execute("SELECT value FROM meta WHERE key = ?", (self._check_meta_key(key),))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    @_db
    def set_meta(self, key: str, value: bytes | None) -> None:
        """Set a small value; None deletes it."""
        key = self._check_meta_key(key)
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
                return
            if not isinstance(value, bytes) or len(value) > MAX_META_VALUE_SIZE:
                raise StoreError(f"a meta value is bytes of at most {MAX_META_VALUE_SIZE}")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    @staticmethod
    def _check_meta_key(key: str) -> str:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_META_KEY_LEN:
            raise StoreError(f"a meta key is text of 1..{MAX_META_KEY_LEN} characters")
        return key

    # --- relay: envelopes held for others --------------------------------

    @_db
    def accept_relay(
        self,
        message_id: bytes,
        recipient: NodeId,
        expires_ms: int,
        envelope: bytes,
        uploader: NodeId,
        now_ms: int,
        quota: RelayQuota,
    ) -> RelayVerdict:
        """Hold an envelope for `recipient` if the quota allows; never evicts anything.

        The caller has checked the envelope's outer form (its id matches its
        bytes). Refusals leave the store unchanged and say why, so the
        uploader can keep the message and try elsewhere.
        """
        mid, rkey, ukey = _check_id(message_id), _check_node(recipient), _check_node(uploader)
        _check_ms(now_ms, "now_ms")
        size = len(envelope)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM relay WHERE message_id = ?", (mid,)).fetchone():
                return RelayVerdict(RelayResult.DUPLICATE)
            done = conn.execute(
                "SELECT d.recipient, n.data FROM delivered d"
                " LEFT JOIN notices n ON n.id = d.notice_id WHERE d.message_id = ?",
                (mid,),
            ).fetchone()
            if done is not None and bytes(done[0]) == rkey:
                return RelayVerdict(
                    RelayResult.DELIVERED,
                    "already delivered",
                    None if done[1] is None else bytes(done[1]),
                )
            if expires_ms <= now_ms:
                return RelayVerdict(RelayResult.REFUSED, "message has expired")
            # The sender set the expiry by its clock, which may run ahead of
            # ours: taken if it is long by no more than a timestamp may be
            # ahead (nor than the limit itself), and held only to the limit.
            skew = min(MAX_FUTURE_SKEW_MS, quota.max_ttl_ms)
            if expires_ms - now_ms > quota.max_ttl_ms + skew:
                days = quota.max_ttl_ms / 86_400_000
                return RelayVerdict(
                    RelayResult.REFUSED, f"expiry is beyond this relay's limit of {days:g} days"
                )
            if size > quota.max_envelope_bytes:
                return RelayVerdict(
                    RelayResult.REFUSED,
                    f"envelope of {size} bytes is over this relay's {quota.max_envelope_bytes}",
                )
            usage = {
                bytes(k): b
                for k, b in conn.execute(
                    "SELECT uploader, bytes FROM relay_usage WHERE uploader IN (?, ?)",
                    (ukey, _TOTAL),
                )
            }
            if usage.get(ukey, 0) + size > quota.max_peer_bytes:
                return RelayVerdict(
                    RelayResult.REFUSED,
                    f"relay quota for this peer is full ({quota.max_peer_bytes} bytes)",
                )
            if usage.get(_TOTAL, 0) + size > quota.max_total_bytes:
                return RelayVerdict(
                    RelayResult.REFUSED,
                    f"relay storage is full ({quota.max_total_bytes} bytes)",
                )
            conn.execute(
                "INSERT INTO relay (message_id, recipient, uploader, size, expires_ms,"
                " received_ms, envelope) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    mid,
                    rkey,
                    ukey,
                    size,
                    min(expires_ms, now_ms + quota.max_ttl_ms),
                    now_ms,
                    envelope,
                ),
            )
        return RelayVerdict(RelayResult.STORED)

    @_db
    def outbox_for_relay(
        self, relay: NodeId, now_ms: int, copies: int, limit: int | None = None
    ) -> list[OutboxRow]:
        """Our pending messages to hand to `relay`: fewer than `copies` relays hold them,
        this one does not, and it is not their recipient. Oldest first."""
        rkey = _check_node(relay)
        sql = (
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox o"
            f" WHERE {_PENDING} AND expires_ms > ? AND relayed_to < ? AND recipient != ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox_relays r"
            "  WHERE r.message_id = o.message_id AND r.relay = ?)"
            " ORDER BY seq"
        )
        args: list[object] = [_check_ms(now_ms, "now_ms"), self._check_limit(copies), rkey, rkey]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(self._check_limit(limit))
        return [self._outbox_row(r) for r in self._c().execute(sql, args)]

    @_db
    def relay_usage(self, uploader: NodeId | None = None) -> tuple[int, int]:
        """(envelopes, bytes) held for everyone, or uploaded by one peer."""
        key = _TOTAL if uploader is None else _check_node(uploader)
        row = (
            self._c()
            .execute("SELECT count, bytes FROM relay_usage WHERE uploader = ?", (key,))
            .fetchone()
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    @_db
    def relay_for(self, recipient: NodeId, now_ms: int, limit: int | None = None) -> list[RelayRow]:
        """Held envelopes for `recipient`, unexpired, oldest first."""
        sql = (
            f"SELECT {_RELAY_COLUMNS} FROM relay WHERE recipient = ? AND expires_ms > ?"
            " ORDER BY seq"
        )
        args: list[object] = [_check_node(recipient), _check_ms(now_ms, "now_ms")]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(self._check_limit(limit))
        return [_relay_row(r) for r in self._c().execute(sql, args)]

    @_db
    def relay_rows(self, message_ids: Iterable[bytes]) -> list[RelayRow]:
        """The held envelopes among these ids (unknown ones are left out)."""
        out = []
        conn = self._c()
        for mid in _id_list(message_ids):
            row = conn.execute(
                f"SELECT {_RELAY_COLUMNS} FROM relay WHERE message_id = ?", (mid,)
            ).fetchone()
            if row is not None:
                out.append(_relay_row(row))
        return out

    @_db
    def relay_ids(self, now_ms: int) -> list[bytes]:
        """Ids of every unexpired held envelope, sorted (for reconciliation)."""
        rows = self._c().execute(
            "SELECT message_id FROM relay WHERE expires_ms > ? ORDER BY message_id",
            (_check_ms(now_ms, "now_ms"),),
        )
        return [bytes(r[0]) for r in rows]

    @_db
    def relay_recipients(self, now_ms: int) -> list[NodeId]:
        """Everyone we hold unexpired mail for."""
        rows = self._c().execute(
            "SELECT DISTINCT recipient FROM relay WHERE expires_ms > ? ORDER BY recipient",
            (_check_ms(now_ms, "now_ms"),),
        )
        return [NodeId(bytes(r[0])) for r in rows]

    @_db
    def note_delivered(
        self,
        message_ids: Iterable[bytes],
        recipient: NodeId,
        now_ms: int,
        notice: bytes | None = None,
    ) -> list[bytes]:
        """`recipient` has these messages: drop held copies addressed to it, remember why.

        Only ids held for `recipient` (in the relay table, or in our own
        outbox with copies at relays, or already known delivered to it) are
        touched, so a notice signed by
        anyone else deletes nothing. The
        notice, when given, is kept until the last id it covers expires, to
        pass on. Returns the ids recorded.
        """
        rkey = _check_node(recipient)
        ids = _id_list(message_ids)
        _check_ms(now_ms, "now_ms")
        recorded: list[bytes] = []
        with self._write() as conn:
            expiries: dict[bytes, int] = {}
            for mid in ids:
                row = conn.execute(
                    "SELECT expires_ms FROM relay WHERE message_id = ? AND recipient = ?"
                    # Our own message counts only if relays hold copies of it:
                    # otherwise there is nothing to pass the notice on for.
                    " UNION ALL SELECT expires_ms FROM outbox"
                    " WHERE message_id = ? AND recipient = ? AND relayed_to > 0"
                    " UNION ALL SELECT expires_ms FROM delivered"
                    " WHERE message_id = ? AND recipient = ?",
                    (mid, rkey, mid, rkey, mid, rkey),
                ).fetchone()
                if row is not None:
                    expiries[mid] = int(row[0])
            if not expiries:
                return []
            notice_id = None
            if notice is not None:
                cur = conn.execute(
                    "INSERT INTO notices (data, expires_ms) VALUES (?, ?)",
                    (notice, max(expiries.values())),
                )
                notice_id = cur.lastrowid
            for mid, expires in expiries.items():
                conn.execute("DELETE FROM relay WHERE message_id = ?", (mid,))
                held = conn.execute(
                    "SELECT notice_id FROM delivered WHERE message_id = ?", (mid,)
                ).fetchone()
                if held is not None and (held[0] is not None or notice_id is None):
                    continue  # already known, with a notice if one was ever given
                conn.execute(
                    "INSERT INTO delivered (message_id, recipient, notice_id, expires_ms)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET"
                    " notice_id = excluded.notice_id",
                    (mid, rkey, notice_id, expires),
                )
                recorded.append(mid)
        return recorded

    @_db
    def notices_for(self, message_ids: Iterable[bytes]) -> list[bytes]:
        """The distinct notices held that cover any of these ids."""
        out: dict[int, bytes] = {}
        conn = self._c()
        for mid in _id_list(message_ids):
            row = conn.execute(
                "SELECT n.id, n.data FROM delivered d JOIN notices n ON n.id = d.notice_id"
                " WHERE d.message_id = ?",
                (mid,),
            ).fetchone()
            if row is not None:
                out.setdefault(int(row[0]), bytes(row[1]))
        return list(out.values())

    @_db
    def is_delivered(self, message_id: bytes) -> bool:
        row = (
            self._c()
            .execute("SELECT 1 FROM delivered WHERE message_id = ?", (_check_id(message_id),))
            .fetchone()
        )
        return row is not None

    @_db
    def purge_relay(self, now_ms: int) -> int:
        """Drop held envelopes that expired, and delivery records past their use."""
        _check_ms(now_ms, "now_ms")
        with self._write() as conn:
            cur = conn.execute("DELETE FROM relay WHERE expires_ms <= ?", (now_ms,))
            dropped = cur.rowcount
            conn.execute("DELETE FROM delivered WHERE expires_ms <= ?", (now_ms - SEEN_GRACE_MS,))
            conn.execute("DELETE FROM notices WHERE expires_ms <= ?", (now_ms - SEEN_GRACE_MS,))
            return dropped
