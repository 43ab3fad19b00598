"""Soak: 10 nodes exchange texts at a steady rate for N minutes, with restarts.

    .venv/bin/python scripts/soak.py --minutes 60 [--nodes 10] [--rate 20]

Real `p2pdm run` processes on 127.0.0.1 (mDNS off), each bootstrapped to
the first two. Every second `--rate` texts go from random running nodes to
random others. The last half of the nodes are restarted in turn, one every
`--restart-every` seconds, alternately stopped cleanly and SIGKILLed; the
first half run throughout and are the ones a leak would show in.

Every `--sample` seconds it prints, over all nodes: RSS, open file
descriptors, store and WAL file sizes, mail waiting in outboxes and
relays, and texts sent and delivered. At the end it lets the mesh drain,
prints how many texts were delivered, and the slopes over time (least
squares, after the first fifth of the run) of each always-on node's RSS
and descriptors, and of the queues: a leak shows as a slope well above
the noise between samples. `--json FILE` keeps every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pdm.apiclient import ApiRequestError, ApiUnavailable
from p2pdm.envelope import MessageKind
from tests.nodeproc import NodeProcess, init_home

DRAIN_LIMIT = 300.0


@dataclass
class Sample:
    at: float
    """Seconds since the workload began."""
    rss_mib: list[float | None]
    fds: list[int | None]
    store_mib: list[float]
    wal_mib: list[float]
    outbox_pending: int
    relay_stored: int
    sent: int
    delivered: int

    def row(self) -> dict[str, Any]:
        return self.__dict__


def rss_mib(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:"))
    return kib / 1024


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def file_mib(path: Path) -> float:
    return path.stat().st_size / (1 << 20) if path.exists() else 0.0


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per hour."""
    if len(points) < 3:
        return float("nan")
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids: list[str] = []
        self.nodes: list[NodeProcess] = []

    def start(self, count: int) -> None:
        root = self.root
        self.ids = [init_home(root / f"n{i}") for i in range(count)]
        for i in range(count):
            extra = [a for j in (0, 1) if j < i for a in ("--bootstrap", self.nodes[j].listen)]
            node = NodeProcess(root / f"n{i}", *extra)
            self.nodes.append(node)  # before start: close() also ends a node that never got ready
            node.start()
            node.listen = node.address  # a restart comes back at the same address

    def running(self, i: int) -> bool:
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    def forget_logs(self) -> None:
        """Drop the nodes' collected log lines: an hour of them is not what is measured."""
        for node in self.nodes:
            while True:
                try:
                    node.lines.get_nowait()
                except queue.Empty:
                    break
            node.log.clear()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="texts per second")
    parser.add_argument("--restart-every", type=float, default=30.0, help="seconds")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # A SIGTERM ends the run like Ctrl-C: the nodes are stopped and removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="p2pdm-soak-"))
    mesh = Mesh(root)
    steady = list(range(args.nodes // 2))
    restarting = list(range(args.nodes // 2, args.nodes))
    samples: list[Sample] = []
    sent = 0
    failed_posts = 0
    restarts = 0
    try:
        mesh.start(args.nodes)
        began = time.monotonic()
        end = began + 60 * args.minutes
        next_post = began
        next_restart = began + args.restart_every
        next_sample = began
        while True:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(take_sample(mesh, now - began, sent))
                print(format_sample(samples[-1], restarts, failed_posts), flush=True)
                mesh.forget_logs()
                next_sample += args.sample
            if now >= end:
                break
            if now >= next_restart:
                victim = restarting[restarts % len(restarting)]
                node = mesh.nodes[victim]
                if restarts % 2:
                    node.kill()
                else:
                    node.stop()
                node.start()
                restarts += 1
                next_restart += args.restart_every
            if now >= next_post:
                up = [i for i in range(args.nodes) if mesh.running(i)]
                src = rng.choice(up)
                dst = rng.choice([i for i in range(args.nodes) if i != src])
                try:
                    mesh.nodes[src].api.post(
                        "/v1/messages", {"to": mesh.ids[dst], "texts": [f"soak {sent}"]}
                    )
                    sent += 1
                except (ApiRequestError, ApiUnavailable, OSError):
                    failed_posts += 1
                next_post += 1 / args.rate
                continue
            time.sleep(max(0.0, min(next_post, next_restart, next_sample) - time.monotonic()))
        drained = drain(mesh, sent)
        samples.append(take_sample(mesh, time.monotonic() - began, sent))
        print(format_sample(samples[-1], restarts, failed_posts) + "  (after the drain)")
    finally:
        mesh.close()
        shutil.rmtree(root, ignore_errors=True)
    report(samples, steady, sent, drained, restarts, failed_posts)
    if args.json:
        args.json.write_text(json.dumps([s.row() for s in samples]) + "\n")
    return 0


def take_sample(mesh: Mesh, at: float, sent: int) -> Sample:
    rss: list[float | None] = []
    fds: list[int | None] = []
    pending = relayed = delivered = 0
    for i, node in enumerate(mesh.nodes):
        pid = node.proc.pid if node.proc is not None and mesh.running(i) else None
        rss.append(rss_mib(pid) if pid else None)
        fds.append(open_fds(pid) if pid else None)
        if pid:
            try:
                status = node.status()
            except (ApiRequestError, ApiUnavailable, OSError):
                continue
            pending += status["outbox_pending"]
            relayed += status["relay_stored"]
    for node in mesh.nodes:
        delivered += delivered_count(node.home)
    stores = [file_mib(node.home / "store.db") for node in mesh.nodes]
    wals = [file_mib(node.home / "store.db-wal") for node in mesh.nodes]
    return Sample(at, rss, fds, stores, wals, pending, relayed, sent, delivered)


def delivered_count(home: Path) -> int:
    """Texts this node sent that are delivered: a read-only count in its store."""
    db = sqlite3.connect(f"file:{home / 'store.db'}?mode=ro", uri=True, timeout=30)
    try:
        sql = "SELECT count(*) FROM outbox WHERE state IN ('delivered', 'read') AND kind = ?"
        count: int = db.execute(sql, (MessageKind.TEXT,)).fetchone()[0]
    finally:
        db.close()
    return count


def format_sample(s: Sample, restarts: int, failed_posts: int) -> str:
    rss = [r for r in s.rss_mib if r is not None]
    fds = [f for f in s.fds if f is not None]
    return (
        f"{s.at / 60:6.1f} min  RSS total {sum(rss):6.1f} MiB (max {max(rss, default=0):5.1f})"
        f"  fds {sum(fds):4d}  stores {sum(s.store_mib):6.1f} MiB + WAL {sum(s.wal_mib):5.1f}"
        f"  pending {s.outbox_pending:5d}  relay {s.relay_stored:5d}"
        f"  sent {s.sent:6d}  delivered {s.delivered:6d}  restarts {restarts}"
        f"  failed posts {failed_posts}"
    )


def drain(mesh: Mesh, sent: int) -> float:
    """Wait until every node has delivered what it sent; return the seconds taken."""
    began = time.monotonic()
    while time.monotonic() - began < DRAIN_LIMIT:
        if sum(delivered_count(n.home) for n in mesh.nodes) >= sent:
            break
        time.sleep(1.0)  # polling stores of ten processes: no one event to wait on
    return time.monotonic() - began


def report(
    samples: list[Sample],
    steady: list[int],
    sent: int,
    drain_s: float,
    restarts: int,
    failed_posts: int,
) -> None:
    final = samples[-1]
    print(
        f"\n{sent} texts sent, {final.delivered} delivered after a {drain_s:.0f} s drain,"
        f" {restarts} restarts, {failed_posts} posts refused (node down)"
    )
    body = samples[len(samples) // 5 : -1] or samples
    print("slopes after the first fifth (least squares over the samples):")
    for i in steady:
        rss_points = [(s.at, r) for s in body if (r := s.rss_mib[i]) is not None]
        fd_points = [(s.at, float(f)) for s in body if (f := s.fds[i]) is not None]
        values = [v for _, v in rss_points]
        print(
            f"  node {i}: RSS {slope_per_hour(rss_points):+6.2f} MiB/h"
            f" (from {values[0]:.1f} to {values[-1]:.1f}, spread {max(values) - min(values):.1f})"
            f", fds {slope_per_hour(fd_points):+6.2f}/h"
            f" (from {fd_points[0][1]:.0f} to {fd_points[-1][1]:.0f})"
        )
    pend = [(s.at, float(s.outbox_pending)) for s in body]
    relay = [(s.at, float(s.relay_stored)) for s in body]
    store = [(s.at, sum(s.store_mib)) for s in body]
    print(f"  outbox pending, all nodes: {slope_per_hour(pend):+.1f}/h")
    print(f"  relay held, all nodes: {slope_per_hour(relay):+.1f}/h")
    wal = [(s.at, sum(s.wal_mib)) for s in body]
    print(f"  WAL files, all nodes: {slope_per_hour(wal):+.1f} MiB/h")
    grown = sum(final.store_mib) - sum(samples[0].store_mib)
    per_text = grown * (1 << 20) / max(1, sent)
    print(
        f"  stores, all nodes: {slope_per_hour(store):+.1f} MiB/h"
        f" ({per_text:.0f} bytes per text sent, both sides' copies, kept by design)"
    )


if __name__ == "__main__":
    sys.exit(main())
