"""Real `p2pdm run` nodes on hosts made of network namespaces: discovery end to end.

Each host is its own network stack on one bridge (tests/netns.py), so mDNS
multicast, peer exchange and link cuts happen as on a LAN. Needs root and
iproute2; skips with the reason otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netns import LineReader, NetnsLab, netns_available
from tests.nodeproc import DEADLINE, NodeProcess, cli, init_home, json_lines

PORT = 7707
PROBE = str(Path(__file__).with_name("mdns_probe.py"))
# Short keepalive so a cut link is noticed in seconds, not minutes.
FAST_DEAD_PEER = ("--limit", "keepalive_interval=0.5", "--limit", "idle_timeout=2")

Peers = list[dict[str, Any]]


@pytest.fixture
def lab_factory() -> type[NetnsLab]:
    """NetnsLab, or a skip saying why namespaces cannot be made here."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    return NetnsLab


class Host:
    """One lab host running a node; `p2pdm` commands run against its home."""

    def __init__(self, lab: NetnsLab, index: int, home: Path, *extra: str, mdns: bool = True):
        self.lab = lab
        self.index = index
        self.home = home
        self.id = init_home(home)
        self.node = NodeProcess(
            home, *extra, prefix=lab.prefix(index), listen=f"0.0.0.0:{PORT}", mdns=mdns
        )

    @property
    def address(self) -> str:
        return f"{self.lab.host(self.index).address}:{PORT}"

    def start(self) -> Host:
        self.node.start()
        return self

    def peers(self) -> Peers:
        result = cli(self.home, "peers", "--json")
        assert result.returncode == 0, result.stderr
        peers: Peers = json_lines(result.stdout)
        return peers

    def entry(self, peers: Peers, other: Host) -> dict[str, Any] | None:
        return next((p for p in peers if p["id"] == other.id), None)

    def wait_connected(self, others: list[Host], source: str | None = None) -> Peers:
        def ok(peers: Peers) -> bool:
            for other in others:
                entry = self.entry(peers, other)
                if entry is None or not entry["connected"]:
                    return False
                if source is not None and source not in entry["source"].split(","):
                    return False
            return True

        return self.node.wait_peers(ok)

    def wait_disconnected(self, other: Host, timeout: float = DEADLINE) -> None:
        def ok(peers: Peers) -> bool:
            entry = self.entry(peers, other)
            return entry is not None and not entry["connected"]

        self.node.wait_peers(ok, timeout)

    def send(self, to: Host, text: str, *wait: str) -> int:
        result = cli(self.home, "send", to.id, text, *wait)
        assert result.returncode in (0, 3), result.stderr
        return result.returncode

    def inbox(self) -> list[dict[str, Any]]:
        result = cli(self.home, "inbox", "--json")
        assert result.returncode == 0, result.stderr
        return json_lines(result.stdout)

    def close(self) -> None:
        self.node.close()


def wait_for(host: Host, what: str) -> str:
    return host.node.wait_for_line(what)


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
