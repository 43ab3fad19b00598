"""SIGKILL the receiver mid-stream: after a restart nothing is lost or doubled."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING

from p2pdm.identity import NodeId
from p2pdm.store import Store

from .crash_campaign import VICTIMS, campaign
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
        texts = "".join(f"message {i:05d}\n" for i in range(TOTAL))
        (tmp_path / "texts").write_text(texts)
        ids_file = tmp_path / "ids"
        with (
            b.api.events("/v1/events") as b_events,
            (tmp_path / "texts").open() as stdin,
            ids_file.open("w") as stdout,
        ):
            # The CLI streams the 2,000 in while we watch B take them.
            sender = subprocess.Popen(
                [sys.executable, "-m", "p2pdm", "--home", str(a.home), "send", b_id, "--stdin"],
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.DEVNULL,
            )
            # Kill B as soon as it has taken some: the stream of 2,000 takes
            # over a second, so this lands mid-stream (checked below).
            received = 0
            deadline = time.monotonic() + DEADLINE
            while received < 20:
                event = b_events.next(timeout=max(0.1, deadline - time.monotonic()))
                assert time.monotonic() < deadline, "B received too little"
                if event is not None and event[0] == "message":
                    received += 1
        b.kill()
        assert sender.wait(timeout=DEADLINE) == 0
        ids = ids_file.read_text().split()
        assert len(ids) == TOTAL

        # With B dead nothing more is delivered: subscribe, then read what was.
        with a.api.events("/v1/events") as a_events:
            already = json_lines(cli(a.home, "outbox", "--json").stdout)
            delivered = {m["id"] for m in already if m["state"] == "delivered"}
            # The kill really was mid-stream: B had not yet confirmed everything.
            assert len(delivered) < TOTAL
            b2 = NodeProcess(tmp_path / "b", "--bootstrap", a.address).start()
            deadline = time.monotonic() + 2 * DEADLINE
            while len(delivered) < TOTAL:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(delivered)} of {TOTAL} delivered"
                event = a_events.next(timeout=left)
                if event is not None and event[0] == "delivered":
                    delivered.add(event[1]["id"])

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


def test_relay_killed_while_receiving_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    init_home(tmp_path / "a")
    b_id = init_home(tmp_path / "b")  # b never runs: everything goes to the relay
    init_home(tmp_path / "r")
    r = NodeProcess(tmp_path / "r").start()
    a = NodeProcess(tmp_path / "a", "--bootstrap", r.address)
    r2 = None
    try:
        a.start()
        r_address = r.address
        with r.api.events("/v1/events") as r_events:
            a.wait_connected(r.status()["id"])
            for start in range(0, TOTAL, 500):
                a.api.post(
                    "/v1/messages",
                    {"to": b_id, "texts": [f"held {i:05d}" for i in range(start, start + 500)]},
                )
            # Kill r once it holds some: the handoff of 2,000 is still going.
            held = 0
            deadline = time.monotonic() + DEADLINE
            while held < 20:
                event = r_events.next(timeout=max(0.1, deadline - time.monotonic()))
                assert time.monotonic() < deadline, "r held too little"
                if event is not None and event[0] == "held":
                    held += 1
        r.kill()

        # What a recorded as taken by r (r acknowledged it after committing)...
        out = json_lines(cli(a.home, "outbox", "--json").stdout)
        acked = {m["id"] for m in out if m["relayed_to"] > 0}
        assert 0 < len(acked) < TOTAL, "the kill was not mid-stream"
        # ...is all in r's store, which is intact.
        with Store.open(tmp_path / "r" / "store.db") as store:
            assert store.integrity_check() == []
            stored = {row.message_id.hex() for row in store.relay_for(NodeId.parse(b_id), 0)}
        assert acked <= stored

        # r restarts at the same address; a hands it the rest, each once.
        r2 = NodeProcess(tmp_path / "r", listen=r_address).start()
        r2.wait_until(lambda: r2.status()["relay_stored"] == TOTAL)
        assert r2.stop() == 0
        with Store.open(tmp_path / "r" / "store.db") as store:
            rows = store.relay_for(NodeId.parse(b_id), 0)
        assert sorted(row.message_id.hex() for row in rows) == sorted(m["id"] for m in out)
    finally:
        a.close()
        r.close()
        if r2 is not None:
            r2.close()


def test_a_short_crash_campaign_loses_and_doubles_nothing() -> None:
    """Ten runs of `scripts/crash_campaign.py`: each victim killed three or four times."""
    results = campaign(10, seed=7)
    failed = [r.summary() for r in results if not r.ok]
    assert not failed, failed
    # The kills land mid-stream (a late kill would prove little).
    for victim in VICTIMS:
        assert any(r.mid_stream for r in results if r.victim == victim), victim
