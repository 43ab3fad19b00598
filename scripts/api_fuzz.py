"""Schemathesis against a fresh node's local API, with many more examples
than the test suite's run (tests/test_api_schema.py).

    .venv/bin/python scripts/api_fuzz.py --examples 500

Starts a seeded `p2pdm run` (and a second node that wrote to it) on
127.0.0.1 with mDNS off, in a temporary folder removed at the end; sends up
to N generated requests per operation and mode (fitting the OpenAPI
document, and breaking it) over the node's Unix socket; prints the
operations tested, the requests made, the answers by status and every
distinct failure with a curl command that repeats it. Exits 1 if any
check failed. The event stream is left out (it never ends).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import apifuzz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--examples",
        type=int,
        default=200,
        metavar="N",
        help="requests per operation and mode (default 200)",
    )
    args = parser.parse_args()
    if args.examples < 1:
        parser.error("--examples must be at least 1")
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="p2pdm-api-fuzz-") as workdir,
        apifuzz.seeded_node(Path(workdir)) as (node, known),
    ):
        report = apifuzz.run(node.home / "api.sock", args.examples, known)
        stray = apifuzz.only_loopback(node)
    print(apifuzz.format_report(report))
    print(f"addresses off loopback: {len(stray)} {stray if stray else ''}".rstrip())
    print(f"took {time.monotonic() - started:.0f} s")
    return 1 if report.failures or stray else 0


if __name__ == "__main__":
    sys.exit(main())
