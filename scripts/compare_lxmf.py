"""Side-by-side benchmark of p2pdm against LXMF (Reticulum's messaging layer) on 127.0.0.1.

    .venv/bin/python scripts/compare_lxmf.py [--quick] [--messages 1000] [--json PATH]
                                             [--lxmf-venv DIR] [--sf-messages 10]

LXMF is not a dependency of p2pdm and none of its code is in this repo. The
script makes a separate virtualenv for it once (default .venv-lxmf/ in the
repo root, reused when present) and pip-installs the pinned versions
rns==1.5.7 and lxmf==1.2.1 into it (plus a .gitignore of "*" inside it, so
git ignores it); scripts/lxmf_peer.py then runs each LXMF node as its own
process with that virtualenv's python, driven by JSON lines on its stdin and
stdout. Everything below is measured the same way for both systems.

Isolation: each LXMF process gets a fresh Reticulum config directory in a
temporary folder, with a config file written here: `share_instance = No` (no
shared-instance sockets) and one interface only, TCP on 127.0.0.1 (one
TCPServerInterface on a free port, the others TCPClientInterface to it); no
AutoInterface or any other interface, so nothing leaves 127.0.0.0/8. The
p2pdm nodes listen on 127.0.0.1 with mDNS off. Every process is killed and
every temporary directory removed at the end, also on failure or Ctrl-C;
every wait has a deadline.

The same workload for both (~30-byte texts, sender -> receiver, 2 processes):
1. Time to first delivery: from launching the listening process (the
   receiver; the sender is launched once that port listens) to the first
   message arriving (LXMF: the receiver's delivery callback; p2pdm: B's
   inbox commit time), so start-up, announce / path discovery or bootstrap,
   handshake / link set-up. The sender submits as soon as it is up (LXMF:
   once the recipient's path is known; p2pdm: once its API answers).
2. Latency at a light load (--rate msgs/s for --seconds): submit -> arrival
   at the receiver, p50 and p99. p2pdm: before A's API call -> B's "message"
   event at this script (both APIs included, as in bench_direct.py; the
   details add node to node, A's envelope time -> B's inbox commit); LXMF:
   before LXMRouter.handle_outbound() -> the receiver's delivery callback.
3. Paced throughput: rates 25, 50, 100, ... msgs/s, each step sending
   rate x --trial-seconds messages (at least 50, at most --messages); the
   rate doubles until a step does not deliver everything (stop) or delivers
   under 90% of its rate (run once more, then stop if it does again). The
   best delivered rate of the steps that delivered everything is reported.
4. Burst throughput: --messages submitted at once, delivered msgs/s at the
   receiver (first submit -> last arrival); a stall is reported as measured
   (delivered count and time), not hidden.
5. Peak RSS (VmHWM) of the sender and receiver processes after 1-4.
6. Store-and-forward with --sf-messages: the recipient is offline while the
   sender uploads (p2pdm: to a relay R, until A reports each "relayed", its
   outbox state; LXMF: with desired_method PROPAGATED to a third process
   running LXMRouter.enable_propagation(), until each message's delivery
   callback reports it taken; at most 300 s, 120 with --quick, for all, and
   what is not uploaded by then is reported as such). Then the
   recipient starts (p2pdm: --bootstrap R; LXMF: sets the propagation node as
   outbound node and calls request_messages_from_propagation_node) and is
   timed from launch until it holds all. Sender-side upload time and CPU
   (its children included: LXMF forks stamp workers) per message. LXMF 1.2
   demands a proof-of-work stamp per propagated message; the propagation
   node runs with LXMF's default cost (LXMRouter propagation_cost 16), and
   (unless --quick or --no-lxmf-low-cost) again with the lowest cost
   LXMRouter accepts, 13.

LXMF's recipient must be known to the sender: it announces on start, and the
sender requests a path until RNS can recall its identity. For
store-and-forward the recipient runs once first (announces; the propagation
node, a transport node, holds its path), then is stopped before the upload.

Prints a table, p2pdm and LXMF side by side with the ratio p2pdm/LXMF of
each figure, then the details (every paced step, stalls, failures) and the
exact LXMF settings. --json PATH writes the figures as a flat dict in SI
units (seconds, bytes, msgs_per_s): p2pdm_*, lxmf_*, lxmf_low_cost_*, and
ratio_* (p2pdm/LXMF).

--quick uses small counts (about 1-2 minutes); the default run takes under 10.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import figures
from scripts.bench_direct import cpu_times, pump, rss_kib
from tests.nodeproc import NodeProcess, free_port, init_home

if TYPE_CHECKING:
    from collections.abc import Callable

REPO = Path(__file__).resolve().parent.parent
LXMF_PINS = ("rns==1.5.7", "lxmf==1.2.1")
PEER_SCRIPT = REPO / "scripts" / "lxmf_peer.py"
DEADLINE = 60.0
TEXT_LEN = 30
# LXMRouter.PROPAGATION_COST_MIN in lxmf 1.2.1: the lowest cost a node accepts to set.
LXMF_MIN_PROPAGATION_COST = 13
LADDER_START = 25.0
LADDER_MAX = 12_800.0
# LXMRouter's propagation transfer states that end a sync (PR_COMPLETE and up).
PR_COMPLETE = 0x07

Results = dict[str, Any]


class Config:
    """Counts and time limits of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.quick = quick
        self.messages = args.messages or (200 if quick else 1000)
        self.rate = args.rate
        self.seconds = args.seconds or (3.0 if quick else 10.0)
        self.trial_s = args.trial_seconds or (1.0 if quick else 3.0)
        self.sf_messages = args.sf_messages or (2 if quick else 10)
        self.low_cost = (not quick) if args.lxmf_low_cost is None else args.lxmf_low_cost
        # No new arrival (or submission) for this long: the phase has stalled.
        self.stall_s = 15.0 if quick else 30.0
        self.burst_cap_s = 90.0 if quick else 240.0
        # All uploads. At LXMF's default cost a stamp's expected work is 2^16
        # hashes of a 256 KB workblock (~10 s on 2 cores here), with a long
        # tail: what is not uploaded by then is reported as not uploaded.
        self.sf_cap_s = 120.0 if quick else 300.0


# --- shared helpers


def text(tag: str, seq: int) -> str:
    """A benchmark message: tag and number, padded to ~30 bytes (as lxmf_peer.py does)."""
    return f"{tag}:{seq:06d}".ljust(TEXT_LEN, ".")


def parse_text(body: object) -> tuple[str, int] | None:
    if not isinstance(body, str) or ":" not in body:
        return None
    tag, _, rest = body.partition(":")
    digits = rest.split(".", 1)[0]
    return (tag, int(digits)) if digits.isdigit() else None


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (from /proc: no probe connection)."""
    want = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want and fields[3] == "0A":
            return True
    return False


def wait_listening(port: int, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not listening(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
        time.sleep(0.005)  # polling /proc: the listening process says nothing


def cpu_total(pid: int) -> float:
    """CPU seconds of a process so far, with those of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return sum(cpu_times(pid)) + (int(fields[13]) + int(fields[14])) / tick


def peak_rss_bytes(pid: int) -> int:
    return rss_kib(pid, "VmHWM") * 1024


def quantiles(values: list[float]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (None, None)
    # Inclusive: with a few dozen samples, p99 stays within the measured range.
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98]


# --- the LXMF side


def ensure_lxmf_venv(venv: Path) -> Path:
    """The LXMF virtualenv's python; made and pip-installed once, then reused."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating the LXMF virtualenv {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # A venv in the repo must not show up in `git status`.
    ignore = venv / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    check = (
        "import importlib.metadata as m; import RNS, LXMF; "
        "print('rns==' + m.version('rns'), 'lxmf==' + m.version('lxmf'))"
    )
    found = subprocess.run(
        [str(python), "-c", check], capture_output=True, text=True, timeout=120, check=False
    )
    if found.returncode != 0 or tuple(found.stdout.split()) != LXMF_PINS:
        print(f"installing {' '.join(LXMF_PINS)} into {venv} ...", flush=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *LXMF_PINS],
            check=True,
            timeout=900,
        )
    return python


def rns_config(port: int, server: bool, transport: bool) -> str:
    """A Reticulum config: no shared instance, one loopback TCP interface, nothing else."""
    if server:
        interface = [
            "    type = TCPServerInterface",
            "    enabled = Yes",
            "    listen_ip = 127.0.0.1",
            f"    listen_port = {port}",
        ]
    else:
        interface = [
            "    type = TCPClientInterface",
            "    enabled = Yes",
            "    target_host = 127.0.0.1",
            f"    target_port = {port}",
        ]
    return "\n".join(
        [
            "[reticulum]",
            f"  enable_transport = {'Yes' if transport else 'No'}",
            "  share_instance = No",
            "  discover_interfaces = No",
            "",
            "[logging]",
            "  loglevel = 2",
            "",
            "[interfaces]",
            "  [[Loopback TCP]]",
            *interface,
            "",
        ]
    )


class LxmfPeer:
    """One lxmf_peer.py process in its own session (its stamp workers die with it)."""

    def __init__(
        self,
        python: Path,
        home: Path,
        role: str,
        config: str,
        cond: threading.Condition,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.python, self.home, self.role, self.extra = python, home, role, extra
        self.cond = cond
        home.mkdir(parents=True, exist_ok=True)
        (home / "config").write_text(config)
        self.proc: subprocess.Popen[str] | None = None
        self.log: IO[str] | None = None
        self.events: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
        self.exited = False

    def start(self) -> LxmfPeer:
        self.exited = False
        self.log = (self.home / "peer.log").open("a")
        cmd = [str(self.python), str(PEER_SCRIPT), "--config", str(self.home), "--role", self.role]
        self.proc = subprocess.Popen(
            [*cmd, *self.extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.events[(event["ev"], event.get("tag"))].append(event)
                self.cond.notify_all()
        with self.cond:
            self.exited = True
            self.cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self, **cmd: Any) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def got(self, ev: str, tag: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return list(self.events[(ev, tag)])

    def count(self, ev: str, tag: str | None = None) -> int:
        with self.cond:
            return len(self.events[(ev, tag)])

    def wait_event(
        self, ev: str, tag: str | None = None, timeout: float = DEADLINE
    ) -> dict[str, Any]:
        def ready() -> bool:
            return bool(self.events[(ev, tag)]) or self.exited

        with self.cond:
            self.cond.wait_for(ready, timeout)
            if self.events[(ev, tag)]:
                return self.events[(ev, tag)][0]
        errors = self.got("error") + self.got("error", tag)
        raise RuntimeError(
            f"LXMF {self.role}: no {ev!r} event in {timeout} s"
            f"{' (it exited)' if self.exited else ''}; errors: {errors}\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        path = self.home / "peer.log"
        if not path.exists():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  [{self.role} log] {line}" for line in tail)

    def kill(self) -> None:
        if self.proc is None:
            return
        # The whole session: the peer and any stamp workers it forked.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.log is not None:
            self.log.close()
        self.proc = None


class LxmfDirect:
    """The workload through two LXMF peers: times are the peers' time.time()."""

    def __init__(self, sender: LxmfPeer, receiver: LxmfPeer, dest: str) -> None:
        self.sender, self.receiver, self.dest = sender, receiver, dest

    def submit(self, tag: str, count: int, rate: float) -> None:
        self.sender.command(
            cmd="send", dest=self.dest, count=count, rate=rate, tag=tag, method="direct"
        )

    def submits(self, tag: str) -> dict[int, float]:
        return {e["seq"]: e["t"] for e in self.sender.got("sent", tag)}

    def submitted(self, tag: str) -> float | None:
        done = self.sender.got("submitted", tag)
        return done[0]["t"] if done else None

    def arrivals(self, tag: str) -> dict[int, float]:
        return {e["seq"]: e["t"] for e in self.receiver.got("rx", tag)}

    def failures(self, tag: str) -> int | None:
        return self.sender.count("fail", tag)

    def progress(self, tag: str) -> int:
        if self.sender.exited or self.receiver.exited:
            raise RuntimeError("an LXMF peer exited\n" + self.sender.log_tail())
        return self.sender.count("sent", tag) + self.receiver.count("rx", tag)

    def poll(self, timeout: float) -> None:
        with self.sender.cond:
            self.sender.cond.wait(timeout)


# --- the p2pdm side


class P2pdmDirect:
    """The workload through A's API; arrivals are B's "message" events (perf_counter)."""

    def __init__(self, a: NodeProcess, b: NodeProcess, b_id: str) -> None:
        self.api, self.b_id = a.api, b_id
        self.queue: queue.Queue[tuple[float, dict[str, object]]] = queue.Queue()
        ready = threading.Event()
        threading.Thread(target=pump, args=(b, "message", self.queue, ready), daemon=True).start()
        if not ready.wait(DEADLINE):
            raise TimeoutError("B's event stream did not open")
        self.sent: dict[str, dict[int, float]] = defaultdict(dict)
        self.done: dict[str, float] = {}
        self.arrived: dict[str, dict[int, float]] = defaultdict(dict)

    def _post(self, tag: str, seqs: range) -> None:
        t = time.perf_counter()
        self.api.post("/v1/messages", {"to": self.b_id, "texts": [text(tag, s) for s in seqs]})
        self.done[tag] = time.perf_counter()
        self.sent[tag].update(dict.fromkeys(seqs, t))

    def submit(self, tag: str, count: int, rate: float) -> None:
        if rate <= 0:
            for first in range(0, count, 1000):  # the API takes 1,000 texts per request
                self._post(tag, range(first, min(count, first + 1000)))
            return
        # Paced in 10 ms ticks: each tick posts the messages now due.
        start = time.perf_counter()
        done = 0
        while done < count:
            due = min(count, int((time.perf_counter() - start) * rate) + 1)
            if due > done:
                self._post(tag, range(done, due))
                done = due
            next_at = start + done / rate
            delay = min(0.01, next_at - time.perf_counter())
            if delay > 0 and done < count:
                time.sleep(delay)  # pacing the load

    def poll(self, timeout: float) -> None:
        try:
            item: tuple[float, dict[str, object]] | None = self.queue.get(timeout=timeout)
        except queue.Empty:
            return
        while item is not None:
            t, data = item
            parsed = parse_text(data.get("text"))
            if parsed is not None:
                self.arrived[parsed[0]].setdefault(parsed[1], t)
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                item = None

    def submits(self, tag: str) -> dict[int, float]:
        return dict(self.sent[tag])

    def submitted(self, tag: str) -> float | None:
        return self.done.get(tag)

    def arrivals(self, tag: str) -> dict[int, float]:
        self.poll(0)
        return dict(self.arrived[tag])

    def failures(self, tag: str) -> int | None:
        return None  # p2pdm keeps retrying until the message expires

    def progress(self, tag: str) -> int:
        return len(self.sent[tag]) + len(self.arrived[tag])


# --- the workload, the same code for both


def wait_delivery(system: Any, tag: str, count: int, cap_s: float, stall_s: float) -> bool:
    """Until `count` arrived (True), or no progress for `stall_s`, or `cap_s` passed."""
    deadline = time.monotonic() + cap_s
    last, last_change = -1, time.monotonic()
    while True:
        if len(system.arrivals(tag)) >= count:
            return True
        progress = system.progress(tag)
        now = time.monotonic()
        if progress != last:
            last, last_change = progress, now
        if now - last_change > stall_s or now > deadline:
            return False
        system.poll(0.2)


def run_batch(
    system: Any, tag: str, count: int, rate: float, cap_s: float, stall_s: float
) -> Results:
    """Submit `count` messages (paced at `rate`, or all at once) and time their delivery."""
    system.submit(tag, count, rate)
    complete = wait_delivery(system, tag, count, cap_s, stall_s)
    sent, arrived = system.submits(tag), system.arrivals(tag)
    first = min(sent.values()) if sent else 0.0
    submitted = system.submitted(tag)
    last_in = max(arrived.values()) if arrived else None
    elapsed = (last_in - first) if last_in is not None else None
    return {
        "rate": rate,
        "count": count,
        "delivered": len(arrived),
        "complete": complete,
        "elapsed_s": elapsed,
        # Until the last submit call returned (LXMF's handle_outbound can block).
        "submit_s": submitted - first if submitted is not None else None,
        "msgs_per_s": len(arrived) / elapsed if elapsed else None,
        "failed": system.failures(tag),
    }


def workload(system: Any, cfg: Config) -> Results:
    """Latency at a light load, the paced ladder, then the burst."""
    out: Results = {}
    n = max(2, round(cfg.rate * cfg.seconds))
    system.submit("lat", n, cfg.rate)
    wait_delivery(system, "lat", n, cfg.seconds + 60, cfg.stall_s)
    sent, arrived = system.submits("lat"), system.arrivals("lat")
    lat = sorted(arrived[s] - sent[s] for s in arrived if s in sent)
    out["latency_p50_s"], out["latency_p99_s"] = quantiles(lat)
    out["latency_max_s"] = lat[-1] if lat else None
    out["latency_measured"], out["latency_sent"] = len(lat), n

    trials: list[Results] = []
    rate, again = LADDER_START, False
    while rate <= LADDER_MAX:
        count = max(50, min(round(rate * cfg.trial_s), cfg.messages))
        tag = f"p{int(rate)}{'b' if again else ''}"
        trial = run_batch(system, tag, count, rate, count / rate + 60, cfg.stall_s)
        trials.append(trial)
        print(
            f"    paced {rate:7,.0f}/s: {trial['delivered']}/{count} delivered"
            f" at {trial['msgs_per_s'] or 0:8,.1f} msgs/s",
            flush=True,
        )
        if not trial["complete"]:
            break  # a stall: the next rate would only stall longer
        if (trial["msgs_per_s"] or 0) < 0.9 * rate:
            if again:
                break
            again = True  # under 90% of the rate: once more, a hiccup is not a limit
            continue
        rate, again = rate * 2, False
    out["paced_trials"] = trials
    good = [t for t in trials if t["complete"]]
    best = max(good, key=lambda t: t["msgs_per_s"]) if good else None
    out["paced_best_msgs_per_s"] = best["msgs_per_s"] if best else None
    out["paced_best_rate"] = best["rate"] if best else None

    burst = run_batch(system, "burst", cfg.messages, 0, cfg.burst_cap_s, cfg.stall_s)
    print(
        f"    burst: {burst['delivered']}/{cfg.messages} delivered"
        f" at {burst['msgs_per_s'] or 0:,.1f} msgs/s",
        flush=True,
    )
    out["burst"] = burst
    out["burst_msgs_per_s"] = burst["msgs_per_s"]
    out["burst_delivered"] = burst["delivered"]
    return out


# --- direct: both systems


def lxmf_direct(python: Path, tmp: Path, cfg: Config, stack: contextlib.ExitStack) -> Results:
    cond = threading.Condition()
    port = free_port()
    receiver = LxmfPeer(python, tmp / "lx-recv", "receiver", rns_config(port, True, False), cond)
    sender = LxmfPeer(python, tmp / "lx-send", "sender", rns_config(port, False, False), cond)
    stack.callback(receiver.kill)
    stack.callback(sender.kill)
    launched = time.time()
    receiver.start()
    wait_listening(port)
    sender.start()
    ready_r = receiver.wait_event("ready")
    ready_s = sender.wait_event("ready")
    dest = ready_r["dest"]
    sender.command(cmd="send", dest=dest, count=1, rate=0, tag="first", method="direct")
    first = receiver.wait_event("rx", "first")
    path = sender.got("path", "first")
    out: Results = {
        "first_delivery_s": first["t"] - launched,
        "first_receiver_ready_s": ready_r["t"] - launched,
        "first_sender_ready_s": ready_s["t"] - launched,
        "first_path_known_s": path[0]["t"] - launched if path else None,
        "settings": ready_r["settings"],
    }
    out.update(workload(LxmfDirect(sender, receiver, dest), cfg))
    out["peak_rss_sender_bytes"] = peak_rss_bytes(sender.pid)
    out["peak_rss_receiver_bytes"] = peak_rss_bytes(receiver.pid)
    receiver.kill()
    sender.kill()
    return out


def p2pdm_direct(tmp: Path, cfg: Config, stack: contextlib.ExitStack) -> Results:
    init_home(tmp / "p-a")
    b_id = init_home(tmp / "p-b")
    port = free_port()
    b = NodeProcess(tmp / "p-b", listen=f"127.0.0.1:{port}")
    a = NodeProcess(tmp / "p-a", "--bootstrap", f"127.0.0.1:{port}")
    stack.callback(b.close)
    stack.callback(a.close)
    failure: list[BaseException] = []
    b_ready: list[float] = []

    def start_b() -> None:
        try:
            b.start()
            b_ready.append(time.time())
        except BaseException as exc:
            failure.append(exc)

    launched = time.time()
    b_thread = threading.Thread(target=start_b, daemon=True)
    b_thread.start()
    wait_listening(port)
    a.start()
    a_ready = time.time()
    a.api.post("/v1/messages", {"to": b_id, "text": text("first", 0)})
    b_thread.join(DEADLINE)
    if failure or b_thread.is_alive():
        raise RuntimeError(f"B did not start: {failure}")
    deadline = time.monotonic() + DEADLINE
    while not (inbox := b.api.get("/v1/inbox")["messages"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the first message never reached B")
        time.sleep(0.01)  # polling B's inbox; its commit time is in the answer
    out: Results = {
        "first_delivery_s": float(inbox[0]["received"]) - launched,
        "first_receiver_ready_s": b_ready[0] - launched,
        "first_sender_ready_s": a_ready - launched,
    }
    out.update(workload(P2pdmDirect(a, b, b_id), cfg))
    # Node to node, without the two APIs: A's envelope timestamp -> B's inbox
    # commit (both wall clock, in ms), the scope LXMF's latency has.
    rows = b.api.get("/v1/inbox", limit=100_000)["messages"]
    node_lat = sorted(
        float(row["received"]) - float(row["ts"])
        for row in rows
        if (parsed := parse_text(row["text"])) and parsed[0] == "lat"
    )
    out["latency_node_p50_s"], out["latency_node_p99_s"] = quantiles(node_lat)
    assert a.proc is not None
    assert b.proc is not None
    out["peak_rss_sender_bytes"] = peak_rss_bytes(a.proc.pid)
    out["peak_rss_receiver_bytes"] = peak_rss_bytes(b.proc.pid)
    a.close()
    b.close()
    return out


# --- store-and-forward: both systems


def lxmf_sf(
    python: Path, tmp: Path, cfg: Config, stack: contextlib.ExitStack, cost: int | None
) -> Results:
    cond = threading.Condition()
    port = free_port()
    name = f"lx-sf-{cost or 'default'}"
    pn_args = ("--propagation-cost", str(cost)) if cost is not None else ()
    node = LxmfPeer(
        python, tmp / f"{name}-pn", "propagation", rns_config(port, True, True), cond, pn_args
    )
    recipient_home = tmp / f"{name}-recv"
    recipient = LxmfPeer(python, recipient_home, "receiver", rns_config(port, False, False), cond)
    sender = LxmfPeer(python, tmp / f"{name}-send", "sender", rns_config(port, False, False), cond)
    for peer in (node, recipient, sender):
        stack.callback(peer.kill)
    node.start()
    wait_listening(port)
    recipient.start()
    sender.start()
    pn_ready = node.wait_event("ready")
    c_dest = recipient.wait_event("ready")["dest"]
    sender.wait_event("ready")
    # The sender learns the recipient (from the node's path table) and the node.
    for dest in (c_dest, pn_ready["dest"]):
        sender.command(cmd="path", dest=dest, timeout=30)
    with cond:
        cond.wait_for(lambda: len(sender.events[("path", None)]) >= 2 or sender.exited, 40)
    paths = sender.got("path")
    if len(paths) < 2 or not all(e["ok"] for e in paths):
        raise RuntimeError(f"LXMF sender found no path: {paths}\n{sender.log_tail()}")
    recipient.kill()  # offline from here on
    sender.command(cmd="set_pn", dest=pn_ready["dest"])
    sender.wait_event("set_pn")

    m = cfg.sf_messages
    cpu0, pn_cpu0 = cpu_total(sender.pid), cpu_total(node.pid)
    sender.command(cmd="send", dest=c_dest, count=m, rate=0, tag="sf", method="propagated")
    with cond:
        cond.wait_for(
            lambda: (
                len(sender.events[("ok", "sf")]) + len(sender.events[("fail", "sf")]) >= m
                or sender.exited
            ),
            cfg.sf_cap_s,
        )
    oks, sent = sender.got("ok", "sf"), sender.got("sent", "sf")
    attempts = [e.get("attempts") or 1 for e in oks]
    cpu = cpu_total(sender.pid) - cpu0
    pn_cpu = cpu_total(node.pid) - pn_cpu0
    upload_s = (max(e["t"] for e in oks) - sent[0]["t"]) if oks and sent else None
    out: Results = {
        "settings": pn_ready["settings"],
        "sf_messages": m,
        "sf_uploaded": len(oks),
        "sf_upload_failed": sender.count("fail", "sf"),
        "sf_upload_s": upload_s / len(oks) if upload_s and oks else None,
        "sf_upload_cpu_s": cpu / max(1, len(oks)),
        "sf_node_cpu_s": pn_cpu / max(1, len(oks)),
        # LXMessage.delivery_attempts: links opened for an upload (1: no retry).
        "sf_upload_attempts_max": max(attempts, default=None),
        "sf_upload_attempts_mean": statistics.mean(attempts) if attempts else None,
    }
    print(f"    uploaded {len(oks)}/{m} to the propagation node", flush=True)

    # The recipient comes back and fetches from the node.
    recipient.extra = ("--sync-from", pn_ready["dest"])
    with cond:
        recipient.events.clear()
    launched = time.time()
    recipient.start()
    deadline = time.monotonic() + DEADLINE * 2
    syncs_seen = retries = 0
    while recipient.count("rx", "sf") < len(oks) and time.monotonic() < deadline:
        with cond:
            cond.wait(0.2)
        syncs = recipient.got("sync")
        for event in syncs[syncs_seen:]:
            # A sync that ended short (or failed): ask again, a bounded number of times.
            short = recipient.count("rx", "sf") < len(oks)
            if event["state"] >= PR_COMPLETE and short and retries < 5:
                retries += 1
                recipient.command(cmd="sync")
        syncs_seen = len(syncs)
        if recipient.exited:
            raise RuntimeError("LXMF recipient exited\n" + recipient.log_tail())
    rx = recipient.got("rx", "sf")
    out["sf_delivered"] = len(rx)
    done = rx and len(rx) >= len(oks)
    out["sf_recipient_s"] = (max(e["t"] for e in rx) - launched) if done else None
    out["sf_sync_retries"] = retries
    for peer in (node, recipient, sender):
        peer.kill()
    return out


def p2pdm_sf(tmp: Path, cfg: Config, stack: contextlib.ExitStack) -> Results:
    init_home(tmp / "s-a")
    r_id = init_home(tmp / "s-r")
    c_id = init_home(tmp / "s-c")
    r = NodeProcess(tmp / "s-r")
    stack.callback(r.close)
    r.start()
    a = NodeProcess(tmp / "s-a", "--no-relay", "--bootstrap", r.address)
    stack.callback(a.close)
    a.start()
    a.wait_connected(r_id)
    assert a.proc is not None

    m = cfg.sf_messages
    # A says "relayed" for each message a relay has taken (its outbox row
    # then shows relayed_to > 0): pushed to us, so nothing polls A.
    events = a.api.events("/v1/events")
    try:
        cpu0 = cpu_total(a.proc.pid)
        t0 = time.perf_counter()
        texts = [text("sf", i) for i in range(m)]
        ids = set(a.api.post("/v1/messages", {"to": c_id, "texts": texts})["ids"])
        relayed: set[str] = set()
        deadline = time.monotonic() + DEADLINE
        while len(relayed) < m and (left := deadline - time.monotonic()) > 0:
            event = events.next(timeout=left)
            if event is not None and event[0] == "relayed" and event[1]["id"] in ids:
                relayed.add(event[1]["id"])
        upload_s = time.perf_counter() - t0
        cpu = cpu_total(a.proc.pid) - cpu0
    finally:
        events.close()
    out: Results = {
        "sf_messages": m,
        "sf_uploaded": len(relayed),
        "sf_upload_s": upload_s / m,
        "sf_upload_cpu_s": cpu / m,
    }
    c = NodeProcess(tmp / "s-c", "--no-relay", "--bootstrap", r.address)
    stack.callback(c.close)
    launched = time.time()
    c.start()
    deadline = time.monotonic() + DEADLINE
    while (got := int(c.status()["since_start"]["received"])) < len(relayed):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)  # polling C's status; the inbox has the exact times
    out["sf_delivered"] = got
    inbox = c.api.get("/v1/inbox", limit=max(m, 1))["messages"]
    arrived = [float(row["received"]) for row in inbox if parse_text(row["text"])]
    done = arrived and got >= len(relayed)
    out["sf_recipient_s"] = max(arrived) - launched if done else None
    for node in (c, a, r):
        node.close()
    return out


# --- report


def section(name: str, fn: Callable[[], Results]) -> Results:
    """Run one part; an error is reported and recorded, and the rest still runs."""
    print(f"{name} ...", flush=True)
    started = time.monotonic()
    try:
        result = fn()
    except Exception as exc:
        print(f"  FAILED: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
    return result


# (key, label, scale for printing, unit printed, which way is better)
ROWS = [
    ("burst_msgs_per_s", "throughput, burst", 1, "msgs/s", "higher"),
    ("paced_best_msgs_per_s", "throughput, paced (best step)", 1, "msgs/s", "higher"),
    ("latency_p50_s", "latency p50", 1000, "ms", "lower"),
    ("latency_p99_s", "latency p99", 1000, "ms", "lower"),
    ("first_delivery_s", "time to first delivery", 1, "s", "lower"),
    ("peak_rss_sender_bytes", "peak RSS, sender", 1 / 2**20, "MiB", "lower"),
    ("peak_rss_receiver_bytes", "peak RSS, receiver", 1 / 2**20, "MiB", "lower"),
    ("sf_recipient_s", "store&fwd: recipient start -> all", 1, "s", "lower"),
    ("sf_upload_s", "store&fwd: time per upload", 1, "s", "lower"),
    ("sf_upload_cpu_s", "store&fwd: sender CPU per upload", 1000, "ms", "lower"),
]
SF_KEYS = ("sf_recipient_s", "sf_upload_s", "sf_upload_cpu_s")


def fmt(value: float | None, scale: float = 1) -> str:
    if value is None:
        return "-"
    v = value * scale
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.3f}"


def ratio(p: float | None, x: float | None) -> float | None:
    return p / x if p is not None and x else None


def flatten(prefix: str, res: Results, out: Results) -> None:
    """Numbers (and the paced steps) into the JSON figures, under `prefix`."""
    for key, value in res.items():
        if key == "paced_trials" or isinstance(value, bool | int | float | str) or value is None:
            out[f"{prefix}_{key}"] = value
        elif key == "burst":
            for k, v in value.items():
                out[f"{prefix}_burst_{k}"] = v


def print_table(p: Results, x: Results, low: Results | None, out: Results) -> None:
    header = f"{'figure':38} {'unit':>6} {'p2pdm':>10} {'LXMF':>10} {'p2pdm/LXMF':>11}  better"
    print(header)
    print("-" * len(header))
    rows = [(key, label, scale, unit, better, x) for key, label, scale, unit, better in ROWS]
    if low is not None and "error" not in low:
        cost = low["settings"].get("propagation_stamp_cost")
        rows += [
            (key, f"{label} (LXMF cost {cost})", scale, unit, better, low)
            for key, label, scale, unit, better in ROWS
            if key in SF_KEYS
        ]
    for key, label, scale, unit, better, lx in rows:
        pv, xv = p.get(key), lx.get(key)
        r = ratio(pv, xv)
        print(
            f"{label:38} {unit:>6} {fmt(pv, scale):>10} {fmt(xv, scale):>10}"
            f" {'-' if r is None else f'{r:.3g}':>11}  {better}"
        )
        which = "ratio_low_cost" if lx is low else "ratio"
        out[f"{which}_{key}"] = r


def print_details(name: str, res: Results, cfg: Config) -> None:
    if "error" in res:
        print(f"  {name}: FAILED: {res['error']}")
    if "sf_error" in res:
        print(f"  {name} store-and-forward: FAILED: {res['sf_error']}")
    if "burst" in res:
        b = res["burst"]
        print(
            f"  {name} burst: {b['delivered']}/{b['count']} delivered in {fmt(b['elapsed_s'])} s"
            f" (submitting took {fmt(b['submit_s'])} s)"
            + ("" if b["complete"] else " -- STALLED, gave up waiting")
            + (f", {b['failed']} reported failed" if b["failed"] else "")
        )
    if "paced_trials" in res:
        steps = ", ".join(
            f"{t['rate']:,.0f}/s: {t['delivered']}/{t['count']} at {fmt(t['msgs_per_s'])}"
            for t in res["paced_trials"]
        )
        print(f"  {name} paced steps (target: delivered, msgs/s): {steps}")
    if "latency_sent" in res:
        print(
            f"  {name} latency: {res['latency_measured']}/{res['latency_sent']} measured at"
            f" {cfg.rate:g} msgs/s, max {fmt(res['latency_max_s'], 1000)} ms"
        )
    if res.get("latency_node_p50_s") is not None:
        print(
            f"  {name} latency node to node (no APIs; A's envelope time -> B's inbox commit,"
            f" 1 ms resolution): p50 {fmt(res['latency_node_p50_s'], 1000)} ms,"
            f" p99 {fmt(res['latency_node_p99_s'], 1000)} ms"
        )
    if "first_delivery_s" in res:
        parts = [
            f"{what} +{fmt(res[key])} s"
            for key, what in (
                ("first_receiver_ready_s", "receiver up"),
                ("first_sender_ready_s", "sender up"),
                ("first_path_known_s", "path known"),
                ("first_delivery_s", "delivered"),
            )
            if res.get(key) is not None
        ]
        print(f"  {name} first delivery, from launch: {', '.join(parts)}")
    if "sf_messages" in res:
        line = (
            f"  {name} store-and-forward: {res['sf_uploaded']}/{res['sf_messages']} uploaded,"
            f" {res.get('sf_delivered')} fetched by the recipient"
        )
        if res.get("sf_node_cpu_s") is not None:
            line += f"; propagation node CPU {fmt(res['sf_node_cpu_s'], 1000)} ms per message"
        if res.get("sf_upload_attempts_max"):
            line += (
                f"; LXMF delivery_attempts per upload: mean"
                f" {res['sf_upload_attempts_mean']:.1f}, max {res['sf_upload_attempts_max']}"
            )
        if res.get("sf_sync_retries"):
            line += f"; {res['sf_sync_retries']} sync requests repeated"
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        line += f"; CPU read from /proc in {tick_ms:.0f} ms ticks"
        print(line)


def print_settings(x: Results, low: Results | None, cfg: Config) -> None:
    settings = x.get("settings") or {}
    pn = x.get("sf_settings") or {}
    print()
    print("LXMF settings used:")
    rns, lxmf = settings.get("rns") or pn.get("rns"), settings.get("lxmf") or pn.get("lxmf")
    print(f"  rns {rns}, lxmf {lxmf} (own virtualenv), LXMRouter defaults unless listed")
    print(
        "  direct: LXMessage(desired_method=DIRECT): one RNS Link, one packet per message;"
        f" {TEXT_LEN}-byte content, empty title, no fields; the recipient's inbound stamp"
        f" cost {settings.get('delivery_stamp_cost')} (no stamp on direct messages)"
    )
    print(
        "  store-and-forward: desired_method=PROPAGATED to a node running enable_propagation();"
        f" LXMRouter default propagation_cost={pn.get('propagation_stamp_cost')},"
        f" flexibility {pn.get('propagation_stamp_flexibility')} (the node accepts stamps"
        " worth cost - flexibility); the sender stamps to the cost the node announces, in"
        " LXMRouter's deferred-stamp job (one message at a time, run every 4 s)"
    )
    if low is not None and "settings" in low:
        print(
            "  low-cost run: LXMRouter(propagation_cost="
            f"{low['settings'].get('propagation_stamp_cost')}) on the node, the lowest LXMF takes"
        )
    print("  Reticulum config of the listening process (enable_transport = Yes for the node):")
    for line in rns_config(0, True, False).splitlines():
        print("    " + line.replace("listen_port = 0", "listen_port = <a free port>"))
    print("  the other processes' [interfaces] instead:")
    for line in rns_config(0, False, False).splitlines()[-5:]:
        print("    " + line.replace("target_port = 0", "target_port = <that port>"))
    print(
        "p2pdm: `p2pdm run --listen 127.0.0.1:<port> --no-mdns`; the sender with --bootstrap;"
        " store-and-forward: relay R as is, A and C with --no-relay, C with --bootstrap R"
    )
    print(
        f"counts: burst {cfg.messages}, latency {cfg.rate:g}/s for {cfg.seconds:g} s,"
        f" paced steps of {cfg.trial_s:g} s, store-and-forward {cfg.sf_messages}"
    )


def report(cfg: Config, p: Results, x: Results, low: Results | None) -> Results:
    out: Results = {"quick": cfg.quick, "cpus": os.cpu_count()}
    flatten("p2pdm", p, out)
    flatten("lxmf", {k: v for k, v in x.items() if not k.endswith("settings")}, out)
    if low is not None:
        flatten("lxmf_low_cost", {k: v for k, v in low.items() if k != "settings"}, out)
    for key in ("settings", "sf_settings"):
        if isinstance(x.get(key), dict):
            for k, v in x[key].items():
                out[f"lxmf_{key}_{k}"] = v
    print()
    print(f"p2pdm vs LXMF on 127.0.0.1, {os.cpu_count()} cpus")
    print_table(p, x, low, out)
    print()
    print("details:")
    for name, res in (("p2pdm", p), ("LXMF", x)) + ((("LXMF low cost", low),) if low else ()):
        print_details(name, res, cfg)
    print_settings(x, low, cfg)
    return out


def main() -> None:
    # The event-reading threads must not wait out the main thread's GIL slice
    # before they timestamp an event (as in bench_direct.py).
    sys.setswitchinterval(0.0005)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (about 1-2 minutes)")
    parser.add_argument("--messages", type=int, help="burst size (default 1000; quick 200)")
    parser.add_argument("--rate", type=float, default=20.0, help="latency load, msgs/s")
    parser.add_argument("--seconds", type=float, help="latency run length (default 10; quick 3)")
    parser.add_argument("--trial-seconds", type=float, help="paced step length (default 3)")
    parser.add_argument("--sf-messages", type=int, help="store-and-forward count (default 10)")
    parser.add_argument(
        "--lxmf-low-cost",
        action=argparse.BooleanOptionalAction,
        help="also run LXMF store-and-forward at stamp cost 13 (default: on unless --quick)",
    )
    parser.add_argument(
        "--lxmf-venv",
        type=Path,
        default=REPO / ".venv-lxmf",
        metavar="DIR",
        help="the LXMF virtualenv (made if missing; default .venv-lxmf in the repo root)",
    )
    figures.add_option(parser)
    args = parser.parse_args()
    cfg = Config(args)

    # SIGTERM unwinds like Ctrl-C: every process killed, every temporary
    # directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    python = ensure_lxmf_venv(args.lxmf_venv.resolve())
    low: Results | None = None
    with (
        tempfile.TemporaryDirectory(prefix="compare-lxmf-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        p = section("p2pdm direct", lambda: p2pdm_direct(root, cfg, stack))
        x = section("LXMF direct", lambda: lxmf_direct(python, root, cfg, stack))
        p_sf = section("p2pdm store-and-forward", lambda: p2pdm_sf(root, cfg, stack))
        x_sf = section(
            "LXMF store-and-forward (LXMF's default stamp cost)",
            lambda: lxmf_sf(python, root, cfg, stack, None),
        )
        if cfg.low_cost:
            low = section(
                f"LXMF store-and-forward (stamp cost {LXMF_MIN_PROPAGATION_COST})",
                lambda: lxmf_sf(python, root, cfg, stack, LXMF_MIN_PROPAGATION_COST),
            )
    p.update({k: v for k, v in p_sf.items() if k != "error"})
    if "error" in p_sf:
        p["sf_error"] = p_sf["error"]
    x.update({k: v for k, v in x_sf.items() if k not in ("error", "settings")})
    x["sf_settings"] = x_sf.get("settings")
    if "error" in x_sf:
        x["sf_error"] = x_sf["error"]
    out = report(cfg, p, x, low)
    elapsed = time.monotonic() - started
    print(f"total time {elapsed:.0f} s")
    out["total_s"] = elapsed
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # The with-blocks have already killed every process and removed the
        # temporary directories on the way out.
        print("\ninterrupted: all benchmark processes stopped", file=sys.stderr)
        sys.exit(130)
