"""Process start-up: from launching `p2pdm run` to a node that listens and answers.

    .venv/bin/python scripts/bench_startup.py [--runs 10]

Launches `p2pdm run --listen 127.0.0.1:PORT --no-mdns` --runs times on one
home (after one launch, reported apart, that creates the home's store) and
stops each with SIGTERM before the next. Per launch, from just before the
process is spawned:
1. launch -> the TCP port accepts a connection (polled every millisecond;
   the node logs that connection as a failed handshake);
2. launch -> the local API answers `GET /v1/status`;
3. launch -> the "ready" log line reaching this script.
Also, --runs times each, in a fresh interpreter: the import of `p2pdm.cli`
(all that a command talking to a running node loads before it runs), the
import of `p2pdm.cli` and `p2pdm.daemon` (all that `run` loads), and a bare
interpreter's start (`python -c pass`), the floor under every figure here.
Median, min and max of each.

Python writes no bytecode cache when PYTHONDONTWRITEBYTECODE is set, and an
editable install compiles nothing: then every launch compiles p2pdm's
modules anew (about 130 ms here). scripts/setup-venv.sh compiles them once,
as pip does for an installed package; the script says whether they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import p2pdm
from p2pdm.apiclient import ApiUnavailable
from scripts import figures
from tests.nodeproc import DEADLINE, NodeProcess, free_port, init_home

POLL = 0.001
# Timed inside the interpreter, so without its own start-up.
TIMED_IMPORT = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


def watch(node: NodeProcess, port: int, seen: dict[str, float], stop: threading.Event) -> None:
    """Record when the port first accepts a connection, then when the API first answers."""
    while not stop.is_set():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
        except OSError:
            time.sleep(POLL)
            continue
        seen["listen"] = time.perf_counter()
        break
    api = node.api
    while not stop.is_set():
        try:
            api.get("/v1/status")
        except ApiUnavailable:
            time.sleep(POLL)
            continue
        seen["api"] = time.perf_counter()
        break


def launch(home: Path) -> dict[str, float]:
    """One launch: seconds from spawning the process to listen, api and ready."""
    port = free_port()
    node = NodeProcess(home, listen=f"127.0.0.1:{port}")
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(node, port, seen, stop), daemon=True)
    launched = time.perf_counter()
    watcher.start()
    try:
        node.start()
        ready = time.perf_counter()
        watcher.join(DEADLINE)
        if "api" not in seen:
            raise SystemExit("the node logged ready but its API never answered")
        node.stop()
    finally:
        stop.set()
        node.close()
    return {
        "listen": seen["listen"] - launched,
        "api": seen["api"] - launched,
        "ready": ready - launched,
    }


def interpreter_runs(code: str, runs: int) -> tuple[list[float], list[float]]:
    """Wall time of `python -c code`, and the float it prints, for each of `runs` runs."""
    walls, printed = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        walls.append(time.perf_counter() - t0)
        if out.strip():
            printed.append(float(out))
    return walls, printed


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"median {statistics.median(ms):6.1f} ms  "
        f"(min {min(ms):6.1f}, max {max(ms):6.1f}, n={len(ms)})"
    )


def bytecode_state() -> str:
    """Whether a launch finds p2pdm compiled, or compiles it (and keeps it)."""
    source = Path(p2pdm.__file__).parent / "node.py"
    cached = Path(importlib.util.cache_from_source(str(source)))
    if cached.exists() and cached.stat().st_mtime >= source.stat().st_mtime:
        return "compiled"
    if sys.flags.dont_write_bytecode:
        return "not compiled, and not kept (PYTHONDONTWRITEBYTECODE): every launch compiles it"
    return "not compiled yet (the first launch writes it)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    figures.add_option(parser)
    args = parser.parse_args()

    print(
        f"p2pdm start-up, {args.runs} launches, {os.cpu_count()} cpus;"
        f" p2pdm's bytecode {bytecode_state()}"
    )
    with tempfile.TemporaryDirectory(prefix="p2pdm-bench-") as tmp:
        home = Path(tmp) / "home"
        init_home(home)
        first = launch(home)
        runs = [launch(home) for _ in range(args.runs)]
    bare, _ = interpreter_runs("pass", args.runs)
    _, import_cli = interpreter_runs(TIMED_IMPORT.format("p2pdm.cli"), args.runs)
    _, import_run = interpreter_runs(TIMED_IMPORT.format("p2pdm.cli, p2pdm.daemon"), args.runs)

    stages = {stage: [r[stage] for r in runs] for stage in ("listen", "api", "ready")}
    print(f"launch -> port listening:      {summary(stages['listen'])}")
    print(f"launch -> API answers status:  {summary(stages['api'])}")
    print(f"launch -> 'ready' log line:    {summary(stages['ready'])}")
    print(f"import p2pdm.cli:              {summary(import_cli)}")
    print(f"import p2pdm.cli + daemon:     {summary(import_run)}")
    print(f"bare interpreter (-c pass):    {summary(bare)}")
    print(
        f"first launch on the home (creates the store): listening {first['listen'] * 1000:.1f}"
        f" ms, API {first['api'] * 1000:.1f} ms"
    )
    figures.write(
        args.json,
        {
            "listen_ms": [v * 1000 for v in stages["listen"]],
            "api_ms": [v * 1000 for v in stages["api"]],
            "ready_ms": [v * 1000 for v in stages["ready"]],
            "import_cli_ms": [v * 1000 for v in import_cli],
            "import_run_ms": [v * 1000 for v in import_run],
            "interpreter_ms": [v * 1000 for v in bare],
            "first_launch_api_ms": first["api"] * 1000,
        },
    )


if __name__ == "__main__":
    main()
