"""Store-and-forward between real `p2pdm run` nodes on namespace hosts.

Messages reach recipients that are never online at the same time as their
sender, carried by relays; delivery notices and receipts find their way
back. Needs root and iproute2; skips with the reason otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
