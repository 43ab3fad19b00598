"""Relaying: drain time, reconciliation cost, and memory with a full relay store.

    .venv/bin/python scripts/bench_relay.py [--drain 10000] [--stored 100000] [--differ 100]

Run from the repo root; everything runs on 127.0.0.1 with mDNS off.

1. Drain: a relay holds --drain envelopes for B (written into its store
   before it starts); B starts with the relay as its only bootstrap. Time
   from B's launch, and from B's connection, until B has committed them
   all (target <= 5 s for 10,000).
2. Reconciliation between two relays holding --stored envelopes each that
   differ by --differ (half on each side) and by 0: rounds and bytes of
   reconciliation messages, overhead beyond the missing ids themselves
   (target < 64 KiB at 100,000 / 100), time until both hold the union.
3. Memory: peak RSS of a relay process holding --stored envelopes, after it
   reconciled (target <= 150 MB).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pdm import envelope
from p2pdm.envelope import MessageKind
from p2pdm.identity import Identity, NodeId
from p2pdm.reconcile import run_in_memory
from p2pdm.store import RelayQuota, Store
from scripts import figures
from scripts.bench_direct import rss_kib
from tests.nodeproc import NodeProcess, init_home

NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000
# Room for the benchmark's envelopes under one uploader.
BIG = RelayQuota(max_total_bytes=1 << 40, max_peer_bytes=1 << 40)


def sealed_batch(sender: Identity, to: NodeId, count: int, tag: str) -> list[tuple[bytes, bytes]]:
    """(message id, envelope) pairs of small texts from `sender` to `to`."""
    out = []
    for i in range(count):
        data = envelope.seal(
            sender,
            to,
            MessageKind.TEXT,
            f"{tag} {i:06d}",
            timestamp_ms=NOW_MS,
            expires_ms=NOW_MS + DAY_MS,
        )
        out.append((envelope.parse_outer(data).message_id, data))
    return out


def fill(home: Path, to: NodeId, uploader: NodeId, items: list[tuple[bytes, bytes]]) -> None:
    """Write envelopes into a (stopped) node's relay store, as if uploaded."""
    with Store.open(home / "store.db") as store, store.transaction():
        for mid, data in items:
            store.accept_relay(mid, to, NOW_MS + DAY_MS, data, uploader, NOW_MS, BIG)


def drain(root: Path, count: int) -> figures.Figures:
    sender = Identity.generate()
    init_home(root / "r")
    b_text = init_home(root / "b")
    b_id = NodeId.parse(b_text)
    t0 = time.perf_counter()
    items = sealed_batch(sender, b_id, count, "drain")
    fill(root / "r", b_id, sender.node_id, items)
    print(f"  prepared {count} envelopes in {time.perf_counter() - t0:.1f} s")
    r = NodeProcess(root / "r").start()
    b = NodeProcess(root / "b", "--bootstrap", r.address)
    try:
        launched = time.perf_counter()
        b.start()
        connected = 0.0
        while True:
            status = b.status()
            now = time.perf_counter()
            if not connected and status["connected"]:
                connected = now
            if status["since_start"]["received"] >= count:
                break
            if now - launched > 300:
                raise SystemExit("drain stalled")
            time.sleep(0.02)  # the polling period, not a wait for a result
        done = time.perf_counter()
        # B's receipts for the (absent) sender now wait at the relay too.
        last, steady = -1, 0
        while steady < 10:  # settled: the same count for 10 polls
            now_held = r.status()["relay_stored"]
            steady = steady + 1 if now_held == last else 0
            last = now_held
            time.sleep(0.05)  # the polling period
        assert r.stop() == 0
        with Store.open(root / "r" / "store.db") as store:
            left_for_b = len(store.relay_for(b_id, 0))
            receipts, _ = store.relay_usage()
    finally:
        b.close()
        r.close()
    print(f"  drained {count} envelopes: {done - launched:.2f} s from B's launch,")
    print(f"  {done - connected:.2f} s from B's connection ({count / (done - connected):,.0f}/s);")
    print(
        f"  relay holds {left_for_b} for B afterwards (copies dropped on B's ACKs),"
        f" and {receipts} receipt envelopes from B for the sender"
    )
    return {
        "drain_from_launch_s": done - launched,
        "drain_from_connection_s": done - connected,
        "drain_per_s": count / (done - connected),
    }


def in_memory_table(stored: int) -> None:
    """Reconciliation cost by difference, the protocol alone (no sockets)."""
    print(f"  {'differ':>7} {'messages':>8} {'bytes':>10} {'overhead':>10} {'cpu':>7}")
    for differ in (d for d in (0, 100, 1000, 10_000) if d <= stored):
        common = [os.urandom(32) for _ in range(stored - differ // 2)]
        a = common + [os.urandom(32) for _ in range(differ // 2)]
        b = common + [os.urandom(32) for _ in range(differ - differ // 2)]
        t0 = time.process_time()
        left, right = run_in_memory(a, b)
        cpu = time.process_time() - t0
        total = left.bytes_sent + right.bytes_sent
        print(
            f"  {differ:7} {left.rounds + right.rounds:8} {total:10,} {total - 32 * differ:10,}"
            f" {cpu:6.2f}s"
        )


def two_relays(root: Path, stored: int, differ: int) -> figures.Figures:
    """Two relay processes, `stored` envelopes each, `differ` held by one side only."""
    sender, recipient = Identity.generate(), Identity.generate()
    t0 = time.perf_counter()
    common = sealed_batch(sender, recipient.node_id, stored - differ // 2, "common")
    only1 = sealed_batch(sender, recipient.node_id, differ // 2, "only-r1")
    only2 = sealed_batch(sender, recipient.node_id, differ - differ // 2, "only-r2")
    for name, extra in (("r1", only1), ("r2", only2)):
        init_home(root / name)
        fill(root / name, recipient.node_id, sender.node_id, common + extra)
    print(f"  prepared two stores of {stored} envelopes in {time.perf_counter() - t0:.1f} s")
    r1 = NodeProcess(root / "r1").start()
    r2 = NodeProcess(root / "r2", "--bootstrap", r1.address)
    union = len(common) + len(only1) + len(only2)
    try:
        launched = time.perf_counter()
        r2.start()
        ready = time.perf_counter()
        while True:
            s1, s2 = r1.status(), r2.status()
            reconciled = s2["since_start"]["reconciliations"] >= 1
            if reconciled and s1["relay_stored"] == s2["relay_stored"] == union:
                break
            if time.perf_counter() - ready > 300:
                raise SystemExit(
                    f"reconciliation stalled: {s1['relay_stored']}, {s2['relay_stored']}"
                )
            time.sleep(0.05)  # the polling period
        done = time.perf_counter()
        counters = r2.status()["since_start"]
        assert r1.proc is not None
        assert r2.proc is not None
        peak1, peak2 = rss_kib(r1.proc.pid, "VmHWM"), rss_kib(r2.proc.pid, "VmHWM")
    finally:
        r1.close()
        r2.close()
    total = counters["reconcile_bytes"]
    print(
        f"  both hold all {union}: {done - ready:.2f} s after r2 was ready"
        f" ({done - launched:.2f} s after its launch)"
    )
    print(
        f"  reconciliation: {counters['reconciliations']} run, {counters['reconcile_rounds']}"
        f" messages received by r2, {total:,} bytes both ways,"
        f" {total - 32 * differ:,} beyond the {differ} missing ids"
    )
    print(f"  peak RSS with {stored} stored: r1 {peak1 / 1024:.1f} MiB, r2 {peak2 / 1024:.1f} MiB")
    return {
        f"recon_differ{differ}_s": done - ready,
        f"recon_differ{differ}_bytes": total,
        f"recon_differ{differ}_overhead_bytes": total - 32 * differ,
        "relay_peak_rss_mib": max(peak1, peak2) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drain", type=int, default=10_000)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--differ", type=int, default=100)
    figures.add_option(parser)
    args = parser.parse_args()
    results: figures.Figures = {}
    with tempfile.TemporaryDirectory(prefix="p2pdm-bench-relay-") as tmp:
        root = Path(tmp)
        print(f"== drain: a relay holds {args.drain} envelopes for B ==")
        results.update(drain(root / "drain", args.drain))
        print(f"== reconciliation protocol, {args.stored} ids a side ==")
        in_memory_table(args.stored)
        for differ in (args.differ, 0):
            print(f"== two relays, {args.stored} envelopes each, differing by {differ} ==")
            (root / f"recon{differ}").mkdir()
            found = two_relays(root / f"recon{differ}", args.stored, differ)
            peak = max(found.pop("relay_peak_rss_mib"), results.get("relay_peak_rss_mib", 0))
            results.update(found, relay_peak_rss_mib=peak)
    figures.write(args.json, results)


if __name__ == "__main__":
    main()
