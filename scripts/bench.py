"""Every benchmark in one command: a JSON report and docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench.py [--quick] [--only direct,crypto,...]
        [--json docs/bench.json] [--markdown docs/BENCHMARKS.md]

Runs each bench script of this folder (crypto, start-up, direct, relay, search,
discovery, the mesh simulation, the LXMF comparison, files when present)
as its own process with `--json`, repeats those that are cheap, and
reports every figure as the median over all samples with min and max.
Where a figure has a ceiling on this machine it also gives the ratio:
direct and relay message rates against the crypto cost per message
measured in the same run, byte rates against TCP loopback bandwidth
measured here first.

`--quick` (small counts, fewer repetitions) takes about 3 minutes; the
full run about 21. The discovery benchmark needs root (network namespaces)
and is left out, with the reason, where it cannot run. Needs the bench
extra for the mesh plot: `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


@dataclass(frozen=True)
class Suite:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    runs_full: int = 1
    runs_quick: int = 1


SUITES = [
    Suite("crypto", "bench_crypto.py", ("--seconds", "1"), ("--seconds", "0.3"), 5, 3),
    Suite("startup", "bench_startup.py", ("--runs", "20"), ("--runs", "5")),
    Suite(
        "direct",
        "bench_direct.py",
        ("--messages", "20000", "--seconds", "10"),
        ("--messages", "5000", "--seconds", "3"),
        5,
        2,
    ),
    Suite(
        "relay",
        "bench_relay.py",
        ("--drain", "10000", "--stored", "100000"),
        ("--drain", "2000", "--stored", "10000"),
    ),
    Suite(
        "search",
        "bench_search.py",
        ("--messages", "100000", "--runs", "30"),
        ("--messages", "20000", "--runs", "10"),
    ),
    Suite(
        "discovery",
        "bench_discovery.py",
        ("--trials", "10"),
        ("--trials", "3", "--flood", "50", "--seconds", "10"),
    ),
    Suite(
        "mesh",
        "simulate_mesh.py",
        ("--sizes", "25,50,100", "--plot", str(REPO / "docs" / "mesh.png")),
        ("--sizes", "25", "--seconds", "20", "--warmup", "10", "--drain", "10"),
        2,  # one run's mesh figures vary a lot (50 nodes: 13x to 31x bytes)
    ),
    Suite("lxmf", "compare_lxmf.py", (), ("--quick",)),
    Suite("files", "bench_files.py", (), ("--quick",), 3, 1),
]

# Known figures: name -> (what it is, unit). Others are shown by name.
LABELS: dict[str, tuple[str, str]] = {
    "crypto.seal_us": ("seal + sign one envelope", "µs"),
    "crypto.open_us": ("open + verify + decode one envelope", "µs"),
    "crypto.sign_us": ("Ed25519 sign, 200 B", "µs"),
    "crypto.verify_us": ("Ed25519 verify, 200 B", "µs"),
    "crypto.handshake_us": ("Noise XX handshake, both sides", "µs"),
    "crypto.sender_ceiling_per_s": ("sender crypto ceiling, one core", "msgs/s"),
    "crypto.receiver_ceiling_per_s": ("receiver crypto ceiling, one core", "msgs/s"),
    "startup.listen_ms": ("start-up: launch to port listening", "ms"),
    "startup.api_ms": ("start-up: launch to API answering", "ms"),
    "startup.import_run_ms": ("start-up: importing what `run` loads", "ms"),
    "startup.import_cli_ms": ("start-up: importing what a client command loads", "ms"),
    "startup.interpreter_ms": ("start-up: a bare interpreter's start", "ms"),
    "startup.first_launch_api_ms": ("start-up: first launch (new store) to API", "ms"),
    "direct.accepted_per_s": ("direct: texts accepted by A's API", "msgs/s"),
    "direct.inbox_per_s": ("direct: committed in B's inbox", "msgs/s"),
    "direct.receipts_per_s": ("direct: receipts back at A", "msgs/s"),
    "direct.crypto_ceiling_per_s": ("direct: crypto ceiling, 2 processes", "msgs/s"),
    "direct.cpu_a_us": ("direct: sender CPU per message", "µs"),
    "direct.cpu_b_us": ("direct: receiver CPU per message", "µs"),
    "direct.kernel_a_us": ("direct: of the sender's, in the kernel", "µs"),
    "direct.kernel_b_us": ("direct: of the receiver's, in the kernel", "µs"),
    "direct.latency_p50_ms": ("direct: latency p50 at 200 msgs/s", "ms"),
    "direct.latency_p90_ms": ("direct: latency p90 at 200 msgs/s", "ms"),
    "direct.latency_p99_ms": ("direct: latency p99 at 200 msgs/s", "ms"),
    "direct.peak_rss_a_mib": ("direct: sender peak RSS", "MiB"),
    "direct.peak_rss_b_mib": ("direct: receiver peak RSS", "MiB"),
    "relay.drain_per_s": ("relay: drain to a recipient", "msgs/s"),
    "relay.drain_from_launch_s": ("relay: drain, from recipient's launch", "s"),
    "relay.recon_differ100_s": ("relay: two relays equal again, 100 differ", "s"),
    "relay.recon_differ100_bytes": ("relay: reconciliation bytes, 100 differ", "B"),
    "relay.recon_differ100_overhead_bytes": ("relay: reconciliation overhead, 100 differ", "B"),
    "relay.relay_peak_rss_mib": ("relay: peak RSS, full store", "MiB"),
    "relay.recon_differ0_bytes": ("relay: reconciliation bytes, stores equal", "B"),
    "search.slowest_search_ms": ("search: slowest query median, of 7 kinds", "ms"),
    "search.conversation_list_ms": ("search: conversation list", "ms"),
    "search.latest_page_ms": ("search: a conversation's latest page", "ms"),
    "search.write_s": ("search: writing the messages first", "s"),
    "discovery.launch_to_connected_s": ("discovery: launch to connected (mDNS)", "s"),
    "discovery.startup_s": ("discovery: of which process start-up", "s"),
    "discovery.flood_dials": ("discovery: dials caused by a flood", ""),
    "discovery.flood_dial_bound": ("discovery: the dial policy's bound for it", ""),
    "discovery.flood_dials_per_announcement": ("discovery: dials per fake announcement", ""),
}
# Mesh figures, per size (mesh.n100.delivery_ratio, ...).
MESH_LABELS: dict[str, tuple[str, str]] = {
    "delivery_ratio": ("delivered after the drain", "fraction"),
    "delivery_ratio_in_schedule": ("deliverable delivered within the schedule", "fraction"),
    "drain_s": ("last arrival after everyone came online", "s"),
    "latency_s_p50": ("delivery latency p50", "s"),
    "latency_s_p90": ("delivery latency p90", "s"),
    "latency_s_p99": ("delivery latency p99", "s"),
    "copies_per_message": ("relay copies per message", ""),
    "schedule_bytes_per_delivered_over_envelope": (
        "bytes sent per delivered ÷ envelope, after the warm-up",
        "",
    ),
    "bytes_per_delivered_over_envelope": ("bytes sent per delivered ÷ envelope, whole run", ""),
    "peak_rss_per_node_kib": ("peak RSS per node", "KiB"),
    "cpu_busy": ("process CPU ÷ wall time", ""),
}


# bench_files.py's figures: what, and the file size in MiB.
_FILES_FIGURE = re.compile(r"(throughput|peak_rss_sender|peak_rss_receiver)_(\d+)mib_.*")


def label_of(name: str) -> tuple[str, str] | None:
    """What a figure is and its unit; None for those only in the JSON report."""
    if name in LABELS:
        return LABELS[name]
    parts = name.split(".")
    if parts[0] == "mesh" and len(parts) == 3 and parts[2] in MESH_LABELS:
        label, unit = MESH_LABELS[parts[2]]
        return f"{parts[1][1:]} nodes: {label}", unit
    if parts[0] == "files" and len(parts) == 2:
        found = _FILES_FIGURE.fullmatch(parts[1])
        if found:
            what, size = found.groups()
            if what == "throughput":
                return f"files: {size} MiB, API accept to checked file", "MiB/s"
            return f"files: {what[9:]} peak RSS, {size} MiB file", "MiB"
    return None


# The LXMF comparison: (what, unit, scale from the JSON's SI unit, p2pdm key, LXMF key).
LXMF_ROWS = [
    ("burst throughput", "msgs/s", 1, "burst_msgs_per_s", "burst_msgs_per_s"),
    ("paced throughput, best rate", "msgs/s", 1, "paced_best_msgs_per_s", "paced_best_msgs_per_s"),
    ("latency p50, submit to arrival", "ms", 1e3, "latency_p50_s", "latency_p50_s"),
    ("latency p99, submit to arrival", "ms", 1e3, "latency_p99_s", "latency_p99_s"),
    ("latency p50, node to node (no API)", "ms", 1e3, "latency_node_p50_s", "latency_p50_s"),
    ("time to first delivery", "s", 1, "first_delivery_s", "first_delivery_s"),
    ("peak RSS, sender", "MiB", 2**-20, "peak_rss_sender_bytes", "peak_rss_sender_bytes"),
    ("peak RSS, receiver", "MiB", 2**-20, "peak_rss_receiver_bytes", "peak_rss_receiver_bytes"),
    ("store and forward: upload, per message", "s", 1, "sf_upload_s", "sf_upload_s"),
    ("store and forward: sender CPU per upload", "s", 1, "sf_upload_cpu_s", "sf_upload_cpu_s"),
    ("store and forward: recipient start to all", "s", 1, "sf_recipient_s", "sf_recipient_s"),
]


def lxmf_table(figs: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "| figure | p2pdm | LXMF | p2pdm ÷ LXMF |",
        "|---|---:|---:|---:|",
    ]
    for what, unit, scale, ours, theirs in LXMF_ROWS:
        p, x = figs.get(f"lxmf.p2pdm_{ours}"), figs.get(f"lxmf.lxmf_{theirs}")
        if p is None or x is None:
            continue
        pm, xm = p["median"] * scale, x["median"] * scale
        ratio = f"{pm / xm:.3g}" if xm else ""
        lines.append(f"| {what} ({unit}) | {number(pm)} | {number(xm)} | {ratio} |")
    return lines


def order(name: str) -> tuple[int, int, str]:
    """Known figures in LABELS order; mesh figures by size, then MESH_LABELS order."""
    known, mesh = list(LABELS), list(MESH_LABELS)
    if name in known:
        return (known.index(name), 0, "")
    parts = name.split(".")
    if parts[0] == "mesh" and len(parts) == 3 and parts[2] in mesh:
        return (len(known), int(parts[1][1:]) * 100 + mesh.index(parts[2]), "")
    found = _FILES_FIGURE.fullmatch(parts[-1]) if parts[0] == "files" else None
    if found:  # by file size
        return (len(known) + 1, int(found.group(2)), name)
    return (len(known) + 1, 0, name)


def loopback_bandwidth(seconds: float = 1.0) -> float:
    """Bytes/s one TCP connection on 127.0.0.1 carries here (a ceiling for byte rates)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = 0

    def sink() -> None:
        nonlocal received
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                received += len(chunk)

    reader = threading.Thread(target=sink)
    reader.start()
    block = b"\0" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as client:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            client.sendall(block)
    reader.join()
    elapsed = time.perf_counter() - started
    server.close()
    return received / elapsed


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = next(
        (
            int(line.split()[1]) / 2**20
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0.0,
    )
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "kernel": ".".join(platform.release().split(".")[:2]),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "pynacl": importlib.metadata.version("pynacl"),
        "cbor2": importlib.metadata.version("cbor2"),
        "trio": importlib.metadata.version("trio"),
        "commit": commit,
    }


def run_suite(suite: Suite, quick: bool, log: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The figures of each run, or why the suite did not run."""
    script = SCRIPTS / suite.script
    if not script.exists():
        return [], "not present yet"
    if suite.name == "discovery" and os.geteuid() != 0:
        return [], "needs root (network namespaces)"
    runs = suite.runs_quick if quick else suite.runs_full
    args = suite.quick if quick else suite.full
    results = []
    for n in range(runs):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            started = time.perf_counter()
            print(f"  {suite.name}: run {n + 1} of {runs} ...", end="", flush=True)
            with log.open("a") as sink:
                sink.write(f"\n==== {suite.name} run {n + 1}: {' '.join(args)}\n")
                sink.flush()
                done = subprocess.run(
                    [sys.executable, str(script), *args, "--json", out.name],
                    cwd=REPO,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            print(f" {time.perf_counter() - started:.0f} s")
            text = Path(out.name).read_text()
            if done.returncode != 0 or not text.strip():
                return results, f"run {n + 1} failed (exit {done.returncode}); see {log.name}"
            results.append(json.loads(text))
    return results, None


def flatten(suite: str, doc: Any) -> dict[str, list[float]]:
    """One run's figures as name -> samples; the mesh gives one set per size."""
    if isinstance(doc, list):  # simulate_mesh: a dict per mesh size
        out: dict[str, list[float]] = {}
        for size in doc:
            for key, value in flatten(suite, size).items():
                out[key.replace(f"{suite}.", f"{suite}.n{size['nodes']}.", 1)] = value
        return out
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)):
                    out[f"{suite}.{key}_{sub}"] = [float(v)]
        elif isinstance(value, list):
            numbers = [float(v) for v in value if isinstance(v, (int, float))]
            if numbers and not any(isinstance(v, bool) for v in value):
                out[f"{suite}.{key}"] = numbers
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{suite}.{key}"] = [float(value)]
    return out


def summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
        for name, values in samples.items()
        if values
    }


def ceilings(figs: dict[str, dict[str, float]], loopback: float) -> dict[str, tuple[float, str]]:
    """Figure -> (its median over the ceiling's median, what the ceiling is)."""
    out: dict[str, tuple[float, str]] = {}

    def med(name: str) -> float | None:
        return figs[name]["median"] if name in figs else None

    inbox, both = med("direct.inbox_per_s"), med("direct.crypto_ceiling_per_s")
    if inbox and both:
        out["direct.inbox_per_s"] = (inbox / both, "crypto of both processes, same run")
    drain, recv = med("relay.drain_per_s"), med("crypto.receiver_ceiling_per_s")
    if drain and recv:
        out["relay.drain_per_s"] = (drain / recv, "receiver crypto, one core")
    for name, fig in figs.items():
        if name.endswith("_bytes_per_s"):
            out[name] = (fig["median"] / loopback, "TCP loopback bandwidth")
        elif name.endswith("_mib_per_s"):
            out[name] = (fig["median"] * 2**20 / loopback, "TCP loopback bandwidth")
    return out


def number(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python scripts/bench.py{' --quick' if report['quick'] else ''}`"
        f" on {m['date']} (commit {m['commit']}); regenerate with the same command"
        " (`--only SUITE,...` reruns some and keeps the others' figures).",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB; Linux {m['kernel']},"
        f" Python {m['python']}, SQLite {m['sqlite']}, PyNaCl {m['pynacl']}, cbor2 {m['cbor2']},"
        f" trio {m['trio']}."
        f" TCP loopback carries {report['loopback_bytes_per_s'] / 2**20:,.0f} MiB/s"
        " on one connection here.",
        "",
        "Each figure is the median of every sample (n: runs, or trials inside a run),"
        " with min and max. Where a figure has a ceiling on this machine, the last"
        " column gives the median's ratio to it. Every figure, these and more,"
        " is in the JSON report beside this file (bench.json).",
        "",
    ]
    for suite in report["suites"]:
        figs = {k: v for k, v in report["figures"].items() if k.split(".")[0] == suite["name"]}
        lines.append(f"## {suite['name']}")
        lines.append("")
        if suite.get("commit", m["commit"]) != m["commit"]:
            lines += [
                f"From an earlier run: {suite['date']}, commit {suite['commit']}"
                f"{' (--quick)' if suite.get('quick') else ''}.",
                "",
            ]
        if suite["skipped"]:
            lines += [f"Not run: {suite['skipped']}.", ""]
            if not figs:
                continue
        if suite["name"] == "lxmf":
            lines += [
                "scripts/compare_lxmf.py: the same workload through two LXMF routers"
                " (rns 1.5.7, lxmf 1.2.1, TCP on 127.0.0.1 only, direct delivery; store and"
                " forward through a propagation node at LXMF's default stamp cost) and two"
                " p2pdm nodes (store and forward through a relay). LXMF's latency is"
                " measured inside its processes; p2pdm's includes both HTTP APIs, and the"
                " node-to-node row leaves them out. Medians of the runs.",
                "",
                *lxmf_table(figs),
                "",
            ]
            continue
        lines += [
            "| figure | median | min | max | n | of the ceiling |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, fig in sorted(figs.items(), key=lambda item: order(item[0])):
            known = label_of(name)
            if known is None:
                continue
            label, unit = known
            ratio = report["ceilings"].get(name)
            of = f"{ratio[0]:.2f} ({ratio[1]})" if ratio else ""
            lines.append(
                f"| {label}{f' ({unit})' if unit else ''} | {number(fig['median'])}"
                f" | {number(fig['min'])} | {number(fig['max'])} | {fig['n']:.0f} | {of} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, about 3 minutes")
    parser.add_argument(
        "--only",
        help="comma-separated suite names (default: all); the others keep their figures"
        " from the report already there",
    )
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "bench.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else {s.name for s in SUITES}
    unknown = chosen - {s.name for s in SUITES}
    if unknown:
        raise SystemExit(f"unknown suite(s): {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    here = machine()
    log = Path(tempfile.gettempdir()) / "p2pdm-bench.log"
    log.write_text("")
    print(f"p2pdm benchmarks{' (quick)' if args.quick else ''}; each script's output: {log}")
    loopback = statistics.median(loopback_bandwidth(0.5) for _ in range(3))
    samples: dict[str, list[float]] = {}
    suites = []
    for suite in SUITES:
        if suite.name not in chosen:
            continue
        runs, skipped = run_suite(suite, args.quick, log)
        if skipped:
            print(f"  {suite.name}: not run: {skipped}")
        if suite.name == "mesh" and runs and not args.quick:
            # The plot's figures, beside docs/mesh.png.
            (REPO / "docs" / "mesh.json").write_text(json.dumps(runs[-1], indent=1) + "\n")
        for doc in runs:
            for name, values in flatten(suite.name, doc).items():
                samples.setdefault(name, []).extend(values)
        suites.append(
            {
                "name": suite.name,
                "runs": len(runs),
                "skipped": skipped,
                "quick": args.quick,
                "date": here["date"],
                "commit": here["commit"],
            }
        )
    figs = summarise(samples)
    if args.only and args.json.exists():  # keep the other suites' figures
        before = json.loads(args.json.read_text())
        kept = {s["name"]: s for s in before["suites"] if s["name"] not in chosen}
        ran = {s["name"]: s for s in suites}
        suites = [
            kept.get(s.name) or ran[s.name] for s in SUITES if s.name in kept or s.name in ran
        ]
        figs.update((k, v) for k, v in before["figures"].items() if k.split(".")[0] not in chosen)
    report = {
        "quick": args.quick,
        "machine": here,
        "loopback_bytes_per_s": loopback,
        "suites": suites,
        "figures": figs,
        "ceilings": ceilings(figs, loopback),
        "seconds": time.perf_counter() - started,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    args.markdown.write_text(markdown(report) + "\n")
    print(f"done in {report['seconds'] / 60:.1f} min: {args.json}, {args.markdown}")


if __name__ == "__main__":
    main()
