"""A community mesh in one process: real nodes (sessions, SQLite stores,
relays) over TCP on 127.0.0.1, with people coming and going.

    .venv/bin/python scripts/simulate_mesh.py [--sizes 25,50,100] [--seconds 60]
        [--drain 30] [--drain-max 300] [--relays N] [--messages-per-node 3] [--seed 1]
        [--json docs/mesh.json] [--plot docs/mesh.png]

For each size: a few always-on relays (relay on; every other node has
relay off, as a laptop or phone would) and ordinary nodes that are online
and offline in turns (exponential periods, mean --online and --offline
seconds; a node leaves gracefully and comes back with the same identity,
store and port). Every node bootstraps to the relays; each has a few random
contacts, and more are added as people write to each other. A workload of
direct messages, each from an online sender to a random other node, is
spread over --seconds, each send on time in its own task. Then every node
comes online (the drain) until every message has arrived, or none arrived
for --drain seconds, or --drain-max seconds passed.

Reported per size:
- delivery ratio at the end of the schedule, of messages whose recipient
  was online for 5 s or more after they were sent, and at the end of the
  drain, of all messages (target 100 %: everyone came online before expiry);
- delivery latency percentiles (send call to the recipient's inbox commit);
- copies stored per message (relay copies ever taken, from "held" events);
- bytes sent per delivered message (all peer traffic of all nodes, with
  handshakes, pings, peer exchange and reconciliation), and its ratio to the
  mean envelope size (target <= 4 at 100 nodes);
- memory: the process's peak RSS divided by the number of nodes;
- how far into the drain the last message arrived, and the process's CPU
  time over wall time (near 1 or above: the nodes were short of CPU, and
  latencies are mostly waiting).

The nodes share one process (and one core's worth of GIL), so latencies
include waiting for other nodes' work. All nodes are on 127.0.0.1, so the
per-address handshake rate limit is raised for the simulation; everything
else is the node's defaults. Stores live under /dev/shm when it exists
(SQLite still syncs; the disk is memory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pdm.identity import Identity
from p2pdm.node import Node, NodeConfig
from p2pdm.store import Store
from p2pdm.transport import TransportLimits
from scripts.bench_direct import rss_kib

# A delivery that needed the recipient online counts as deliverable once it
# was online this long after the send (time to connect and be pushed to).
DELIVERABLE_AFTER_S = 5.0
# Everyone is on 127.0.0.1: per-source handshake limits would see one host.
SIM_LIMITS = TransportLimits(handshake_rate=1000.0, handshake_burst=1000.0)
CONTACTS_PER_NODE = 3
# A send that takes longer went to a node that was stopping.
SEND_TIMEOUT = 10.0


def listen_ports(count: int, rng: random.Random) -> list[int]:
    """Free ports below the kernel's ephemeral range: a node that is offline
    must find its port free again, and an outgoing connection's ephemeral
    source port could otherwise take it meanwhile."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    candidate = rng.randrange(10_000, max(10_001, low - 4 * count))
    while len(ports) < count:
        if candidate >= low:
            raise SystemExit("no free ports below the ephemeral range")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", candidate))
            ports.append(candidate)
        candidate += 1
    return ports


@dataclass
class Member:
    index: int
    identity: Identity
    home: Path
    port: int
    relay: bool
    periods: list[tuple[float, float]]
    """Online intervals, in seconds from the start of the run."""
    node: Node | None = None
    online_since: float | None = None

    def online_at(self, t: float) -> bool:
        return any(start <= t < end for start, end in self.periods)

    def online_for_after(self, t: float, seconds: float) -> bool:
        """Online for `seconds` in one stretch that ends after `t`."""
        return any(min(end, math.inf) - max(start, t) >= seconds for start, end in self.periods)


@dataclass
class Sent:
    message_id: bytes
    sender: int
    recipient: int
    at: float
    size: int


@dataclass
class Run:
    nodes: int
    relays: int
    seconds: float
    members: list[Member] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    arrived: dict[bytes, float] = field(default_factory=dict)
    held: int = 0
    cpu_busy: float = 0.0
    """Process CPU time over wall time for the whole run (the load it was under)."""
    drained: float = 0.0
    """Seconds of drain it took: to the last arrival, or until it gave up."""
    done: trio.Event = field(default_factory=trio.Event)
    """Set when the drain ends: every node then stops."""
    traffic: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    """Plaintext bytes of frames sent by all nodes, by frame type."""
    """Bytes sent by all nodes (added as each node stops)."""
    started: float = 0.0

    def now(self) -> float:
        return time.monotonic() - self.started

    def traffic_now(self) -> int:
        """Bytes sent so far by all nodes, stopped and running."""
        running = sum(m.node.traffic()[0] for m in self.members if m.node is not None)
        return self.traffic + running


def schedule(
    rng: random.Random, seconds: float, online: float, offline: float
) -> list[tuple[float, float]]:
    """Alternating online/offline stretches over [0, seconds)."""
    periods, t, up = [], 0.0, rng.random() < online / (online + offline)
    while t < seconds:
        length = rng.expovariate(1 / (online if up else offline))
        if up:
            periods.append((t, min(seconds, t + length)))
        t += length
        up = not up
    return periods


async def live(run: Run, member: Member, relay_addresses: list[tuple[str, int]]) -> None:
    """Run `member`'s node through its online periods, then the drain."""
    periods = [*member.periods, (run.seconds, math.inf)]  # the drain ends on run.done
    for start, end in periods:
        await trio.sleep(max(0.0, start - run.now()))
        if run.now() >= end:
            continue
        bootstrap = tuple(a for a in relay_addresses if a[1] != member.port)
        config = NodeConfig(
            home=member.home,
            listen=(("127.0.0.1", member.port),),
            bootstrap=bootstrap,
            mdns=False,
            relay=member.relay,
            limits=SIM_LIMITS,
        )
        store = Store.open(member.home / "store.db")
        node = Node(config, member.identity, store)
        events = node.events.subscribe()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                nursery.start_soon(watch, run, events)
                member.node = node
                if end == math.inf:
                    await run.done.wait()
                else:
                    await trio.sleep(max(0.0, end - run.now()))
                member.node = None
                await node.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            member.node = None
            run.traffic += node.traffic()[0]
            run.frames.update(node.frame_bytes())
            store.close()
            # Events published just before the stop, not yet read by watch().
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                while True:
                    take(run, *events.receive_nowait())


async def watch(run: Run, events: trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]]) -> None:
    async for name, data in events:
        take(run, name, data)


def take(run: Run, name: str, data: dict[str, Any]) -> None:
    if name == "message":
        run.arrived.setdefault(bytes.fromhex(data["id"]), run.now())
    elif name == "held":
        run.held += 1


async def workload(run: Run, rng: random.Random, count: int, after: float) -> None:
    """`count` messages at random times after `after`, each from an online sender.

    Each send is its own task, so a slow commit never delays the next send
    past its time (which would squeeze the late ones into the drain)."""
    times = sorted(rng.uniform(after + 1.0, run.seconds - 1.0) for _ in range(count))
    async with trio.open_nursery() as nursery:
        for n, at in enumerate(times):
            await trio.sleep(max(0.0, at - run.now()))
            online = [m for m in run.members if m.node is not None]
            if not online:
                continue
            sender = rng.choice(online)
            recipient = rng.choice([m for m in run.members if m is not sender])
            assert sender.node is not None
            nursery.start_soon(send_one, run, n, sender, sender.node, recipient)


async def send_one(run: Run, n: int, sender: Member, node: Node, recipient: Member) -> None:
    sent_at = run.now()
    # The sender may stop this instant: its committer then never answers
    # (a daemon's API stops with it; here the workload is outside it).
    mid = None
    with trio.move_on_after(SEND_TIMEOUT):
        try:
            [mid] = await node.send_texts(
                recipient.identity.node_id, [f"message {n} to {recipient.index}"]
            )
        except Exception as exc:
            print(f"  send {n} failed: {exc}", file=sys.stderr)
    if mid is None or sender.node is not node:
        return  # not sent, or the sender stopped meanwhile (its store is closed)
    row = node.store.outbox_message(mid)
    run.sent.append(
        Sent(mid, sender.index, recipient.index, sent_at, len(row.envelope) if row else 0)
    )


async def simulate(size: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    # Each node runs its store in worker threads; trio's default limit (40
    # threads for the whole process) would make 100 nodes queue for them.
    trio.to_thread.current_default_thread_limiter().total_tokens = 4 * size
    rng = random.Random(args.seed * 1000 + size)
    relays = args.relays or max(2, size // 20)
    run = Run(size, relays, args.seconds)
    ports = listen_ports(size, rng)
    for i in range(size):
        home = root / f"n{i}"
        home.mkdir()
        is_relay = i < relays
        periods = (
            [(0.0, args.seconds)]
            if is_relay
            else schedule(rng, args.seconds, args.online, args.offline)
        )
        run.members.append(Member(i, Identity.generate(), home, ports[i], is_relay, periods))
    # A few contacts each, so the dial loop has people to keep connected.
    for member in run.members[relays:]:
        store = Store.open(member.home / "store.db")
        for other in rng.sample(run.members[relays:], CONTACTS_PER_NODE):
            if other is not member:
                store.add_contact(other.identity.node_id, None, 0)
        store.close()
    relay_addresses = [("127.0.0.1", m.port) for m in run.members[:relays]]
    # Warm-up: everyone online at first, so people have met (the mesh exists
    # already); traffic is counted from its end.
    for member in run.members:
        member.periods = [(0.0, args.warmup)] + [
            (start + args.warmup, end + args.warmup) for start, end in member.periods
        ]
    run.seconds += args.warmup
    run.started = time.monotonic()
    cpu_at_start = time.process_time()
    async with trio.open_nursery() as nursery:
        for member in run.members:
            nursery.start_soon(live, run, member, relay_addresses)
        await trio.sleep(args.warmup)
        warm_traffic = run.traffic_now()
        await workload(run, rng, args.messages_per_node * size, args.warmup)
        await trio.sleep(max(0.0, run.seconds - run.now()))
        at_schedule_end = dict(run.arrived)
        schedule_traffic = run.traffic_now() - warm_traffic
        await drain(run, args.drain, args.drain_max)
        run.done.set()
    run.cpu_busy = (time.process_time() - cpu_at_start) / run.now()
    explain_missing(run)
    return report(run, at_schedule_end, schedule_traffic)


async def drain(run: Run, quiet: float, longest: float) -> None:
    """Everyone is online: wait until every message arrived, or none arrived
    for `quiet` seconds, or `longest` seconds passed."""
    started = last_count_at = run.now()
    last_count = -1
    while run.now() - started < longest:
        count = sum(1 for s in run.sent if s.message_id in run.arrived)
        if count == len(run.sent):
            break
        if count != last_count:
            last_count, last_count_at = count, run.now()
        elif run.now() - last_count_at >= quiet:
            break
        await trio.sleep(0.5)  # the polling period of this harness
    arrivals = [run.arrived[s.message_id] for s in run.sent if s.message_id in run.arrived]
    run.drained = max([0.0, *(t - started for t in arrivals)])


def explain_missing(run: Run) -> None:
    """For each message that never arrived, where it ended up (from the stores)."""
    for sent in run.sent:
        if sent.message_id in run.arrived:
            continue
        sender, recipient = run.members[sent.sender], run.members[sent.recipient]
        with Store.open(sender.home / "store.db") as store:
            row = store.outbox_message(sent.message_id)
        holders = []
        for member in run.members:
            with Store.open(member.home / "store.db") as store:
                if store.relay_rows([sent.message_id]):
                    holders.append(member.index)
        with Store.open(recipient.home / "store.db") as store:
            seen = store.is_seen(sent.message_id)
            stored = store.in_inbox(sent.message_id)
        state = (
            "no outbox row" if row is None else f"{row.state.value}, relayed_to {row.relayed_to}"
        )
        print(
            f"  missing: {sent.message_id.hex()[:12]} from {sent.sender} to {sent.recipient}"
            f" sent at {sent.at:.1f} s; sender: {state}; held by {holders or 'no relay'};"
            f" recipient has seen it: {seen}, stored it: {stored};"
            f" recipient online {[(round(a), round(b)) for a, b in recipient.periods]}",
            file=sys.stderr,
        )


def report(run: Run, at_schedule_end: dict[bytes, float], schedule_traffic: int) -> dict[str, Any]:
    members = run.members
    deliverable = [
        s for s in run.sent if members[s.recipient].online_for_after(s.at, DELIVERABLE_AFTER_S)
    ]
    delivered_early = [s for s in deliverable if s.message_id in at_schedule_end]
    delivered = [s for s in run.sent if s.message_id in run.arrived]
    latencies = sorted(run.arrived[s.message_id] - s.at for s in delivered)
    q = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else [0.0] * 99
    )
    envelope = statistics.mean(s.size for s in run.sent) if run.sent else 0
    traffic = run.traffic
    per_delivered = traffic / len(delivered) if delivered else math.inf
    # In the schedule: after the warm-up, before the drain.
    in_schedule = schedule_traffic / len(delivered_early) if delivered_early else math.inf
    return {
        "nodes": run.nodes,
        "relays": run.relays,
        "messages": len(run.sent),
        "deliverable_in_schedule": len(deliverable),
        "delivered_in_schedule": len(delivered_early),
        "delivery_ratio_in_schedule": len(delivered_early) / len(deliverable)
        if deliverable
        else 1.0,
        "delivered": len(delivered),
        "delivery_ratio": len(delivered) / len(run.sent) if run.sent else 1.0,
        "drain_s": run.drained,
        "cpu_busy": run.cpu_busy,
        "latency_s": {
            "p50": q[49],
            "p90": q[89],
            "p99": q[98],
            "max": latencies[-1] if latencies else 0,
        },
        "copies_per_message": run.held / len(run.sent) if run.sent else 0,
        "envelope_bytes": envelope,
        "bytes_sent": traffic,
        # The rest of bytes_sent: handshakes, length prefixes, encryption tags.
        "frame_bytes_sent": dict(run.frames.most_common()),
        "bytes_per_delivered": per_delivered,
        "bytes_per_delivered_over_envelope": per_delivered / envelope if envelope else math.inf,
        "schedule_bytes_sent": schedule_traffic,
        "schedule_bytes_per_delivered": in_schedule,
        "schedule_bytes_per_delivered_over_envelope": (
            in_schedule / envelope if envelope else math.inf
        ),
        "peak_rss_per_node_kib": rss_kib(os.getpid(), "VmHWM") / run.nodes,
    }


def show(r: dict[str, Any]) -> None:
    lat = r["latency_s"]
    print(
        f"{r['nodes']:>4} nodes ({r['relays']} relays), {r['messages']} messages:\n"
        f"  delivered within the schedule  {r['delivered_in_schedule']}/"
        f"{r['deliverable_in_schedule']} deliverable"
        f" ({100 * r['delivery_ratio_in_schedule']:.1f} %)\n"
        f"  delivered after the drain      {r['delivered']}/{r['messages']}"
        f" ({100 * r['delivery_ratio']:.1f} %), the last {r['drain_s']:.1f} s into it\n"
        f"  process CPU / wall time        {r['cpu_busy']:.2f} (over 1: more than one core)\n"
        f"  latency                        p50 {lat['p50']:.2f} s  p90 {lat['p90']:.2f} s"
        f"  p99 {lat['p99']:.2f} s  max {lat['max']:.2f} s\n"
        f"  relay copies per message       {r['copies_per_message']:.2f}\n"
        f"  bytes sent per delivered       {r['bytes_per_delivered']:,.0f}"
        f" ({r['bytes_per_delivered_over_envelope']:.1f} x the"
        f" {r['envelope_bytes']:.0f}-byte envelope), whole run\n"
        f"                                 {r['schedule_bytes_per_delivered']:,.0f}"
        f" ({r['schedule_bytes_per_delivered_over_envelope']:.1f} x) in the schedule, after"
        " the warm-up\n"
        f"  peak RSS per node              {r['peak_rss_per_node_kib'] / 1024:.2f} MiB\n"
        f"  bytes sent by kind, whole run  {by_kind(r)}"
    )


def by_kind(r: dict[str, Any]) -> str:
    """Shares of all bytes sent: each frame type, and the rest (handshakes, framing)."""
    total = r["bytes_sent"] or 1
    frames = r["frame_bytes_sent"]
    parts = [f"{kind} {100 * n / total:.0f} %" for kind, n in frames.items() if n / total >= 0.01]
    rest = total - sum(frames.values())
    return ", ".join([*parts, f"handshakes and framing {100 * rest / total:.0f} %"])


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["nodes"] for r in results]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    ax.plot(sizes, [100 * r["delivery_ratio"] for r in results], "o-", label="after drain")
    ax.plot(
        sizes, [100 * r["delivery_ratio_in_schedule"] for r in results], "s--", label="in schedule"
    )
    ax.set_title("delivery ratio (%)")
    ax.legend()
    ax = axes[0][1]
    for key in ("p50", "p90", "p99"):
        ax.plot(sizes, [r["latency_s"][key] for r in results], "o-", label=key)
    ax.set_title("delivery latency (s)")
    ax.legend()
    ax = axes[1][0]
    ax.plot(
        sizes,
        [r["schedule_bytes_per_delivered_over_envelope"] for r in results],
        "o-",
        label="bytes sent per delivered ÷ envelope",
    )
    ax.plot(sizes, [r["copies_per_message"] for r in results], "s--", label="relay copies/message")
    ax.axhline(4, color="grey", linestyle=":", label="target 4x")
    ax.set_title("cost per message")
    ax.legend()
    ax = axes[1][1]
    ax.plot(sizes, [r["peak_rss_per_node_kib"] / 1024 for r in results], "o-")
    ax.set_title("peak RSS per node (MiB)")
    for row in axes:
        for a in row:
            a.set_xlabel("nodes")
            a.set_xticks(sizes)
    fig.suptitle("p2pdm mesh simulation (scripts/simulate_mesh.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _without(argv: list[str], *options: str) -> list[str]:
    """`argv` less the given options and their values."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not any(arg.startswith(o + "=") for o in options):
            out.append(arg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="25,50,100")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--drain", type=float, default=30.0, help="end the drain after this long with no arrival, s"
    )
    parser.add_argument("--drain-max", type=float, default=300.0, help="longest drain, s")
    parser.add_argument("--warmup", type=float, default=15.0, help="all online first, s")
    parser.add_argument("--online", type=float, default=20.0, help="mean online stretch, s")
    parser.add_argument("--offline", type=float, default=20.0, help="mean offline stretch, s")
    parser.add_argument("--relays", type=int, default=0, help="default: max(2, nodes / 20)")
    parser.add_argument("--messages-per-node", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write a PNG of the figures here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    if len(sizes) == 1:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="p2pdm-mesh-", dir=base) as tmp:
            results.append(trio.run(simulate, sizes[0], args, Path(tmp)))
        show(results[0])
    else:
        # One process per size, so peak memory is each size's own.
        for size in sizes:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                argv = list(sys.argv[1:])
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        *_without(argv, "--sizes", "--json", "--plot"),
                        "--sizes",
                        str(size),
                        "--json",
                        out.name,
                    ],
                    check=True,
                )
                results += json.loads(Path(out.name).read_text())
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
