"""Real `p2pdm run` nodes on hosts of a network-namespace lab, for multi-host tests.

Tests get the lab through the `lab_factory` fixture (tests/conftest.py),
which skips with the reason when namespaces cannot be made here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.nodeproc import DEADLINE, NodeProcess, cli, init_home, json_lines

if TYPE_CHECKING:
    from tests.netns import NetnsLab

PORT = 7707
PROBE = str(Path(__file__).with_name("mdns_probe.py"))
# Short keepalive so a cut link is noticed in seconds, not minutes.
FAST_DEAD_PEER = ("--limit", "keepalive_interval=0.5", "--limit", "idle_timeout=2")

Peers = list[dict[str, Any]]


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

    def outbox(self) -> list[dict[str, Any]]:
        result = cli(self.home, "outbox", "--json")
        assert result.returncode == 0, result.stderr
        return json_lines(result.stdout)

    def close(self) -> None:
        self.node.close()


def wait_for(host: Host, what: str) -> str:
    return host.node.wait_for_line(what)
