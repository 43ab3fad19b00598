"""Coverage-guided fuzzing of what reads bytes from peers and API clients.

    .venv/bin/pip install atheris        # not a p2pdm dependency
    .venv/bin/python scripts/fuzz.py --minutes 5 [--only NAME ...]
    .venv/bin/python scripts/fuzz.py --write-seeds   # rebuild tests/corpus/*/seed-*

The harnesses are in tests/fuzz_targets.py (wire decoder, handshake
responder and initiator, session state machine, local API HTTP server).
Each runs under atheris (libFuzzer) in its own process, one after another,
for N minutes of wall time, starting from its committed corpus
tests/corpus/<name>/; what it finds goes to a work folder (.fuzz/<name>/,
kept between runs) and crashing inputs to .fuzz/<name>/crashes/. A crash
stops libFuzzer; the run restarts (at most --max-crashes times) until its
time is used. Per harness this prints the CPU minutes used, executions,
the size of the corpus it ended with, and crashes found.

A crash is fixed in p2pdm/, and its input, minimized with
`--worker NAME -minimize_crash=1 -runs=10000 -exact_artifact_path=OUT FILE`,
is committed as tests/corpus/<name>/crash-<what>, which
tests/test_fuzz_corpus.py replays.
`--merge` adds to tests/corpus/<name>/ the found inputs that reach new
coverage (keep the committed corpus small).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
WORK = ROOT / ".fuzz"
# Longest input libFuzzer makes per target: a few frames or requests.
MAX_LEN = {
    "wire": 4096,
    "handshake_responder": 1024,
    "handshake_initiator": 1024,
    "session": 8192,
    "http": 4096,
}
# Seconds one input may take before libFuzzer calls it a hang (a defect:
# bounded CPU per input is the point).
INPUT_TIMEOUT = 10
INSTALL_HINT = "atheris is not installed: .venv/bin/pip install atheris"


def _worker(name: str, libfuzzer_args: list[str]) -> None:
    try:
        import atheris
    except ImportError:
        sys.exit(INSTALL_HINT)
    sys.path.insert(0, str(ROOT))
    # Imported first, so they stay uninstrumented: coverage of our code and
    # of h11 (the HTTP parser) is what guides the search, not trio's.
    import cbor2  # noqa: F401
    import nacl.bindings  # noqa: F401
    import trio  # noqa: F401

    with atheris.instrument_imports(include=["p2pdm", "h11", "tests"]):
        from tests import fuzz_targets
    target = fuzz_targets.TARGETS[name]
    # libFuzzer runs argv[0] again for -merge (and -fork): make it this worker.
    again = f"{sys.executable} {Path(__file__).resolve()} --worker {name}"
    atheris.Setup([again, *libfuzzer_args], target)
    atheris.Fuzz()


@dataclass
class Outcome:
    name: str
    cpu_s: float
    executions: int
    corpus_files: int
    crashes: list[Path]


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _executions(log: str) -> int:
    stat = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    if stat:
        return int(stat[-1])
    # A crash may end the run before the final stats: use the last status line.
    counts = re.findall(r"^#(\d+)\s", log, re.MULTILINE)
    return int(counts[-1]) if counts else 0


def _run(name: str, minutes: float, max_crashes: int, log_dir: Path) -> Outcome:
    work = WORK / name
    crashes_dir = work / "crashes"
    found = work / "corpus"
    for folder in (crashes_dir, found, log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / name
    before = set(crashes_dir.iterdir())
    deadline = time.monotonic() + minutes * 60
    cpu0 = _cpu_of_children()
    executions = 0
    attempt = 0
    while attempt <= max_crashes:
        left = int(deadline - time.monotonic())
        if left < 5:
            break
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            name,
            str(found),
            str(seeds),
            f"-max_total_time={left}",
            f"-max_len={MAX_LEN[name]}",
            f"-timeout={INPUT_TIMEOUT}",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={crashes_dir}/",
            "-print_final_stats=1",
        ]
        log_path = log_dir / f"{name}-{attempt}.log"
        with log_path.open("w") as log_file:
            proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, check=False)
        executions += _executions(log_path.read_text(errors="replace"))
        attempt += 1
        if proc.returncode == 0:
            break
        print(f"  {name}: run {attempt} ended with code {proc.returncode} (log {log_path})")
    crashes = sorted(set(crashes_dir.iterdir()) - before)
    return Outcome(
        name=name,
        cpu_s=_cpu_of_children() - cpu0,
        executions=executions,
        corpus_files=len(list(found.iterdir())) + len(list(seeds.iterdir())),
        crashes=crashes,
    )


def _merge(name: str) -> None:
    """Add to the committed corpus the found inputs that reach new coverage."""
    found = WORK / name / "corpus"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "-set_cover_merge=1",  # a smaller set than -merge=1, same coverage
        f"-max_len={MAX_LEN[name]}",
        str(CORPUS / name),
        str(found),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_seeds() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.fuzz_targets import seed_inputs

    for name, seeds in seed_inputs().items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for label, data in seeds.items():
            (folder / f"seed-{label}").write_bytes(data)
        print(f"{name}: {len(seeds)} seeds")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="wall minutes per harness")
    parser.add_argument("--only", action="append", choices=sorted(MAX_LEN), help="this harness")
    parser.add_argument("--max-crashes", type=int, default=5, help="restarts after crashes")
    parser.add_argument("--merge", action="store_true", help="grow tests/corpus/ with finds")
    parser.add_argument("--write-seeds", action="store_true", help="rebuild the seed files")
    args = parser.parse_args()
    if args.write_seeds:
        write_seeds()
        return
    try:
        import atheris  # noqa: F401
    except ImportError:
        sys.exit(INSTALL_HINT)
    names = args.only or list(MAX_LEN)
    log_dir = WORK / "logs"
    outcomes = []
    for name in names:
        print(f"fuzzing {name} for {args.minutes:g} min ...", flush=True)
        outcome = _run(name, args.minutes, args.max_crashes, log_dir)
        outcomes.append(outcome)
        if args.merge:
            _merge(name)
        for crash in outcome.crashes:
            digest = hashlib.sha256(crash.read_bytes()).hexdigest()[:12]
            print(f"  crash: {crash} (sha256 {digest})")
    print()
    print(
        f"{'harness':<22}{'CPU min':>9}{'executions':>13}{'exec/s':>9}{'corpus':>8}{'crashes':>9}"
    )
    for o in outcomes:
        rate = o.executions / o.cpu_s if o.cpu_s else 0.0
        print(
            f"{o.name:<22}{o.cpu_s / 60:>9.2f}{o.executions:>13,}{rate:>9.0f}"
            f"{o.corpus_files:>8}{len(o.crashes):>9}"
        )
    if any(o.crashes for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
