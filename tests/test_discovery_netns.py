"""Real `p2pdm run` nodes on hosts made of network namespaces: discovery end to end.

Each host is its own network stack on one bridge (tests/netns.py), so mDNS
multicast, peer exchange and link cuts happen as on a LAN. Needs root and
iproute2; skips with the reason otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from tests.labnodes import FAST_DEAD_PEER, PORT, PROBE, Host, wait_for
from tests.netns import LineReader, NetnsLab
from tests.nodeproc import DEADLINE, cli

if TYPE_CHECKING:
    from pathlib import Path


def test_three_hosts_find_each_other_and_a_fourth_learns_them_by_exchange(
    lab_factory: type[NetnsLab], tmp_path: Path
) -> None:
    with lab_factory(4) as lab:
        a, b, c = (Host(lab, i, tmp_path / n) for i, n in enumerate("abc"))
        d = Host(lab, 3, tmp_path / "d", "--bootstrap", b.address, mdns=False)
        hosts = [a, b, c, d]
        try:
            for host in (a, b, c):
                host.start()
            # No flags at all: each finds the other two by mDNS and connects.
            for host in (a, b, c):
                others = [o for o in (a, b, c) if o is not host]
                peers = host.wait_connected(others, source="mdns")
                for other in others:
                    entry = host.entry(peers, other)
                    assert entry is not None
                    assert other.address in entry["addresses"]
            assert a.send(c, "hello C, from A", "--wait", "30") == 0
            assert [m["text"] for m in c.inbox()] == ["hello C, from A"]

            # D: no mDNS, one bootstrap address. It learns A and C from B.
            d.start()
            peers = d.node.wait_peers(
                lambda ps: all(
                    (e := d.entry(ps, o)) is not None and o.address in e["addresses"]
                    for o in (a, c)
                )
            )
            for other in (a, c):
                entry = d.entry(peers, other)
                assert entry is not None
                assert "pex" in entry["source"].split(","), entry
            assert d.send(a, "hello A, from D", "--wait", "30") == 0
            assert d.send(c, "hello C, from D", "--wait", "30") == 0
            assert "hello A, from D" in [m["text"] for m in a.inbox()]
            assert "hello C, from D" in [m["text"] for m in c.inbox()]
            # A and C never heard D by mDNS: they learned of it only by its dial.
            assert d.node.status()["discovery"]["mdns_running"] is False
        finally:
            for host in hosts:
                host.close()


def test_a_stopped_node_leaves_and_a_cut_link_is_noticed_and_restored(
    lab_factory: type[NetnsLab], tmp_path: Path
) -> None:
    with lab_factory(3) as lab:
        a, b, c = (Host(lab, i, tmp_path / n, *FAST_DEAD_PEER) for i, n in enumerate("abc"))
        try:
            for host in (a, b, c):
                host.start()
            a.wait_connected([b, c], source="mdns")
            b.wait_connected([a, c])

            # A graceful stop says goodbye: the others see it go at once,
            # well before the idle timeout (2 s) would have.
            assert c.node.stop() == 0
            a.wait_disconnected(c, timeout=10)
            b.wait_disconnected(c, timeout=10)

            # Unplug B: no goodbye, so A must find B dead by its silence.
            lab.cut(1)
            a.wait_disconnected(b, timeout=30)
            lab.heal(1)
            a.wait_connected([b])
            assert a.send(b, "after the cut", "--wait", "30") == 0
        finally:
            for host in (a, b, c):
                host.close()


def test_a_forged_mdns_claim_never_gets_mail_nor_removes_the_real_address(
    lab_factory: type[NetnsLab], tmp_path: Path
) -> None:
    with lab_factory(3) as lab:
        a = Host(lab, 0, tmp_path / "a")
        b = Host(lab, 1, tmp_path / "b")
        # The forger runs a node of its own at the forged address (so a dial
        # there completes a handshake, with the wrong key) and announces A's
        # id with its own address, over A's record, without probing.
        f = Host(lab, 2, tmp_path / "f", mdns=False)
        forger = None
        try:
            for host in (a, b, f):
                host.start()
            b.wait_connected([a], source="mdns")
            argv = [sys.executable, PROBE, "--raw", "--no-probe", "--address", lab.host(2).address]
            argv += ["--instance", a.id, "--port", str(PORT), "--txt", f"id={a.id}", "--txt", "v=1"]
            forger = lab.popen(2, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert forger.stdout is not None
            LineReader(forger.stdout).wait_for(lambda line: '"registered"' in line, DEADLINE)
            # B takes the claim as one more address to try for A, no more.
            b.node.wait_peers(
                lambda ps: (e := b.entry(ps, a)) is not None and f.address in e["addresses"]
            )
            assert a.address in (b.entry(b.peers(), a) or {})["addresses"]

            # With A away, B has mail for A and dials every address it holds.
            assert a.node.stop() == 0
            b.wait_disconnected(a)
            assert b.send(a, "for A only") == 0
            wait_for(b, f"dropping address {lab.host(2).address}")
            b.node.wait_peers(
                lambda ps: (e := b.entry(ps, a)) is not None and f.address not in e["addresses"]
            )
            entry = b.entry(b.peers(), a)
            assert entry is not None
            assert a.address in entry["addresses"]

            # A comes back at its real address and gets the message; the
            # forger's node got nothing.
            a.start()
            b.wait_connected([a])
            assert cli(b.home, "send", a.id, "second", "--wait", "30").returncode == 0
            texts = [m["text"] for m in a.inbox()]
            assert "for A only" in texts
            assert "second" in texts
            assert f.inbox() == []
        finally:
            if forger is not None:
                forger.kill()
            for host in (a, b, f):
                host.close()
