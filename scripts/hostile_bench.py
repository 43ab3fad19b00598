"""Hostile peers at scale against a real node: its limits, memory, and honest traffic.

    .venv/bin/python scripts/hostile_bench.py [--scale 1.0] [--json PATH]

Run from the repo root. Everything runs on 127.0.0.0/8 with mDNS off: a
target `p2pdm run` process T, an honest `p2pdm run` process H connected
to it, and the attackers of tests/hostile.py in this process (from
127.0.0.3 and up). H sends T a message every 50 ms throughout. For each
attack the script prints what was sent, how T answered (disconnected,
refused, stored), T's peak RSS growth during the attack (VmHWM) and its
RSS after, and H's messages receipted during the attack with their round
trip (message in, receipt back).

Attacks: a flood of PUSH frames past the window; replays of a captured
envelope of H's; forged envelopes and delivery notices; envelopes for
unknown recipients past the relay quotas; 1,000 half-open connections,
then half-open connections kept up for a while from 200 addresses (with a
new honest node dialling in); peers that read nothing while T has mail
for them.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pdm import envelope, wire
from p2pdm.apiclient import ApiClientError
from p2pdm.envelope import MessageKind
from p2pdm.handshake import Handshake
from p2pdm.identity import Identity, NodeId
from p2pdm.notice import DeliveryNotice
from p2pdm.session import AckStatus
from scripts import figures
from scripts.bench_direct import rss_kib
from tests.hostile import (
    HostilePeer,
    attacker_source,
    attacker_stream,
    closed_by_node,
    forge_envelope,
    junk_for_relay,
    seal_text,
)
from tests.nodeproc import NodeProcess, init_home

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from p2pdm.transport import TransportLimits

# The target's limits: defaults, but timeouts short enough that a run takes
# minutes, and relay quotas small enough to fill.
TARGET_LIMITS = {
    "handshake_timeout": 3,
    "idle_timeout": 10,
    "keepalive_interval": 3,
    "send_timeout": 5,
    "relay_peer_bytes": 1 << 20,
    "relay_max_bytes": 8 << 20,
}
HONEST_GAP = 0.05  # H sends one message this often (pacing the load)


class Honest:
    """H's steady traffic to T: when each message was sent and receipted."""

    def __init__(self, h: NodeProcess, target: str) -> None:
        self.h, self.target = h, target
        self.sent: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receipts, daemon=True),
        ]
        self._ready = threading.Event()

    def start(self) -> None:
        self._threads[1].start()
        self._ready.wait(10)
        self._threads[0].start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _send(self) -> None:
        with contextlib.suppress(ApiClientError):  # H stopped under us: the run is over
            self._send_until_stopped()

    def _send_until_stopped(self) -> None:
        api = self.h.api
        n = 0
        while not self._stop.is_set():
            t = time.perf_counter()
            mid = api.post("/v1/messages", {"to": self.target, "text": f"honest {n}"})["ids"][0]
            self.sent[mid] = t
            n += 1
            self._stop.wait(HONEST_GAP)  # pacing, not waiting for a result

    def _receipts(self) -> None:
        events = self.h.api.events("/v1/events")
        self._ready.set()
        with contextlib.suppress(ApiClientError, OSError), contextlib.closing(events):
            while not self._stop.is_set():
                event = events.next(timeout=0.5)
                if event is not None and event[0] == "delivered":
                    self.done[str(event[1]["id"])] = time.perf_counter()

    def window(self, start: float, end: float) -> tuple[int, int, list[float]]:
        """(sent, receipted, round trips in ms) for messages sent in [start, end)."""
        ids = [m for m, t in list(self.sent.items()) if start <= t < end]
        trips = [(self.done[m] - self.sent[m]) * 1e3 for m in ids if m in self.done]
        return len(ids), len(trips), trips


def log_lines(node: NodeProcess) -> list[str]:
    """The target's log lines that came since the last call."""
    out: list[str] = []
    while True:
        try:
            line = node.lines.get_nowait()
        except Exception:
            return out
        if line is None:
            return out
        node.log.append(line)
        out.append(line)


def count(lines: list[str], pattern: str) -> int:
    return sum(1 for line in lines if re.search(pattern, line))


class Bench:
    def __init__(self, t: NodeProcess, h: NodeProcess, honest: Honest, limits: TransportLimits):
        self.t, self.h, self.honest, self.limits = t, h, honest, limits
        status = t.status()
        self.target = NodeId.parse(status["id"])
        self.port = int(status["listen"][0].rsplit(":", 1)[1])
        self.figures: figures.Figures = {}
        assert t.proc is not None
        self.pid = t.proc.pid

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def run(self, name: str, attack: Callable[[], Awaitable[str]]) -> None:
        log_lines(self.t)
        hwm0, rss0 = rss_kib(self.pid, "VmHWM"), rss_kib(self.pid, "VmRSS")
        start = time.perf_counter()
        what = await attack()
        end = time.perf_counter()
        # Messages sent during the attack get up to 10 s more to be receipted.
        with trio.move_on_after(10):
            while self.honest.window(start, end)[1] < self.honest.window(start, end)[0]:  # noqa: ASYNC110 (counted by another thread)
                await trio.sleep(0.1)  # polling period of an outside observer
        hwm1, rss1 = rss_kib(self.pid, "VmHWM"), rss_kib(self.pid, "VmRSS")
        sent, ok, trips = self.honest.window(start, end)
        trips.sort()
        p50 = statistics.median(trips) if trips else float("nan")
        p99 = trips[int(len(trips) * 0.99)] if trips else float("nan")
        print(f"\n== {name} ({end - start:.1f} s)")
        for line in what.splitlines():
            print(f"   {line}")
        print(
            f"   target RSS: {rss0 / 1024:.1f} MiB before, peak growth "
            f"{max(0, hwm1 - max(hwm0, rss0)) / 1024:.1f} MiB, {rss1 / 1024:.1f} MiB after"
        )
        print(
            f"   honest peer: {ok}/{sent} messages receipted, round trip"
            f" p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        )
        key = name.split(":")[0].replace(" ", "_")
        self.figures[f"{key}.peak_rss_growth_mib"] = max(0, hwm1 - max(hwm0, rss0)) / 1024
        self.figures[f"{key}.honest_receipted"] = ok
        self.figures[f"{key}.honest_sent"] = sent
        self.figures[f"{key}.honest_p50_ms"] = p50

    # --- the attacks ------------------------------------------------------

    async def flood(self, attackers: int, frames: int) -> str:
        mark = len(self.t.log)
        written = []
        for n in range(attackers):
            peer = await HostilePeer.connect(
                self.port, source=attacker_source(n), limits=self.limits
            )
            spam = seal_text(peer.me, self.target, "flood", self.now_ms())
            written.append(await peer.flood(spam, frames))
            await peer.aclose()
        # T logs each cut once it has noticed the socket closed.
        with contextlib.suppress(TimeoutError):
            for _ in range(attackers):
                self.t.wait_for_line("exceeded the flow-control window", timeout=10)
        lines = self.t.log[mark:] + log_lines(self.t)
        cut = count(lines, r"disconnected .*exceeded the flow-control window")
        return (
            f"{attackers} attackers, {frames:,} PUSH frames each without waiting for ACKs\n"
            f"disconnected for passing the window: {cut}/{attackers}; frames written before"
            f" the cut: median {statistics.median(written):,.0f}, max {max(written):,}"
        )

    async def replay(self, captured: bytes, attackers: int, copies: int) -> str:
        before = self.t.status()["since_start"]
        message_id = envelope.parse_outer(captured).message_id
        receipts0 = receipts_for(self.t, message_id)
        statuses: list[AckStatus] = []

        async def one(n: int) -> None:
            peer = await HostilePeer.connect(
                self.port, source=attacker_source(n), limits=self.limits
            )
            for start in range(0, copies, 1000):
                acks = await peer.push_all([captured] * min(1000, copies - start))
                statuses.extend(a.status for a in acks)
            await peer.aclose()

        async with trio.open_nursery() as nursery:
            for n in range(attackers):
                nursery.start_soon(one, n)
        after = self.t.status()["since_start"]
        dup = statuses.count(AckStatus.DUPLICATE)
        return (
            f"{attackers} attackers replay one captured envelope of H's {copies:,} times each\n"
            f"answered DUPLICATE: {dup:,}/{len(statuses):,}; T's duplicates counter"
            f" +{after['duplicates'] - before['duplicates']:,}; new receipts to H listing it:"
            f" {receipts_for(self.t, message_id) - receipts0}"
        )

    async def forge(self, count_: int) -> str:
        carol = Identity.generate().node_id
        api = self.t.api
        ids = [
            bytes.fromhex(i)
            for i in api.post(
                "/v1/messages", {"to": str(carol), "texts": [f"c{i}" for i in range(50)]}
            )["ids"]
        ]
        h_id = NodeId.parse(self.h.status()["id"])
        mallory = Identity.generate()
        now = self.now_ms()
        body: wire.Value = {"ids": list(ids)}
        forged = []
        for i in range(count_):
            if i % 2:
                forged.append(
                    forge_envelope(mallory, carol, self.target, MessageKind.RECEIPT, body, now)
                )
            else:
                forged.append(
                    forge_envelope(mallory, h_id, self.target, MessageKind.TEXT, f"x{i}", now)
                )
        notice = DeliveryNotice.create(mallory, ids, now).data
        before = self.t.status()["since_start"]
        peer = await HostilePeer.connect(self.port, mallory, limits=self.limits)
        acks = await peer.push_all(forged)
        for _ in range(count_):
            await peer.send_notice(notice)
        await peer.aclose()
        after = self.t.status()["since_start"]
        refused = sum(1 for a in acks if a.status is AckStatus.REFUSED)
        still = undelivered(self.t, carol)
        return (
            f"{count_:,} forged envelopes (texts in H's name, receipts in C's name) and"
            f" {count_:,} notices signed by the attacker for T's 50 messages to C\n"
            f"refused: {refused:,}/{len(acks):,}; notices that dropped anything:"
            f" {after['notices_taken'] - before['notices_taken']};"
            f" T's messages to C still undelivered: {still}/50"
        )

    async def relay(self, attackers: int, each: int, size: int) -> str:
        stored = refused = 0
        reasons: set[str] = set()

        async def one(n: int) -> None:
            nonlocal stored, refused
            peer = await HostilePeer.connect(
                self.port, source=attacker_source(100 + n), limits=self.limits
            )
            now = self.now_ms()
            junk = [
                junk_for_relay(Identity.generate().node_id, size, now, n * each + i)
                for i in range(each)
            ]
            for ack in await peer.push_all(junk):
                if ack.status is AckStatus.STORED:
                    stored += 1
                else:
                    refused += 1
                    reasons.add(ack.reason)
            await peer.aclose()

        async with trio.open_nursery() as nursery:
            for n in range(attackers):
                nursery.start_soon(one, n)
        status = self.t.status()
        return (
            f"{attackers} attackers x {each:,} envelopes of {size // 1024} KiB for unknown"
            f" recipients ({attackers * each * size / 2**20:.0f} MiB offered)\n"
            f"stored {stored:,}, refused {refused:,} ({'; '.join(sorted(reasons))})\n"
            f"relay holds {status['relay_stored']:,} envelopes, {status['relay_bytes'] / 2**20:.2f}"
            f" MiB (quotas: {TARGET_LIMITS['relay_peer_bytes'] / 2**20:g} MiB per uploader,"
            f" {TARGET_LIMITS['relay_max_bytes'] / 2**20:g} MiB in all)"
        )

    async def half_open(self, sockets: int, per_source: int) -> str:
        hs = wire.encode_frame(Handshake(Identity.generate(), initiator=True).start())
        streams = []
        for i in range(sockets):
            stream = await attacker_stream(self.port, attacker_source(300 + i // per_source))
            if i % 2:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(hs)
            streams.append(stream)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(closed_by_node, stream)
        held = trio.current_time() - started
        lines = log_lines(self.t)
        return (
            f"{sockets:,} connections from {sockets // per_source} addresses; half send"
            f" nothing, half the first handshake message\n"
            f"refused at once: {count(lines, 'refused connection')}, dropped at the handshake"
            f" deadline: {count(lines, 'handshake from .* failed')}; all closed by T within"
            f" {held:.1f} s"
        )

    async def sustained_half_open(self, sources: int, seconds: float, root: Path) -> str:
        """Half-open connections kept up: each address dials again as soon as T
        closes its last one; meanwhile a new honest node dials T."""
        hs = wire.encode_frame(Handshake(Identity.generate(), initiator=True).start())
        attempts = 0
        stop = trio.Event()

        async def slot(n: int) -> None:
            nonlocal attempts
            while not stop.is_set():
                attempts += 1
                try:
                    stream = await attacker_stream(self.port, attacker_source(2000 + n))
                    with contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(hs)
                    await closed_by_node(stream)
                except OSError:
                    pass
                await trio.sleep(0.2)  # the attacker's pace per address

        init_home(root / "c")
        c = NodeProcess(root / "c", "--bootstrap", f"127.0.0.1:{self.port}")
        connected_after = float("nan")
        async with trio.open_nursery() as nursery:
            for n in range(sources):
                nursery.start_soon(slot, n)
            await trio.sleep(2)  # let the attack fill the handshake slots first
            t0 = time.perf_counter()
            try:
                await trio.to_thread.run_sync(c.start)
                with trio.move_on_after(seconds):
                    while True:
                        peers = await trio.to_thread.run_sync(c.api.get, "/v1/peers")
                        if any(p["connected"] for p in peers["peers"]):
                            connected_after = time.perf_counter() - t0
                            break
                        await trio.sleep(0.2)  # polling period of an outside observer
            finally:
                stop.set()
                await trio.to_thread.run_sync(c.close)
        lines = log_lines(self.t)
        got = "never" if connected_after != connected_after else f"after {connected_after:.1f} s"
        return (
            f"{sources} addresses keep half-open handshakes up ({attempts:,} dials in all)"
            f" while a new honest node C dials T (for up to {seconds:g} s)\n"
            f"refused: {count(lines, 'refused connection')}, dropped at the deadline:"
            f" {count(lines, 'handshake from .* failed')}; C connected: {got}"
        )

    async def non_readers(self, peers_: int, messages: int, size: int) -> str:
        lazies = []
        for n in range(peers_):
            lazies.append(
                await HostilePeer.connect(
                    self.port, source=attacker_source(500 + n), limits=self.limits
                )
            )
        t0 = time.perf_counter()
        api = self.t.api
        for lazy in lazies:
            for start in range(0, messages, 200):
                texts = [f"{i} " + "x" * size for i in range(start, min(messages, start + 200))]
                await trio.to_thread.run_sync(
                    api.post, "/v1/messages", {"to": str(lazy.node_id), "texts": texts}
                )
        # They read nothing and send nothing; T must drop them.
        with trio.move_on_after(60):
            while True:
                peers = await trio.to_thread.run_sync(api.get, "/v1/peers")
                up = {p["id"] for p in peers["peers"] if p["connected"]}
                if not up & {str(lazy.node_id) for lazy in lazies}:
                    break
                await trio.sleep(0.5)  # polling period of an outside observer
        dropped_after = time.perf_counter() - t0
        for lazy in lazies:
            await lazy.aclose()
        lines = log_lines(self.t)
        reasons = {
            re.sub(r"\d+", "N", line.split(": ", 2)[-1])
            for line in lines
            if "disconnected" in line and any(str(lazy.node_id) in line for lazy in lazies)
        }
        return (
            f"{peers_} peers that read nothing; T holds {messages:,} messages of"
            f" {size // 1024} KiB for each ({peers_ * messages * size / 2**20:.0f} MiB)\n"
            f"all dropped {dropped_after:.0f} s after they connected"
            f" ({'; '.join(sorted(reasons))});"
            f" T's outbox still pending: {self.t.status()['outbox_pending']:,}"
        )


def receipts_for(t: NodeProcess, message_id: bytes) -> int:
    """Receipt envelopes in T's outbox that list `message_id` (a read-only
    look at T's store)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{t.home / 'store.db'}?mode=ro", uri=True, timeout=10)
    ) as db:
        rows = db.execute(
            "SELECT body FROM outbox WHERE kind = ?", (int(MessageKind.RECEIPT),)
        ).fetchall()
    count = 0
    for (body,) in rows:
        ids = wire.decode(bytes(body))
        if isinstance(ids, dict) and isinstance(ids["ids"], list) and message_id in ids["ids"]:
            count += 1
    return count


def undelivered(t: NodeProcess, to: NodeId) -> int:
    with contextlib.closing(
        sqlite3.connect(f"file:{t.home / 'store.db'}?mode=ro", uri=True, timeout=10)
    ) as db:
        row = db.execute(
            "SELECT count(*) FROM outbox WHERE recipient = ? AND delivered_ms IS NULL",
            (to.public_key,),
        ).fetchone()
    return int(row[0])


def captured_envelope(h: NodeProcess, message_id: str) -> bytes:
    """One of H's envelopes, as any relay or eavesdropper on T's store could hold it."""
    with contextlib.closing(
        sqlite3.connect(f"file:{h.home / 'store.db'}?mode=ro", uri=True, timeout=10)
    ) as db:
        row = db.execute(
            "SELECT envelope FROM outbox WHERE message_id = ?", (bytes.fromhex(message_id),)
        ).fetchone()
    return bytes(row[0])


async def main_async(args: argparse.Namespace, root: Path) -> figures.Figures:
    from p2pdm.transport import limits_with

    s = args.scale
    init_home(root / "t")
    h_id = init_home(root / "h")
    flags = [x for k, v in TARGET_LIMITS.items() for x in ("--limit", f"{k}={v}")]
    t = NodeProcess(root / "t", *flags)
    h = NodeProcess(root / "h")
    try:
        t.start()
        h.extra = ("--bootstrap", t.address)
        h.start()
        t.wait_connected(h_id)
        target = str(t.status()["id"])
        honest = Honest(h, target)
        honest.start()
        bench = Bench(t, h, honest, limits_with(TARGET_LIMITS))
        print(f"p2pdm hostile-peer bench: target T (pid {bench.pid}), honest H, attackers here")
        print(f"T's limits: {TARGET_LIMITS}; other limits at their defaults")
        mid = h.api.post("/v1/messages", {"to": target, "text": "worth replaying"})["ids"][0]
        t.wait_until(lambda: mid in honest.done)
        captured = captured_envelope(h, mid)

        await bench.run(
            "flood: PUSH frames past the window", lambda: bench.flood(int(20 * s), 100_000)
        )
        await bench.run(
            "replay: one captured envelope", lambda: bench.replay(captured, 4, int(5_000 * s))
        )
        await bench.run("forgery: envelopes and notices", lambda: bench.forge(int(2_000 * s)))
        await bench.run(
            "relay quota: envelopes for unknown recipients",
            lambda: bench.relay(int(20 * s), 1_000, 4096),
        )
        await bench.run("half-open: 1,000 connections", lambda: bench.half_open(1000, 8))
        await bench.run("half-open kept up", lambda: bench.sustained_half_open(200, 20, root))
        await bench.run(
            "non-readers: peers that read nothing",
            lambda: bench.non_readers(int(10 * s), 2_000, 4096),
        )
        honest.stop()
        sent, ok, _ = honest.window(0, time.perf_counter())
        print(f"\nhonest peer over the whole run: {ok}/{sent} receipted")
        return bench.figures
    finally:
        t.close()
        h.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="attack sizes times this")
    figures.add_option(parser)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    with tempfile.TemporaryDirectory(prefix="p2pdm-hostile-") as tmp:
        result = trio.run(main_async, args, Path(tmp))
    figures.write(args.json, result)


if __name__ == "__main__":
    main()
