"""Peer records: forged, malformed and stale records are refused."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, cast

import pytest
import trio

from p2pdm import wire
from p2pdm.identity import Identity
from p2pdm.peerrecord import (
    MAX_RECORD_ADDRESSES,
    RECORD_CONTEXT,
    PeerRecord,
    PeerRecordError,
    parse_record,
    usable_from,
)
from p2pdm.store import AddressSource, Store

from .nodes import make_node

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from p2pdm.identity import NodeId
    from p2pdm.node import PeerLink

NOW = 1_700_000_000_000
ADDRS = (("192.0.2.7", 7707), ("2001:db8::7", 7707), ("127.0.0.1", 7707))


def signed_by(signer: Identity, rec: dict[str, wire.Value]) -> bytes:
    """A record whose inner map is anything we like, signed by `signer`."""
    inner = wire.encode(rec)
    return wire.encode({"rec": inner, "sig": signer.sign(RECORD_CONTEXT + inner)})


def test_a_record_round_trips(alice: Identity) -> None:
    record = PeerRecord.create(alice, ADDRS, seq=3, timestamp_ms=NOW)
    parsed = parse_record(record.data, now_ms=NOW)
    assert parsed == record
    assert parsed.node_id == alice.node_id
    assert parsed.addresses == ADDRS
    assert (parsed.seq, parsed.timestamp_ms) == (3, NOW)


def test_a_record_signed_by_someone_else_is_refused(alice: Identity, bob: Identity) -> None:
    # Bob claims Alice's id is at his address.
    forged = signed_by(
        bob,
        {"id": alice.node_id.public_key, "addrs": ["203.0.113.9:7707"], "seq": 99, "ts": NOW},
    )
    with pytest.raises(PeerRecordError, match="signature does not verify"):
        parse_record(forged, now_ms=NOW)


def test_a_tampered_record_is_refused(alice: Identity) -> None:
    record = PeerRecord.create(alice, ADDRS[:1], seq=1, timestamp_ms=NOW)
    doc = wire.decode(record.data)
    assert isinstance(doc, dict)
    inner = doc["rec"]
    assert isinstance(inner, bytes)
    moved = inner.replace(b"192.0.2.7", b"192.0.2.8")
    assert moved != inner
    with pytest.raises(PeerRecordError, match="signature"):
        parse_record(wire.encode({"rec": moved, "sig": doc["sig"]}), now_ms=NOW)


@pytest.mark.parametrize(
    ("addrs", "why"),
    [
        (["example.org:7707"], "not IP:PORT"),
        (["192.0.2.7"], "not IP:PORT"),
        (["192.0.2.7:0"], "port must be"),
        (["0.0.0.0:7707"], "cannot be dialled"),
        (["224.0.0.251:5353"], "cannot be dialled"),
        (["[2001:DB8::7]:7707"], "canonical"),
        (["192.0.2.7:07707"], "canonical"),
        ([7707], "texts"),
        (["192.0.2.1:1"] * (MAX_RECORD_ADDRESSES + 1), "at most"),
        ("192.0.2.7:7707", "list"),
    ],
)
def test_bad_addresses_are_refused(alice: Identity, addrs: wire.Value, why: str) -> None:
    rec: dict[str, wire.Value] = {
        "id": alice.node_id.public_key,
        "addrs": addrs,
        "seq": 1,
        "ts": NOW,
    }
    with pytest.raises(PeerRecordError, match=why):
        parse_record(signed_by(alice, rec), now_ms=NOW)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "malformed"),
        (b"\xff" * 10, "malformed"),
        (wire.encode({"rec": b"x"}), "lacks"),
        (wire.encode({"rec": b"\xa0", "sig": bytes(64)}), "lacks"),
        (b"\x00" * 2000, "over 1024"),
    ],
)
def test_malformed_records_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(PeerRecordError, match=why):
        parse_record(data, now_ms=NOW)


def test_a_record_from_the_far_future_is_refused(alice: Identity) -> None:
    record = PeerRecord.create(alice, ADDRS, seq=1, timestamp_ms=NOW + 25 * 3600 * 1000)
    with pytest.raises(PeerRecordError, match="future"):
        parse_record(record.data, now_ms=NOW)


def test_loopback_addresses_only_count_between_nodes_on_one_host(alice: Identity) -> None:
    record = PeerRecord.create(alice, ADDRS, seq=1, timestamp_ms=NOW)
    assert usable_from(record, via_loopback=True) == ADDRS
    assert usable_from(record, via_loopback=False) == ADDRS[:2]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "node.db") as s:
        yield s


def keep(db: Store, record: PeerRecord, now_ms: int = NOW) -> bool:
    return db.accept_peer_record(record.node_id, record.seq, record.data, record.addresses, now_ms)


def test_only_a_newer_record_replaces_the_one_held(db: Store, alice: Identity) -> None:
    old = PeerRecord.create(alice, [("192.0.2.1", 1)], seq=5, timestamp_ms=NOW)
    new = PeerRecord.create(alice, [("192.0.2.2", 2)], seq=6, timestamp_ms=NOW)
    assert keep(db, old)
    db.note_peer_address(alice.node_id, "198.51.100.3", 3, AddressSource.MDNS, NOW)
    assert keep(db, new)
    # A stale record (a replay of the old one, or the same seq again) is refused.
    assert not keep(db, old)
    assert not keep(db, new)
    assert db.peer_records(10) == [new.data]
    # The newer record's addresses replaced the older record's; the mDNS hint stays.
    addrs = {(a.host, a.port, a.source) for a in db.addresses_for(alice.node_id)}
    assert addrs == {("192.0.2.2", 2, AddressSource.PEX), ("198.51.100.3", 3, AddressSource.MDNS)}


def test_records_to_pass_on_leave_out_whom_we_ask_about(
    db: Store, alice: Identity, bob: Identity
) -> None:
    for who in (alice, bob):
        assert keep(db, PeerRecord.create(who, ADDRS[:1], seq=1, timestamp_ms=NOW))
    db.peer_seen(bob.node_id, NOW + 1)
    assert db.peer_records(10) == [
        PeerRecord.create(bob, ADDRS[:1], seq=1, timestamp_ms=NOW).data,
        PeerRecord.create(alice, ADDRS[:1], seq=1, timestamp_ms=NOW).data,
    ]
    assert db.peer_records(10, exclude=[bob.node_id]) == [
        PeerRecord.create(alice, ADDRS[:1], seq=1, timestamp_ms=NOW).data
    ]
    assert len(db.peer_records(1)) == 1


def test_an_address_can_be_forgotten(db: Store, alice: Identity) -> None:
    db.note_peer_address(alice.node_id, "198.51.100.3", 3, AddressSource.MDNS, NOW)
    assert db.forget_peer_address(alice.node_id, "198.51.100.3", 3)
    assert not db.forget_peer_address(alice.node_id, "198.51.100.3", 3)
    assert db.addresses_for(alice.node_id) == []


def test_records_received_since_a_peers_last_visit_can_be_chosen(
    db: Store, alice: Identity, bob: Identity
) -> None:
    assert db.peer_seen(bob.node_id, NOW) is None  # never talked to before
    assert keep(db, PeerRecord.create(alice, ADDRS[:1], seq=1, timestamp_ms=NOW), NOW + 5)
    assert db.peer_seen(bob.node_id, NOW + 10) == NOW
    rows = db.peer_record_rows(10, received_after=NOW)
    assert [(node_id, seq) for node_id, seq, _ in rows] == [(alice.node_id, 1)]
    assert db.peer_record_rows(10, received_after=NOW + 5) == []
    assert db.peer_record_count() == 1


async def test_a_node_keeps_its_record_while_its_addresses_stay_the_same(
    tmp_path: Path, alice: Identity
) -> None:
    from p2pdm.node import Node, NodeConfig

    def node(port: int) -> Node:
        config = NodeConfig(home=tmp_path, listen=(("127.0.0.1", port),), mdns=False)
        return Node(config, alice, Store.open(tmp_path / "store.db"))

    async def record_of(n: Node) -> PeerRecord:
        async with trio.open_nursery() as nursery:
            await nursery.start(n.run)
            nursery.cancel_scope.cancel()
        n.store.close()
        assert n.record is not None
        return n.record

    first = await record_of(node(0))
    port = first.addresses[0][1]
    # Same address after a restart: the same signed record, nothing new to gossip.
    assert (await record_of(node(port))).data == first.data
    # A new address: a new record with a higher sequence number.
    with socket.socket() as elsewhere:  # a free port that is not the first one
        elsewhere.bind(("127.0.0.1", 0))
        other_port = elsewhere.getsockname()[1]
    moved = await record_of(node(other_port))
    assert moved.seq > first.seq
    assert moved.addresses != first.addresses


def test_a_node_verifies_each_record_once_however_often_peers_pass_it_on(
    tmp_path: Path, alice: Identity, bob: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2pdm import peerrecord

    node = make_node(tmp_path, "n")
    record = PeerRecord.create(alice, ADDRS[:1], seq=1, timestamp_ms=node.now_ms())
    parsed: list[bytes] = []
    real_parse = peerrecord.parse_record

    def counting_parse(data: bytes, *, now_ms: int) -> PeerRecord:
        parsed.append(data)
        return real_parse(data, now_ms=now_ms)

    monkeypatch.setattr("p2pdm.node.parse_record", counting_parse)
    assert node._keep_records((record.data,), True) == ([alice.node_id], [(alice.node_id, 1)])
    # The same bytes from four more peers: known valid, nothing new, no re-check.
    for _ in range(4):
        assert node._keep_records((record.data,), True) == ([], [(alice.node_id, 1)])
    assert parsed == [record.data]
    assert node.records_remembered == 4
    # Other bytes are checked: a forgery is refused, a newer record kept.
    forged = signed_by(bob, {"id": alice.node_id.public_key, "addrs": [], "seq": 9, "ts": NOW})
    assert node._keep_records((forged,), True) == ([], [])
    newer = PeerRecord.create(alice, ADDRS[:2], seq=2, timestamp_ms=node.now_ms())
    assert node._keep_records((newer.data,), True) == ([alice.node_id], [(alice.node_id, 2)])
    assert len(parsed) == 3
    node.store.close()


class FakeLink:
    """What Node.take_records uses of a PeerLink."""

    def __init__(self, peer: NodeId, asked_for_records: bool = False) -> None:
        self.peer, self.asked_for_records = peer, asked_for_records
        self.via_loopback = True
        self.peer_has: dict[NodeId, int] = {}
        self.peer_wants_records = False
        self.news = 0

    def pex_news(self) -> None:
        self.news += 1


@pytest.mark.parametrize(("relay", "told"), [(True, 6), (False, 0)])
async def test_news_of_a_record_goes_to_a_few_links_and_only_from_relays(
    tmp_path: Path, alice: Identity, relay: bool, told: int
) -> None:
    from p2pdm.node import PEX_NEWS_FANOUT

    assert told in (0, PEX_NEWS_FANOUT)
    node = make_node(tmp_path, "n", relay=relay)
    links = [FakeLink(Identity.generate().node_id) for _ in range(20)]
    node.links = {link.peer: link for link in links}  # type: ignore[misc]
    source = cast("PeerLink", links[0])
    record = PeerRecord.create(alice, ADDRS[:1], seq=1, timestamp_ms=node.now_ms())
    await node.take_records(source, (record.data,))
    assert links[0].news == 0  # not back to where it came from
    assert sum(link.news for link in links) == told
    assert source.peer_has == {alice.node_id: 1}
    node.store.close()


async def test_a_relay_off_node_tells_news_only_to_peers_that_asked(
    tmp_path: Path, alice: Identity
) -> None:
    node = make_node(tmp_path, "n", relay=False)
    links = [FakeLink(Identity.generate().node_id) for _ in range(5)]
    links[3].peer_wants_records = True
    node.links = {link.peer: link for link in links}  # type: ignore[misc]
    record = PeerRecord.create(alice, ADDRS[:1], seq=1, timestamp_ms=node.now_ms())
    await node.take_records(cast("PeerLink", links[0]), (record.data,))
    assert [link.news for link in links] == [0, 0, 0, 1, 0]
    node.store.close()


async def test_a_node_asks_for_records_until_a_peer_answered_with_others(
    tmp_path: Path, alice: Identity, bob: Identity
) -> None:
    node = make_node(tmp_path, "n")

    def record(who: Identity) -> bytes:
        return PeerRecord.create(who, ADDRS[:1], seq=1, timestamp_ms=node.now_ms()).data

    assert node.wants_records()
    # Its own record only (the peer knows no one else): still asking.
    await node.take_records(cast("PeerLink", FakeLink(alice.node_id, True)), (record(alice),))
    assert node.wants_records()
    # Others' records, but not as an answer to our asking: still asking.
    await node.take_records(cast("PeerLink", FakeLink(alice.node_id, False)), (record(bob),))
    assert node.wants_records()
    # An answer with someone else's record: the mesh's set has come, stop asking
    # (in a mesh of under 32 nodes every link would send it again).
    await node.take_records(cast("PeerLink", FakeLink(bob.node_id, True)), (record(alice),))
    assert not node.wants_records()
    assert node.records_known == 2
    node.store.close()
