"""Two real `p2pdm run` processes on 127.0.0.1 exchange messages through the CLI."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from .nodeproc import DEADLINE, NodeProcess, cli, init_home, json_lines

if TYPE_CHECKING:
    from pathlib import Path


def test_messages_both_ways_with_receipts(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str],
) -> None:
    a, b, a_id, b_id = two_nodes
    sent = cli(b.home, "send", a_id, "hello alice", "--wait", "30")
    assert sent.returncode == 0, sent.stderr
    (b_to_a,) = sent.stdout.split()
    sent = cli(a.home, "send", b_id[:12], "hi bob", "--wait", "30")
    assert sent.returncode == 0, sent.stderr
    (a_to_b,) = sent.stdout.split()

    a_inbox = json_lines(cli(a.home, "inbox", "--json").stdout)
    assert [(m["id"], m["from"], m["to"], m["text"]) for m in a_inbox] == [
        (b_to_a, b_id, a_id, "hello alice")
    ]
    assert isinstance(a_inbox[0]["ts"], float)
    b_inbox = json_lines(cli(b.home, "inbox", "--json").stdout)
    assert [(m["id"], m["from"], m["text"]) for m in b_inbox] == [(a_to_b, a_id, "hi bob")]

    a_out = json_lines(cli(a.home, "outbox", "--json").stdout)
    b_out = json_lines(cli(b.home, "outbox", "--json").stdout)
    assert [(m["id"], m["state"], m["to"], m["text"]) for m in a_out] == [
        (a_to_b, "delivered", b_id, "hi bob")
    ]
    assert [(m["id"], m["state"]) for m in b_out] == [(b_to_a, "delivered")]

    status = json_lines(cli(a.home, "status", "--json").stdout)[0]
    assert status["id"] == a_id
    assert status["connected"] == 1
    assert status["outbox_pending"] == 0
    assert status["relay_stored"] == 0
    peers = json_lines(cli(b.home, "peers", "--json").stdout)
    assert [(p["id"], p["connected"], p["addresses"]) for p in peers] == [(a_id, True, [a.address])]
    assert "bootstrap" in peers[0]["source"]


def test_send_by_contact_name_and_bad_input(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str],
) -> None:
    a, _b, _a_id, b_id = two_nodes
    assert cli(a.home, "contacts", "add", b_id, "--name", "bob").returncode == 0
    sent = cli(a.home, "send", "bob", "by name", "--wait", "30")
    assert sent.returncode == 0, sent.stderr

    empty = cli(a.home, "send", "bob", "")
    assert empty.returncode == 2
    assert "empty" in empty.stderr
    unknown = cli(a.home, "send", "nobody", "x")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("p2pdm: ")
    typo = cli(a.home, "send", b_id[:-1] + ("a" if b_id[-1] != "a" else "b"), "x")
    assert typo.returncode == 2
    # A name with "/" and "?" still names one contact.
    assert cli(a.home, "contacts", "add", b_id, "--name", "b/o?b").returncode == 0
    assert cli(a.home, "contacts", "block", "b/o?b").returncode == 0
    assert cli(a.home, "contacts", "unblock", "b/o?b").returncode == 0
    listed = json_lines(cli(a.home, "contacts", "list", "--json").stdout)
    assert [(c["name"], c["blocked"]) for c in listed] == [("b/o?b", False)]
    for wait in ("nan", "inf", "-1", "0", "soon"):
        bad_wait = cli(a.home, "send", "bob", "x", "--wait", wait)
        assert bad_wait.returncode == 2
        assert "seconds" in bad_wait.stderr
    # Nothing of the refused sends was queued.
    assert len(json_lines(cli(a.home, "outbox", "--json").stdout)) == 1


def test_send_stdin_waits_for_thousands_of_receipts(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str],
) -> None:
    # More ids than fit one URL, and more events than a subscriber may fall
    # behind by while the texts are posted.
    a, b, _a_id, b_id = two_nodes
    lines = "".join(f"line {i}\n" for i in range(3000))
    sent = cli(a.home, "send", b_id, "--stdin", "--wait", "120", stdin=lines, timeout=180)
    assert sent.returncode == 0, sent.stderr
    assert len(sent.stdout.split()) == 3000
    assert b.status()["since_start"]["received"] >= 3000


def test_blocked_peer_is_never_shown(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str],
) -> None:
    a, b, a_id, b_id = two_nodes
    assert cli(a.home, "contacts", "block", b_id).returncode == 0
    sent = cli(b.home, "send", a_id, "spam", "--wait", "2")
    # A drops it silently: no receipt ever comes, so the sender times out.
    assert sent.returncode == 3
    assert json_lines(cli(a.home, "inbox", "--json").stdout) == []


def test_wait_times_out_with_exit_3_and_keeps_the_message(tmp_path: Path) -> None:
    init_home(tmp_path / "a")
    lonely = NodeProcess(tmp_path / "a").start()
    try:
        other = init_home(tmp_path / "b")
        sent = cli(lonely.home, "send", other, "anyone there?", "--wait", "0.5")
        assert sent.returncode == 3
        assert "stay queued" in sent.stderr
        out = json_lines(cli(lonely.home, "outbox", "--json").stdout)
        assert [m["state"] for m in out] == ["queued"]
    finally:
        lonely.close()


def test_commands_without_a_node_say_so(tmp_path: Path) -> None:
    init_home(tmp_path / "a")
    for args in (["status"], ["inbox"], ["outbox"], ["peers"], ["send", "x", "y"]):
        result = cli(tmp_path / "a", *args)
        assert result.returncode == 1, args
        assert "no node is running" in result.stderr


def loaded(*modules: str) -> set[str]:
    """Of trio, http.client and p2pdm.node: those a fresh interpreter loads with `modules`."""
    code = (
        f"import sys, {', '.join(modules)}; "
        "print(*(m for m in ('trio', 'http.client', 'p2pdm.node') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=DEADLINE
    ).stdout
    return set(out.split())


def test_start_up_loads_only_what_the_command_needs() -> None:
    # Start-up time: the commands that talk to a node need neither trio nor
    # the node, and `run` does not need the API client's http.client.
    assert loaded("p2pdm.cli") == set()
    assert loaded("p2pdm.cli", "p2pdm.daemon") == {"trio", "p2pdm.node"}


def test_sigterm_stops_within_five_seconds(tmp_path: Path) -> None:
    init_home(tmp_path / "a")
    node = NodeProcess(tmp_path / "a").start()
    try:
        assert node.stop(timeout=5) == 0
        assert not (tmp_path / "a" / "api.sock").exists()
    finally:
        node.close()


def test_second_node_on_the_same_home_is_refused(tmp_path: Path) -> None:
    init_home(tmp_path / "a")
    first = NodeProcess(tmp_path / "a").start()
    try:
        second = cli(tmp_path / "a", "run", "--listen", "127.0.0.1:0", "--no-mdns")
        assert second.returncode == 1
        assert "another node is already running" in second.stderr
        assert first.status()["connected"] == 0  # the first is unharmed
    finally:
        first.close()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    init_home(tmp_path / "a")
    init_home(tmp_path / "b")
    first = NodeProcess(tmp_path / "a").start()
    try:
        second = cli(tmp_path / "b", "run", "--listen", first.address, "--no-mdns")
        assert second.returncode == 1
        # The address and the reason, not "Exceptions from Trio nursery".
        assert f"cannot listen on {first.address}: Address already in use" in second.stderr
        assert "nursery" not in second.stderr
    finally:
        first.close()


def test_running_out_of_file_descriptors_does_not_stop_the_node(tmp_path: Path) -> None:
    a_id = init_home(tmp_path / "a")
    init_home(tmp_path / "b")
    # Few descriptors: a burst of connections makes accept() fail with EMFILE.
    a = NodeProcess(tmp_path / "a", prefix=("prlimit", "--nofile=32")).start()
    b = None
    sockets = []
    try:
        host, port = a.address.rsplit(":", 1)
        for _ in range(100):
            sockets.append(socket.create_connection((host, int(port)), timeout=DEADLINE))
        a.wait_for_line("accept failed (Too many open files)")
        for sock in sockets:
            sock.close()
        sockets.clear()
        # Still serving: a real peer connects and a message arrives.
        b = NodeProcess(tmp_path / "b", "--bootstrap", a.address).start()
        assert cli(tmp_path / "b", "send", a_id, "after the storm", "--wait", "30").returncode == 0
        assert a.proc is not None
        assert a.proc.poll() is None
    finally:
        for sock in sockets:
            sock.close()
        a.close()
        if b is not None:
            b.close()


def test_run_refuses_bad_options_with_exit_2(tmp_path: Path) -> None:
    init_home(tmp_path / "a")
    for args, why in (
        (["--limit", "bogus=1"], "unknown limit"),
        (["--limit", "idle_timeout"], "NAME=VALUE"),
        (["--listen", "127.0.0.1:99999"], "port must be"),
    ):
        result = cli(tmp_path / "a", "run", "--no-mdns", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert why in result.stderr
    (tmp_path / "a" / "config.toml").write_text("listen = 5\n")
    result = cli(tmp_path / "a", "run", "--no-mdns")
    assert result.returncode == 2
    assert "listen must be a list" in result.stderr
    (tmp_path / "a" / "config.toml").write_text("ttl_days = 0\n")
    result = cli(tmp_path / "a", "run", "--no-mdns", "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "ttl_days must be" in result.stderr
    (tmp_path / "a" / "config.toml").write_text("")
    for ttl in ("0", "31", "-2"):
        result = cli(
            tmp_path / "a", "run", "--no-mdns", "--listen", "127.0.0.1:0", "--ttl-days", ttl
        )
        assert result.returncode == 2
        assert "ttl_days must be" in result.stderr


def test_a_node_an_hour_ahead_still_delivers_and_stamps_its_own_time(tmp_path: Path) -> None:
    init_home(tmp_path / "a")
    b_id = init_home(tmp_path / "b")
    b = NodeProcess(tmp_path / "b").start()
    a = NodeProcess(tmp_path / "a", "--bootstrap", b.address, "--clock-offset", "3600")
    try:
        a.start()
        before = time.time()
        sent = cli(a.home, "send", b_id, "from the future", "--wait", "30")
        assert sent.returncode == 0, sent.stderr
        (got,) = json_lines(cli(b.home, "inbox", "--json").stdout)
        assert got["text"] == "from the future"
        assert got["ts"] >= before + 3600  # A's clock, not B's
        assert got["received"] < before + 3600
    finally:
        a.close()
        b.close()
    for bad in ("604801", "-604801", "soon"):
        refused = cli(
            tmp_path / "a", "run", "--no-mdns", "--listen", "127.0.0.1:0", "--clock-offset", bad
        )
        assert refused.returncode == 2, refused.stderr
        assert "--clock-offset" in refused.stderr
