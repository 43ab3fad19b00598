"""Chaos between five hosts in network namespaces: cuts, heals, restarts, skew.

    sudo .venv/bin/python scripts/chaos.py [--steps 400] [--seed 1] [--runs 1]

Needs root and iproute2 (the namespaces, their bridge and every address are
made by the run and removed after it). Each run starts five real nodes with
clocks up to an hour off, makes everyone contacts and one group of all
five, then for each step applies the step's fault, if any (cut or heal a
host's link, restart a node cleanly or with SIGKILL) and sends one text
(1:1 or to the group) from a random host, half a second apart. At the end
it heals everything, waits for every node's outbox to drain, and checks that
every copy a sender's API acknowledged is in its recipient's inbox exactly
once and that every store is sound. Exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos import run_chaos
from tests.netns import NetnsLab, netns_available


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--fault-rate", type=float, default=0.25, help="faults per step")
    parser.add_argument("--verbose", action="store_true", help="print each fault")
    args = parser.parse_args()
    reason = netns_available()
    if reason is not None:
        print(f"chaos needs network namespaces: {reason}", file=sys.stderr)
        return 2
    failed = 0
    for run in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix="p2pdm-chaos-"))
        began = time.monotonic()
        try:
            with NetnsLab(5) as lab:
                result = run_chaos(
                    lab,
                    root,
                    args.seed + run,
                    args.steps,
                    fault_rate=args.fault_rate,
                    log=print if args.verbose else (lambda line: None),
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        summary = result.summary() | {"seconds": round(time.monotonic() - began, 1)}
        print(json.dumps(summary), flush=True)
        for missing in result.missing[:20]:
            print(f"  missing: {missing}")
        failed += not result.ok
    print(f"{args.runs - failed} of {args.runs} runs passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
