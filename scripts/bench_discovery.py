"""Discovery on a LAN made of network namespaces: time to connect, and the cost of a flood.

    sudo .venv/bin/python scripts/bench_discovery.py [--trials 10] [--flood 100] [--seconds 20]

Needs root and iproute2 (it builds its own namespaces and deletes them at
the end, even on failure); run from the repo root.

1. Time to connect: two hosts start `p2pdm run` with no flags but a fixed
   port, each with a fresh home. Per trial, from each node's own log:
   launch -> "ready" (process start-up), and both "ready" -> both
   "connected" (mDNS announce, browse, resolve, dial, handshake).
   Medians, min and max over --trials.
2. A flood: one host announces --flood well-formed records, each a new
   made-up node id, all pointing at an address where nothing listens. A
   node on another host runs for --seconds; its status shows how many
   hints it took and how many dials they cost, next to the bound its dial
   policy promises (discovery_dial_burst + discovery_dial_rate x seconds).
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pdm.transport import TransportLimits
from scripts import figures
from tests.netns import LineReader, NetnsLab, netns_available
from tests.nodeproc import DEADLINE, NodeProcess, init_home

PORT = 7707
PROBE = str(Path(__file__).resolve().parent.parent / "tests" / "mdns_probe.py")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_time(line: str) -> float:
    """The wall-clock time at the start of a log line (the logger's asctime)."""
    match = _STAMP.match(line)
    if match is None:
        raise ValueError(f"no timestamp in log line {line!r}")
    stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def one_trial(lab: NetnsLab, work: Path, trial: int) -> tuple[float, float]:
    """(start-up seconds, discovery seconds) for one pair of fresh nodes."""
    nodes = []
    for i in range(2):
        home = work / f"t{trial}-{i}"
        init_home(home)
        nodes.append(NodeProcess(home, prefix=lab.prefix(i), listen=f"0.0.0.0:{PORT}", mdns=True))
    launched = time.time()
    errors: list[BaseException] = []

    def start(node: NodeProcess) -> None:
        try:
            node.start()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in nodes]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        if errors:
            raise errors[0]
        ready = [log_time(next(x for x in n.log if "ready:" in x)) for n in nodes]
        connected = [log_time(first_line(n, "p2pdm.node: connected ")) for n in nodes]
        return max(ready) - launched, max(connected) - max(ready)
    finally:
        for node in nodes:
            node.close()


def first_line(node: NodeProcess, needle: str) -> str:
    """The first log line with `needle`, whether already read or still to come."""
    seen = next((line for line in node.log if needle in line), None)
    return seen if seen is not None else node.wait_for_line(needle)


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.2f} s"
        f" (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
    )


def time_to_connect(trials: int, work: Path) -> figures.Figures:
    startup, discovery = [], []
    with NetnsLab(2) as lab:
        for trial in range(trials):
            up, found = one_trial(lab, work, trial)
            startup.append(up)
            discovery.append(found)
            print(f"  trial {trial + 1}: start-up {up:.2f} s, ready -> connected {found:.2f} s")
    print(f"process start-up (launch -> ready):  {summary(startup)}")
    print(f"discovery (ready -> connected):      {summary(discovery)}")
    total = [u + d for u, d in zip(startup, discovery, strict=True)]
    print(f"launch -> connected:                 {summary(total)}")
    return {"startup_s": startup, "discovery_s": discovery, "launch_to_connected_s": total}


def flood_cost(count: int, seconds: float, work: Path) -> figures.Figures:
    limits = TransportLimits()
    with NetnsLab(2) as lab:
        home = work / "flooded"
        init_home(home)
        node = NodeProcess(home, prefix=lab.prefix(0), listen=f"0.0.0.0:{PORT}", mdns=True)
        try:
            node.start()
            started = time.monotonic()
            # Nothing listens on host 1's port 9: every dial is refused at once,
            # the cheapest failure, so the dial policy alone bounds the cost.
            argv = [sys.executable, PROBE, "--raw", "--address", lab.host(1).address]
            argv += ["--flood", str(count), "--port", "9", "--seconds", str(seconds + 30)]
            flooder = lab.popen(
                1, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert flooder.stdout is not None
            LineReader(flooder.stdout).wait_for(lambda line: '"flooded"' in line, DEADLINE)
            flooded = time.monotonic()
            left = seconds - (flooded - started)
            if left > 0:
                time.sleep(left)  # a benchmark: the figure is what a fixed time costs
            elapsed = time.monotonic() - started
            discovery = node.status()["discovery"]
        finally:
            node.close()
    bound = limits.discovery_dial_burst + limits.discovery_dial_rate * elapsed
    print(f"flood of {count} made-up ids announced in {flooded - started:.1f} s")
    print(f"  node ran {elapsed:.1f} s and took {discovery['mdns_hints']} hints")
    print(
        f"  dials started: {discovery['dials']} (discovery-only: {discovery['discovery_dials']});"
        f" bound {bound:.0f} = burst {limits.discovery_dial_burst:g}"
        f" + {limits.discovery_dial_rate:g}/s x {elapsed:.1f} s"
    )
    print(f"  dials per fake announcement: {discovery['dials'] / count:.2f}")
    return {
        "flood_dials": discovery["dials"],
        "flood_dial_bound": bound,
        "flood_dials_per_announcement": discovery["dials"] / count,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--flood", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    figures.add_option(parser)
    args = parser.parse_args()
    reason = netns_available()
    if reason is not None:
        print(f"bench_discovery: {reason}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="p2pdm-bench-discovery-"))
    try:
        print(f"== time to connect, two hosts, {args.trials} trials ==")
        results = time_to_connect(args.trials, work)
        print(f"== a flood of {args.flood} fake announcements ==")
        results.update(flood_cost(args.flood, args.seconds, work))
        figures.write(args.json, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
