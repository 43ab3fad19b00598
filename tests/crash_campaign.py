"""The crash campaign: SIGKILL one of sender, relay and receiver mid-stream.

One run: three real `p2pdm run` processes on 127.0.0.1 (sender A, relay R,
receiver B), A streams texts to B through its API, and one of them is
killed with SIGKILL at a random point of the stream, then restarted. The
run passes when every text A's API acknowledged is in B's inbox exactly
once, B holds nothing A did not send, each hop kept what it acknowledged,
and every store passes `PRAGMA integrity_check`.

`scripts/crash_campaign.py` runs many; `tests/test_crash.py` a few.
"""

from __future__ import annotations

import http.client
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pdm.apiclient import ApiRequestError, ApiUnavailable
from p2pdm.identity import NodeId
from p2pdm.store import OutboxState, Store, text_of_body

from .nodeproc import DEADLINE, NodeProcess, init_home

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2pdm.apiclient import EventStream

VICTIMS = ("receiver", "relay", "sender")
TEXTS_PER_RUN = 300
BATCH = 10


@dataclass
class RunResult:
    run: int
    victim: str
    receiver_online: bool
    """Whether B ran from the start; if not, everything went through R first."""
    kill_after: int
    """How far into the stream the kill was asked for (events or texts seen)."""
    held_at_kill: int = 0
    """What the victim held when killed: B's inbox, R's held mail, A's acknowledged."""
    acknowledged: int = 0
    """Texts A's API returned an id for: the user was told they are stored."""
    sent_by_a: int = 0
    """Texts in A's outbox (a kill mid-request can store some unacknowledged)."""
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    """Acknowledged ids missing from B's inbox at the end."""
    hop_lost: list[str] = field(default_factory=list)
    """Ids a killed hop had acknowledged to A but did not hold after the kill."""
    duplicated: int = 0
    unexpected: int = 0
    """Inbox entries A never sent."""
    integrity: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.lost
            and not self.hop_lost
            and self.duplicated == 0
            and self.unexpected == 0
            and not any(self.integrity.values())
        )

    @property
    def mid_stream(self) -> bool:
        """Whether the kill landed before the victim had everything."""
        if self.victim == "sender":
            return self.acknowledged < TEXTS_PER_RUN
        return self.held_at_kill < self.sent_by_a

    def summary(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "victim": self.victim,
            "receiver_online": self.receiver_online,
            "kill_after": self.kill_after,
            "held_at_kill": self.held_at_kill,
            "acknowledged": self.acknowledged,
            "sent_by_a": self.sent_by_a,
            "delivered": self.delivered,
            "lost": len(self.lost),
            "hop_lost": len(self.hop_lost),
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
            "integrity_ok": not any(self.integrity.values()),
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "mid_stream": self.mid_stream,
            "ok": self.ok,
        }


class _Streamer(threading.Thread):
    """Posts the run's texts to A in batches until done or A goes away."""

    def __init__(self, a: NodeProcess, to: str, run: int) -> None:
        super().__init__(daemon=True)
        self.api = a.api
        self.to = to
        self.run_number = run
        self.acknowledged: list[str] = []
        self.progress = threading.Condition()
        self.failed: str | None = None

    def run(self) -> None:
        for start in range(0, TEXTS_PER_RUN, BATCH):
            texts = [f"run {self.run_number} text {i:04d}" for i in range(start, start + BATCH)]
            try:
                answer = self.api.post("/v1/messages", {"to": self.to, "texts": texts})
            except (ApiRequestError, ApiUnavailable, OSError, http.client.HTTPException) as e:
                self.failed = str(e)  # A was killed: what it answered before counts
                break
            with self.progress:
                self.acknowledged.extend(answer["ids"])
                self.progress.notify_all()
        with self.progress:
            self.progress.notify_all()

    def wait_acknowledged(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.progress:
            while len(self.acknowledged) < count and self.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"A acknowledged only {len(self.acknowledged)}")
                self.progress.wait(left)


def _wait_events(events: EventStream, name: str, count: int) -> None:
    """Return once `count` events called `name` came on `events`."""
    seen = 0
    deadline = time.monotonic() + DEADLINE
    while seen < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {seen} {name} events")
        event = events.next(timeout=left)
        if event is not None and event[0] == name:
            seen += 1


def _held_by_a_as(home: Path, *, relayed: bool) -> set[str]:
    """Ids A's store says a hop took: the receiver (`relayed` False) or a relay."""
    with Store.open(home / "store.db") as store:
        rows = store.outbox()
    taken = {OutboxState.SENT, OutboxState.DELIVERED, OutboxState.READ}
    if relayed:
        return {r.message_id.hex() for r in rows if r.relayed_to > 0}
    return {
        r.message_id.hex()
        for r in rows
        if r.state in (OutboxState.DELIVERED, OutboxState.READ)
        or (r.state in taken and r.relayed_to == 0)
    }


def run_once(run: int, rng: random.Random, workdir: Path) -> RunResult:
    """One kill-and-restart run in `workdir`; never raises for a failed check."""
    victim = VICTIMS[run % len(VICTIMS)]
    # R's kill needs traffic through R: B joins after it. A receiver kill
    # needs B up. A sender kill takes either.
    online = {"receiver": True, "relay": False, "sender": rng.random() < 0.5}[victim]
    # Kills late in the stream would often find everything already taken.
    result = RunResult(run, victim, online, rng.randrange(1, TEXTS_PER_RUN * 9 // 10))
    began = time.monotonic()
    homes = {name: workdir / name for name in ("a", "r", "b")}
    init_home(homes["a"])
    init_home(homes["r"])
    b_id = init_home(homes["b"])
    r = NodeProcess(homes["r"])
    b = NodeProcess(homes["b"])
    a = NodeProcess(homes["a"])
    nodes = [r, b, a]  # close() also ends one that never became ready
    streamer: _Streamer | None = None
    try:
        r.start()
        # Restarts reuse the first address, so the others' bootstrap still finds it.
        r.listen = r.address
        b.extra = a.extra = ("--bootstrap", r.listen)
        if online:
            b.start()
            b.listen = b.address
            a.extra += ("--bootstrap", b.listen)
        a.start()
        # The receiver is killed with traffic on its link: wait for it.
        if online:
            b.wait_connected(a.status()["id"])
        else:
            r.wait_connected(a.status()["id"])
        streamer = _Streamer(a, b_id, run)
        target = {"receiver": b, "relay": r, "sender": a}[victim]
        if victim == "sender":
            streamer.start()
            streamer.wait_acknowledged(result.kill_after, DEADLINE)
        else:
            # Subscribed before the stream starts, so no event is missed.
            with target.api.events("/v1/events") as events:
                streamer.start()
                name = "message" if victim == "receiver" else "held"
                _wait_events(events, name, result.kill_after)
        target.kill()
        streamer.join(DEADLINE)

        if victim == "receiver":
            took = _held_by_a_as(homes["a"], relayed=False)
            with Store.open(homes["b"] / "store.db") as store:
                held = {row.message_id.hex() for row in store.inbox()}
            result.hop_lost = sorted(took - held)
            result.held_at_kill = len(held)
        elif victim == "relay":
            took = _held_by_a_as(homes["a"], relayed=True)
            with Store.open(homes["r"] / "store.db") as store:
                held = {row.message_id.hex() for row in store.relay_for(NodeId.parse(b_id), 0)}
            result.hop_lost = sorted(took - held)
            result.held_at_kill = len(held)
        else:
            result.held_at_kill = len(streamer.acknowledged)

        target.start()
        if not online:
            b.start()
        try:
            a.wait_until(lambda: a.status()["outbox_pending"] == 0, 2 * DEADLINE)
        except TimeoutError as e:
            result.error = f"not all delivered: {e}"
    except Exception as e:  # a run that breaks is reported, not fatal
        result.error = f"{type(e).__name__}: {e}"
    finally:
        for node in nodes:
            node.close()
    acknowledged = set(streamer.acknowledged) if streamer is not None else set()
    result.acknowledged = len(acknowledged)
    _check_stores(result, homes, acknowledged)
    result.seconds = time.monotonic() - began
    return result


def _check_stores(result: RunResult, homes: dict[str, Path], acknowledged: set[str]) -> None:
    """With every node stopped: compare A's outbox with B's inbox, check files."""
    for name, home in homes.items():
        with Store.open(home / "store.db") as store:
            result.integrity[name] = store.integrity_check()
    with Store.open(homes["a"] / "store.db") as store:
        sent = {r.message_id.hex() for r in store.outbox()}
    with Store.open(homes["b"] / "store.db") as store:
        inbox = store.inbox()
    got = [r.message_id.hex() for r in inbox]
    texts = Counter(text_of_body(r.body) for r in inbox)
    result.sent_by_a = len(sent)
    result.delivered = len(set(got))
    result.lost = sorted(acknowledged - set(got))
    # The inbox keeps one row per id, so a copy stored twice would be a text
    # sealed again under a new id: count texts seen more than once.
    result.duplicated = sum(n - 1 for n in texts.values())
    result.unexpected = len(set(got) - sent)


def campaign(
    runs: int, seed: int, on_result: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    """`runs` runs, victims in turn; `on_result` is called after each one."""
    rng = random.Random(seed)
    results = []
    for run in range(runs):
        workdir = Path(tempfile.mkdtemp(prefix="p2pdm-crash-"))
        try:
            result = run_once(run, rng, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
