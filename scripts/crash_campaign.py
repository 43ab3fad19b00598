"""Crash campaign: SIGKILL receiver, relay or sender mid-stream, N times.

    .venv/bin/python scripts/crash_campaign.py [--runs 100] [--seed 1] [--json FILE]

Each run starts three real nodes on 127.0.0.1 (mDNS off), streams 300 texts
from A to B, kills the run's victim (receiver, relay, sender in turn) with
SIGKILL at a random point of the stream, restarts it and checks: nothing
A's API acknowledged is lost, nothing is stored twice in B's inbox, each
hop kept what it acknowledged, every store passes `PRAGMA integrity_check`.
Prints one line per run and a summary; exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crash_campaign import TEXTS_PER_RUN, RunResult, campaign


def show(result: RunResult) -> None:
    s = result.summary()
    print(
        f"run {s['run']:3d} {s['victim']:8s} receiver {'up  ' if s['receiver_online'] else 'away'}"
        f" kill@{s['kill_after']:3d} held {s['held_at_kill']:3d}"
        f" acked {s['acknowledged']:3d} in A {s['sent_by_a']:3d}"
        f" delivered {s['delivered']:3d} lost {s['lost']} hop-lost {s['hop_lost']}"
        f" dup {s['duplicated']} integrity {'ok' if s['integrity_ok'] else 'BAD'}"
        f" {s['seconds']:5.1f}s" + (f"  ERROR {s['error']}" if s["error"] else ""),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    began = time.monotonic()
    results = campaign(args.runs, args.seed, show)
    failed = [r for r in results if not r.ok]
    by_victim = Counter(r.victim for r in results)
    print(
        f"\n{len(results)} runs ({', '.join(f'{n} {v}' for v, n in sorted(by_victim.items()))}),"
        f" {TEXTS_PER_RUN} texts each, {time.monotonic() - began:.0f} s"
    )
    print(f"kills mid-stream: {sum(1 for r in results if r.mid_stream)}")
    print(f"acknowledged texts: {sum(r.acknowledged for r in results)}")
    print(f"lost: {sum(len(r.lost) for r in results)}")
    print(f"lost at a killed hop: {sum(len(r.hop_lost) for r in results)}")
    print(f"duplicated: {sum(r.duplicated for r in results)}")
    print(f"integrity failures: {sum(1 for r in results if any(r.integrity.values()))}")
    print(f"runs with errors: {sum(1 for r in results if r.error)}")
    print(f"failed runs: {len(failed)}")
    if args.json:
        args.json.write_text(json.dumps([r.summary() for r in results], indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
