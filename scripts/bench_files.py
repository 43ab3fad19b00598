"""File transfer: throughput between two nodes, and peak memory against file size.

    .venv/bin/python scripts/bench_files.py [--sizes 10,50,100] [--runs 3] [--quick]

Run from the repo root; two `p2pdm run` processes on 127.0.0.1, mDNS off.
For each size (MiB), fresh processes A and B (B bootstraps to A), a file of
random bytes, and: the time from A's API accepting the file to B's "file
done" event (B fetched every chunk, checked each and the whole hash, and
moved the file into place), as MiB/s; then the peak RSS (VmHWM) of both
processes. Targets: >= 50 MiB/s for 100 MiB; peak RSS independent of the
file size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import figures
from scripts.bench_direct import rss_kib
from tests.nodeproc import DEADLINE, NodeProcess, init_home, wait_event

MIB = 1 << 20


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MIB))
            f.write(block)
            left -= len(block)


def one_transfer(root: Path, size_mib: int) -> tuple[float, float, float]:
    """MiB/s, and peak RSS of sender and receiver in MiB."""
    a_home, b_home = root / "a", root / "b"
    a_id = init_home(a_home)
    b_id = init_home(b_home)
    source = root / "payload.bin"
    write_random(source, size_mib * MIB)
    a = NodeProcess(a_home).start()
    b = NodeProcess(b_home, "--bootstrap", a.address)
    try:
        b.start()
        a.wait_connected(b_id)
        b.api.post("/v1/contacts", {"id": a_id})  # files are fetched from contacts
        with b.api.events("/v1/events") as events:
            started = time.perf_counter()
            answer = a.api.post("/v1/files", {"to": b_id, "path": str(source)})
            wait_event(
                events,
                "file",
                lambda e: e["id"] == answer["id"] and e["state"] == "done",
                timeout=10 * DEADLINE,
            )
            elapsed = time.perf_counter() - started
        assert a.proc is not None
        assert b.proc is not None
        rss_a = rss_kib(a.proc.pid, "VmHWM") / 1024
        rss_b = rss_kib(b.proc.pid, "VmHWM") / 1024
    finally:
        a.close()
        b.close()
    return size_mib / elapsed, rss_a, rss_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,100", help="file sizes in MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="sizes 10,100 and one run each")
    figures.add_option(parser)
    args = parser.parse_args()
    sizes = [10, 100] if args.quick else [int(s) for s in args.sizes.split(",")]
    runs = 1 if args.quick else args.runs
    results: figures.Figures = {}
    print(f"{'size':>8} {'MiB/s':>8} {'RSS A':>8} {'RSS B':>8}  (median of {runs})")
    for size in sizes:
        rates, peaks_a, peaks_b = [], [], []
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="p2pdm-bench-files-") as tmp:
                rate, rss_a, rss_b = one_transfer(Path(tmp), size)
            rates.append(rate)
            peaks_a.append(rss_a)
            peaks_b.append(rss_b)
        print(
            f"{size:>5} MiB {statistics.median(rates):8.1f} {statistics.median(peaks_a):6.1f}MB"
            f" {statistics.median(peaks_b):6.1f}MB   rates {', '.join(f'{r:.1f}' for r in rates)}"
        )
        results[f"throughput_{size}mib_mib_per_s"] = rates
        results[f"peak_rss_sender_{size}mib_mib"] = peaks_a
        results[f"peak_rss_receiver_{size}mib_mib"] = peaks_b
    figures.write(args.json, results)


if __name__ == "__main__":
    main()
