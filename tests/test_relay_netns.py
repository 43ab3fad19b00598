"""Store-and-forward between real `p2pdm run` nodes on namespace hosts.

Messages reach recipients that are never online at the same time as their
sender, carried by relays; delivery notices and receipts find their way
back. Needs root and iproute2; skips with the reason otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pdm.store import Store
from tests.labnodes import FAST_DEAD_PEER, Host

if TYPE_CHECKING:
    from pathlib import Path

    from tests.netns import NetnsLab


def outbox_entry(host: Host, message_id: str) -> dict[str, Any]:
    return next(m for m in host.outbox() if m["id"] == message_id)


def assert_no_plaintext(host: Host, *texts: str) -> None:
    """No file in the node's home holds any of `texts` (database, WAL, logs, anything)."""
    for path in host.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for text in texts:
                assert text.encode() not in data, f"{text!r} in {path}"


def test_a_relay_carries_mail_between_peers_never_online_together(
    lab_factory: type[NetnsLab], tmp_path: Path
) -> None:
    text = "a secret for b, carried by r"
    with lab_factory(3) as lab:
        a, r, b = (Host(lab, i, tmp_path / n, *FAST_DEAD_PEER) for i, n in enumerate("arb"))
        try:
            # r and b meet first, so r knows where b lives; then b's link goes down.
            r.start()
            b.start()
            r.wait_connected([b], source="mdns")
            lab.cut(2)
            r.wait_disconnected(b)

            # a meets only r. b is away: the wait runs out (exit 3), and a
            # has handed the message to r.
            a.start()
            a.wait_connected([r])
            assert a.send(b, text, "--wait", "2") == 3
            [sent] = [m for m in a.outbox() if m["text"] == text]
            a.node.wait_until(lambda: outbox_entry(a, sent["id"])["relayed_to"] == 1)
            assert outbox_entry(a, sent["id"])["state"] == "relayed"
            assert a.node.stop() == 0

            # b's link comes back: r pushes the message to b.
            lab.heal(2)
            b.node.wait_until(lambda: any(m["text"] == text for m in b.inbox()))
            # r dropped its copy, and holds b's receipt for a.
            r.node.wait_until(lambda: r.node.status()["relay_stored"] == 1)

            # a returns, with b away again: the receipt reaches a through r.
            lab.cut(2)
            r.wait_disconnected(b)
            a.start()
            a.node.wait_until(lambda: outbox_entry(a, sent["id"])["state"] == "delivered")
            r.node.wait_until(lambda: r.node.status()["relay_stored"] == 0)
            # The relay never held a readable word of it.
            assert_no_plaintext(r, text)
        finally:
            for host in (a, r, b):
                host.close()


def test_mail_crosses_a_chain_of_relays_and_the_notice_comes_back(
    lab_factory: type[NetnsLab], tmp_path: Path
) -> None:
    """A meets only R1, R1 then only R2, R2 then only B; then back the same way."""
    text = "over two relays"
    with lab_factory(4) as lab:
        a, r1, r2, b = (
            Host(lab, i, tmp_path / n, *FAST_DEAD_PEER)
            for i, n in enumerate(("a", "r1", "r2", "b"))
        )
        try:
            # A meets R1 only (R2 and B are not up yet).
            a.start()
            r1.start()
            a.wait_connected([r1])
            assert a.send(b, text, "--wait", "1") == 3
            [sent] = a.outbox()
            a.node.wait_until(lambda: outbox_entry(a, sent["id"])["relayed_to"] == 1)

            # R1 meets R2 only (A cut off): reconciliation gives R2 the message.
            lab.cut(0)
            r1.wait_disconnected(a)
            r2.start()
            r2.node.wait_until(lambda: stored(r2) == 1)

            # R2 meets B only (R1 cut off): B gets it, R2 drops its copy on B's
            # notice and holds B's receipt for A.
            lab.cut(1)
            r2.wait_disconnected(r1)
            b.start()
            b.node.wait_until(lambda: any(m["text"] == text for m in b.inbox()))
            r2.node.wait_until(lambda: notices(r2) >= 1 and stored(r2) == 1)

            # Back the same way. R2 meets R1 (B cut off): R1 learns from B's
            # notice that its copy is delivered and drops it, and takes the receipt...
            lab.cut(3)
            r2.wait_disconnected(b)
            lab.heal(1)
            r1.node.wait_until(lambda: notices(r1) >= 1 and stored(r1) == 1)
            # ...which reaches A when R1 meets A (R2 cut off).
            lab.cut(2)
            lab.heal(0)
            a.node.wait_until(lambda: outbox_entry(a, sent["id"])["state"] == "delivered")
            r1.node.wait_until(lambda: stored(r1) == 0)
            for relay in (r1, r2):
                assert relay.node.stop() == 0
                with Store.open(relay.home / "store.db") as store:
                    assert store.is_delivered(bytes.fromhex(sent["id"]))
                    assert bytes.fromhex(sent["id"]) not in store.relay_ids(0)
                assert_no_plaintext(relay, text)
        finally:
            for host in (a, r1, r2, b):
                host.close()


def stored(host: Host) -> int:
    return int(host.node.status()["relay_stored"])


def notices(host: Host) -> int:
    return int(host.node.status()["since_start"]["notices_taken"])
