"""The dial policy, driven with explicit times (no sockets, no clock)."""

from __future__ import annotations

from p2pdm.identity import Identity, NodeId
from p2pdm.peertable import PeerTable


def ids(n: int) -> list[NodeId]:
    return [Identity.generate().node_id for _ in range(n)]


def test_mail_first_then_contacts_then_recent_discoveries() -> None:
    mail, contact, found = ids(3)
    table = PeerTable(max_dialling=2)
    table.discovered(found, 0.0)
    assert table.plan(0.0, connected=(), mail=[mail], contacts=[contact]) == [mail, contact]
    # Both still dialling: nothing more until a slot frees.
    assert table.plan(0.0, connected=(), mail=[mail], contacts=[contact]) == []
    table.dial_done(mail, ok=True, now=0.1, jitter=0.0)
    assert table.plan(0.1, connected=[mail], mail=[mail], contacts=[contact]) == [found]


def test_connected_peers_are_not_dialled() -> None:
    (peer,) = ids(1)
    table = PeerTable()
    table.discovered(peer, 0.0)
    assert table.plan(0.0, connected=[peer], mail=[peer], contacts=[peer]) == []


def test_only_the_most_recent_discoveries_are_wanted() -> None:
    found = ids(5)
    table = PeerTable(max_discovered=2, max_dialling=10, burst=10)
    for i, peer in enumerate(found):
        table.discovered(peer, float(i))
    assert table.plan(10.0, connected=(), mail=(), contacts=()) == [found[4], found[3]]


def test_failures_back_off_and_success_resets() -> None:
    (peer,) = ids(1)
    table = PeerTable(backoff_base=1.0, backoff_cap=8.0)
    delays = []
    now = 0.0
    for _ in range(6):
        assert table.plan(now, connected=(), mail=[peer], contacts=()) == [peer]
        table.dial_done(peer, ok=False, now=now, jitter=0.0)
        wake = table.next_wake(now)
        assert wake is not None
        assert table.plan(wake - 0.01, connected=(), mail=[peer], contacts=()) == []
        delays.append(wake - now)
        now = wake
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert table.plan(now, connected=(), mail=[peer], contacts=()) == [peer]
    table.dial_done(peer, ok=True, now=now, jitter=0.0)
    assert table.next_wake(now) is None


def test_a_flood_of_fake_discoveries_costs_bounded_dials() -> None:
    table = PeerTable(max_discovered=1000, max_dialling=1000, rate=1.0, burst=8.0)
    now = 0.0
    dialled = 0
    # 100 fake announcements, each a new id, spread over 10 s; every dial fails.
    for i, fake in enumerate(ids(100)):
        now = i * 0.1
        table.discovered(fake, now)
        for peer in table.plan(now, connected=(), mail=(), contacts=()):
            dialled += 1
            table.dial_done(peer, ok=False, now=now, jitter=0.0)
    # burst + rate x elapsed, not 100.
    assert dialled <= 8 + 1.0 * now + 1
    assert table.discovery_dials == dialled
    wake = table.next_wake(now)
    assert wake is not None
    assert wake > now


def test_mail_and_contacts_do_not_spend_discovery_tokens() -> None:
    peers = ids(20)
    table = PeerTable(max_dialling=100, rate=1.0, burst=1.0)
    assert len(table.plan(0.0, connected=(), mail=peers[:10], contacts=peers[10:])) == 20
    assert table.discovery_dials == 0
