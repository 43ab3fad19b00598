"""Two `p2pdm run` processes on 127.0.0.1: throughput, latency, memory.

    .venv/bin/python scripts/bench_direct.py [--messages 20000] [--rate 200] [--seconds 10]

1. Throughput: A's API is handed --messages texts for B (in requests of
   1,000); B's status counts messages committed to its inbox and A's counts
   receipts back (polled every 20 ms, so the script itself stays cheap).
   Also the CPU time each process spent per message, from /proc.
2. Latency at a light load: --rate messages/s for --seconds, one per API
   call; latency is from just before A's API call to B's "message" event
   reaching this script, so it includes both APIs.
3. Peak RSS of each process (VmHWM), and RSS sampled during the run.
Prints the crypto ceiling from bench_crypto's operations for comparison.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pdm import envelope
from p2pdm.envelope import MessageKind
from p2pdm.identity import Identity
from scripts import figures
from tests.nodeproc import NodeProcess, init_home


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def since_start(node: NodeProcess, counter: str) -> int:
    return int(node.status()["since_start"][counter])


def pump(
    node: NodeProcess,
    name: str,
    out: queue.Queue[tuple[float, dict[str, object]]],
    ready: threading.Event,
) -> None:
    events = node.api.events("/v1/events")
    ready.set()
    try:
        while True:
            event = events.next(timeout=None)
            if event is None:
                continue
            if event[0] == name:
                out.put((time.perf_counter(), event[1]))
    except Exception:  # the node went away: the run is over
        return


def ceiling() -> tuple[float, float]:
    alice, bob = Identity.generate(), Identity.generate()
    n = 500
    t0 = time.perf_counter()
    sealed = [
        envelope.seal(alice, bob.node_id, MessageKind.TEXT, "x" * 20, timestamp_ms=1, expires_ms=2)
        for _ in range(n)
    ]
    t1 = time.perf_counter()
    for s in sealed:
        envelope.open_envelope(bob, s)
    t2 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t1)


def main() -> None:
    # The event-reading thread must not wait out the main thread's 5 ms GIL
    # time slice before it can timestamp an event: that would be the
    # harness's latency, not the node's.
    sys.setswitchinterval(0.0005)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    figures.add_option(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="p2pdm-bench-") as tmp:
        root = Path(tmp)
        init_home(root / "a")
        b_id = init_home(root / "b")
        a = NodeProcess(root / "a").start()
        b = NodeProcess(root / "b", "--bootstrap", a.address)
        try:
            b.start()
            a.wait_connected(b_id)
            api = a.api
            samples: list[tuple[int, int]] = []
            assert a.proc is not None
            assert b.proc is not None

            # --- throughput
            total = args.messages
            cpu_a0, cpu_b0 = cpu_times(a.proc.pid), cpu_times(b.proc.pid)
            t0 = time.perf_counter()
            for start in range(0, total, 1000):
                count = min(1000, total - start)
                api.post(
                    "/v1/messages",
                    {"to": b_id, "texts": [f"bench {start + i}" for i in range(count)]},
                )
            t_accepted = time.perf_counter()
            t_last_in = t_last_receipt = 0.0
            while not (t_last_in and t_last_receipt):
                time.sleep(0.02)  # the polling period, not a wait for a result
                now = time.perf_counter()
                if not t_last_in and since_start(b, "received") >= total:
                    t_last_in = now
                if not t_last_receipt and since_start(a, "delivered") >= total:
                    t_last_receipt = now
                samples.append((rss_kib(a.proc.pid, "VmRSS"), rss_kib(b.proc.pid, "VmRSS")))
                if now - t0 > 600:
                    raise SystemExit("stalled: not all messages arrived within 10 minutes")
            # Per message: (user, system) for each process.
            user_a, sys_a = cpu_times(a.proc.pid)
            user_b, sys_b = cpu_times(b.proc.pid)
            cpu_a = ((user_a - cpu_a0[0]) / total, (sys_a - cpu_a0[1]) / total)
            cpu_b = ((user_b - cpu_b0[0]) / total, (sys_b - cpu_b0[1]) / total)
            accept_rate = total / (t_accepted - t0)
            in_rate = total / (t_last_in - t0)
            receipt_rate = total / (t_last_receipt - t0)

            # --- latency at a light load
            received: queue.Queue[tuple[float, dict[str, object]]] = queue.Queue()
            ready_b = threading.Event()
            threading.Thread(
                target=pump, args=(b, "message", received, ready_b), daemon=True
            ).start()
            ready_b.wait(10)

            # --- latency at a light load
            interval = 1 / args.rate
            sent_at: dict[str, float] = {}
            lat: list[float] = []
            n = int(args.rate * args.seconds)
            next_send = time.perf_counter()
            for i in range(n):
                now = time.perf_counter()
                if now < next_send:
                    time.sleep(next_send - now)  # pacing the load, not waiting for a result
                next_send += interval
                t_send = time.perf_counter()
                mid = api.post("/v1/messages", {"to": b_id, "text": f"ping {i}"})["ids"][0]
                sent_at[mid] = t_send
                while True:
                    try:
                        t_in, data = received.get_nowait()
                    except queue.Empty:
                        break
                    if data["id"] in sent_at:
                        lat.append(t_in - sent_at[str(data["id"])])
            deadline = time.perf_counter() + 30
            while len(lat) < n and time.perf_counter() < deadline:
                try:
                    t_in, data = received.get(timeout=1)
                except queue.Empty:
                    continue
                if data["id"] in sent_at:
                    lat.append(t_in - sent_at[str(data["id"])])
            lat.sort()
            peak_a, peak_b = rss_kib(a.proc.pid, "VmHWM"), rss_kib(b.proc.pid, "VmHWM")
        finally:
            a.close()
            b.close()

    send_ceiling, recv_ceiling = ceiling()
    q = statistics.quantiles(lat, n=100)
    print(f"p2pdm direct benchmark: 2 processes on 127.0.0.1, {os.cpu_count()} cpus")
    print(f"throughput over {total} messages:")
    print(f"  accepted by A's API        {accept_rate:9,.0f} msgs/s")
    print(f"  committed in B's inbox     {in_rate:9,.0f} msgs/s")
    print(f"  receipts back at A         {receipt_rate:9,.0f} msgs/s")
    print(
        f"  CPU per message            A {sum(cpu_a) * 1e6:5.0f} us, B {sum(cpu_b) * 1e6:5.0f} us"
        f" (crypto alone: seal+sign {1e6 / send_ceiling:3.0f} us,"
        f" open+verify {1e6 / recv_ceiling:3.0f} us)"
    )
    print(f"    of which system (kernel)   A {cpu_a[1] * 1e6:5.0f} us, B {cpu_b[1] * 1e6:5.0f} us")
    print(f"latency at {args.rate:g} msgs/s ({len(lat)} of {n} measured, API to API):")
    print(
        f"  p50 {q[49] * 1000:6.2f} ms   p90 {q[89] * 1000:6.2f} ms   p99 {q[98] * 1000:6.2f} ms"
        f"   max {lat[-1] * 1000:6.2f} ms"
    )
    rss_a = [s[0] / 1024 for s in samples]
    rss_b = [s[1] / 1024 for s in samples]
    third = max(1, len(samples) // 3)
    a_first, a_last = statistics.mean(rss_a[:third]), statistics.mean(rss_a[-third:])
    b_first, b_last = statistics.mean(rss_b[:third]), statistics.mean(rss_b[-third:])
    print(
        f"memory: peak RSS A {peak_a / 1024:.1f} MiB, B {peak_b / 1024:.1f} MiB; "
        f"RSS first/last third of the run: A {a_first:.1f}/{a_last:.1f} MiB, "
        f"B {b_first:.1f}/{b_last:.1f} MiB"
    )
    print(
        f"crypto ceiling (one core): seal+sign {send_ceiling:,.0f}/s, "
        f"open+verify {recv_ceiling:,.0f}/s; B's inbox rate is "
        f"{in_rate / recv_ceiling:.2f} of the receive ceiling"
    )
    both = 1 / (1 / send_ceiling + 1 / recv_ceiling) * (os.cpu_count() or 1)
    print(
        f"two processes on {os.cpu_count()} cores with nothing but crypto could reach "
        f"{both:,.0f} msgs/s; B's inbox rate is {in_rate / both:.2f} of that"
    )
    figures.write(
        args.json,
        {
            "accepted_per_s": accept_rate,
            "inbox_per_s": in_rate,
            "receipts_per_s": receipt_rate,
            "cpu_a_us": sum(cpu_a) * 1e6,
            "cpu_b_us": sum(cpu_b) * 1e6,
            "kernel_a_us": cpu_a[1] * 1e6,
            "kernel_b_us": cpu_b[1] * 1e6,
            "crypto_ceiling_per_s": both,
            "inbox_over_crypto_ceiling": in_rate / both,
            "latency_p50_ms": q[49] * 1000,
            "latency_p90_ms": q[89] * 1000,
            "latency_p99_ms": q[98] * 1000,
            "latency_max_ms": lat[-1] * 1000,
            "peak_rss_a_mib": peak_a / 1024,
            "peak_rss_b_mib": peak_b / 1024,
        },
    )


if __name__ == "__main__":
    main()
