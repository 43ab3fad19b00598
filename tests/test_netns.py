"""The namespace lab itself: hosts reach each other over TCP, a cut cuts, close cleans.

Needs root and iproute2; skipped with the reason elsewhere. Waits are on
lines a child prints, or on a TCP connect with its own timeout, all bounded.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.netns import (
    PREFIX,
    LineReader,
    NetnsLab,
    cleanup_stale,
    list_namespaces,
    netns_available,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

ECHO_PORT = 7070
# A connect to a cut host gets no answer at all; this bounds each attempt.
CONNECT_TIMEOUT = 1.0
DEADLINE = 15.0

ECHO_SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {ECHO_PORT}))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    with c:
        c.settimeout(5)
        c.sendall(c.recv(64))
"""

CLIENT = """
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as c:
        c.settimeout(timeout)
        c.sendall(b"hello")
        reply = c.recv(64)
except OSError as exc:
    print(f"failed: {exc!r}")
    sys.exit(1)
print(reply.decode())
"""


def skip_unless_netns() -> None:
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    skip_unless_netns()
    with NetnsLab(3) as lab:
        yield lab


def echo(lab: NetnsLab, src: int, dst: int) -> subprocess.CompletedProcess[str]:
    """One TCP round trip from host src to host dst's echo server."""
    argv = [sys.executable, "-c", CLIENT, lab.host(dst).address, str(ECHO_PORT)]
    return lab.run(src, [*argv, str(CONNECT_TIMEOUT)], timeout=CONNECT_TIMEOUT + 10, check=False)


def wait_reachable(lab: NetnsLab, src: int, dst: int, timeout: float = DEADLINE) -> None:
    # Each attempt takes a process start plus at most CONNECT_TIMEOUT: a poll
    # bounded by the deadline, with no sleep.
    deadline = time.monotonic() + timeout
    while (result := echo(lab, src, dst)).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"host {dst} never answered host {src}: {result.stdout}")
    assert result.stdout.strip() == "hello"


def start_echo_server(lab: NetnsLab, i: int) -> None:
    proc = lab.popen(i, [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    LineReader(proc.stdout).wait_for(lambda line: line == "ready", DEADLINE)


def root_links() -> set[str]:
    out = subprocess.run(
        ["ip", "-j", "addr", "show"], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    return {
        f"{link['ifname']} {a['local']}" for link in json.loads(out) for a in link["addr_info"]
    } | {link["ifname"] for link in json.loads(out)}


def test_hosts_talk_over_the_switch_and_a_cut_cuts_one_host(lab: NetnsLab) -> None:
    names = {h.name for h in lab.hosts} | {lab.switch}
    assert names <= set(list_namespaces())
    assert len({h.address for h in lab.hosts}) == 3
    assert all(h.name.startswith(f"{PREFIX}-") for h in lab.hosts)

    start_echo_server(lab, 1)
    start_echo_server(lab, 2)
    wait_reachable(lab, 0, 1)
    wait_reachable(lab, 0, 2)

    lab.cut(1)
    failed = echo(lab, 0, 1)
    assert failed.returncode == 1, failed.stdout
    assert "failed" in failed.stdout
    wait_reachable(lab, 0, 2)  # only host 1's cable was pulled

    lab.heal(1)
    wait_reachable(lab, 0, 1)


def test_nothing_is_made_in_the_root_namespace() -> None:
    skip_unless_netns()
    before = root_links()
    with NetnsLab(2) as lab:
        assert root_links() == before
        assert not any(lab.host(0).address in link for link in before)


def test_close_kills_what_it_started_and_deletes_every_namespace() -> None:
    skip_unless_netns()
    lab = NetnsLab(3)
    names = {h.name for h in lab.hosts} | {lab.switch}
    proc = lab.popen(1, [sys.executable, "-c", "import time; time.sleep(3600)"])
    lab.close()
    assert proc.returncode is not None
    assert names.isdisjoint(list_namespaces())
    lab.close()  # idempotent


def test_close_runs_when_the_body_raises() -> None:
    skip_unless_netns()
    names: set[str] = set()

    def fail_inside_a_lab() -> None:
        with NetnsLab(1) as lab:
            names.update({lab.host(0).name, lab.switch})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside_a_lab()
    assert names
    assert names.isdisjoint(list_namespaces())


def test_cleanup_stale_deletes_only_namespaces_of_dead_creators() -> None:
    skip_unless_netns()
    # A PID that existed and is gone (reuse within this test is vanishingly unlikely).
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    stale = f"{PREFIX}-{dead.pid}-{secrets.token_hex(3)}-h0"
    subprocess.run(["ip", "netns", "add", stale], check=True, capture_output=True, timeout=10)
    try:
        with NetnsLab(1) as lab:
            removed = cleanup_stale()
            # (Another test run's cleanup_stale may have been the one to delete it.)
            assert stale not in list_namespaces()
            assert lab.host(0).name not in removed
            assert lab.host(0).name in list_namespaces()  # our PID is alive: kept
    finally:
        if stale in list_namespaces():
            subprocess.run(["ip", "netns", "del", stale], check=False, timeout=10)
