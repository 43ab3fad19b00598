"""SIGKILL the receiver mid-stream: after a restart nothing is lost or doubled."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .nodeproc import DEADLINE, NodeProcess, cli, init_home, json_lines

if TYPE_CHECKING:
    from pathlib import Path

TOTAL = 2000


def test_receiver_killed_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    a_id = init_home(tmp_path / "a")
    b_id = init_home(tmp_path / "b")
    a = NodeProcess(tmp_path / "a").start()
    b = NodeProcess(tmp_path / "b", "--bootstrap", a.address)
    b2 = None
    try:
        b.start()
        b_events = b.api.events("/v1/events")
        a_events = a.api.events("/v1/events")
        texts = "".join(f"message {i:05d}\n" for i in range(TOTAL))
        sent = cli(a.home, "send", b_id, "--stdin", stdin=texts)
        assert sent.returncode == 0, sent.stderr
        ids = sent.stdout.split()
        assert len(ids) == TOTAL

        # Kill B as soon as it has taken some: the stream of 2,000 takes
        # about a second, so this lands mid-stream (checked below).
        received = 0
        deadline = time.monotonic() + DEADLINE
        while received < 20:
            event = b_events.next(timeout=max(0.1, deadline - time.monotonic()))
            assert time.monotonic() < deadline, "B received too little"
            if event is not None and event[0] == "message":
                received += 1
        b_events.close()
        b.kill()

        b2 = NodeProcess(tmp_path / "b", "--bootstrap", a.address).start()
        delivered: set[str] = set()
        already = json_lines(cli(a.home, "outbox", "--json").stdout)
        delivered.update(m["id"] for m in already if m["state"] == "delivered")
        # The kill really was mid-stream: B had not yet confirmed everything.
        assert len(delivered) < TOTAL
        deadline = time.monotonic() + 2 * DEADLINE
        while len(delivered) < TOTAL:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(delivered)} of {TOTAL} delivered"
            event = a_events.next(timeout=left)
            if event is not None and event[0] == "delivered":
                delivered.add(event[1]["id"])
        a_events.close()

        inbox = json_lines(cli(b2.home, "inbox", "--json").stdout)
        got = [m["id"] for m in inbox]
        assert len(got) == len(set(got)), "a message was stored twice"
        assert sorted(got) == sorted(ids)
        assert {m["from"] for m in inbox} == {a_id}
        assert sorted(m["text"] for m in inbox) == sorted(texts.split("\n")[:-1])
        out = json_lines(cli(a.home, "outbox", "--json").stdout)
        assert {m["state"] for m in out} == {"delivered"}
        assert len(out) == TOTAL
    finally:
        a.close()
        b.close()
        if b2 is not None:
            b2.close()
