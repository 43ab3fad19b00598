"""Chaos: five hosts in network namespaces, a schedule of faults, a workload.

Each host runs a real `p2pdm run` in its own namespace (mDNS on, host 0 as
everyone's bootstrap, each clock up to an hour off with
`--clock-offset`). Everyone is everyone's contact and all five share one
group. Then, step by step, a seeded schedule cuts and heals hosts' links,
restarts nodes (cleanly or with SIGKILL) while a seeded workload sends 1:1
and group texts from random hosts. At the end every link is healed and
every node up; the run passes when every copy a sender's API acknowledged
is in its recipient's inbox exactly once and every store is sound.

`scripts/chaos.py` runs long schedules; `tests/test_chaos_netns.py` a short
one. `workload` is also what `tests/test_faulty_links.py` sends through
links that drop, duplicate, reorder and delay frames.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from p2pdm.store import Store, text_of_body

from .labnodes import FAST_DEAD_PEER, Host

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .netns import NetnsLab

HOSTS = 5
SKEWS_S = (0, 3600, -3600, 1800, -1800)
"""Each host's clock offset: within the ±1 h the campaign asks for."""
GROUP_SHARE = 0.3
MAX_CUT = 2
DRAIN_S = 240.0


@dataclass(frozen=True)
class Send:
    sender: int
    to: int | None
    """A host, or None for the group."""
    text: str


def workload(rng: random.Random, hosts: int, count: int) -> list[Send]:
    """`count` texts from random hosts: 1:1 to another host, or to the group."""
    sends = []
    for n in range(count):
        sender = rng.randrange(hosts)
        to = (
            None
            if rng.random() < GROUP_SHARE
            else rng.choice([h for h in range(hosts) if h != sender])
        )
        sends.append(Send(sender, to, f"chaos {n} from {sender}"))
    return sends


@dataclass(frozen=True)
class Fault:
    action: str
    """"cut", "heal", "restart" (SIGTERM) or "kill" (SIGKILL), then start."""
    host: int


def fault_schedule(rng: random.Random, hosts: int, steps: int, rate: float) -> list[Fault | None]:
    """One fault or none per step; at most `MAX_CUT` hosts are cut at once."""
    cut: set[int] = set()
    schedule: list[Fault | None] = []
    for _ in range(steps):
        if rng.random() >= rate:
            schedule.append(None)
            continue
        choices = ["restart", "kill"] + (["cut"] if len(cut) < MAX_CUT else [])
        choices += ["heal"] * 2 if cut else []
        action = rng.choice(choices)
        if action == "heal":
            host = rng.choice(sorted(cut))
            cut.discard(host)
        elif action == "cut":
            host = rng.choice([h for h in range(hosts) if h not in cut])
            cut.add(host)
        else:
            host = rng.randrange(hosts)
        schedule.append(Fault(action, host))
    return schedule


@dataclass
class Expected:
    """One acknowledged copy: who must end up with it."""

    recipient: int
    message_id: str
    text: str


@dataclass
class ChaosResult:
    seed: int
    steps: int
    faults: Counter[str] = field(default_factory=Counter)
    sends: Counter[str] = field(default_factory=Counter)
    refused_sends: int = 0
    """Sends the API refused (none expected: a cut host still takes them)."""
    expected: int = 0
    delivered: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: int = 0
    integrity: dict[int, list[str]] = field(default_factory=dict)
    drain_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.missing
            and self.duplicated == 0
            and not any(self.integrity.values())
        )

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "steps": self.steps,
            "faults": dict(self.faults),
            "sends": dict(self.sends),
            "refused_sends": self.refused_sends,
            "expected_copies": self.expected,
            "delivered_once": self.delivered,
            "missing": len(self.missing),
            "duplicated": self.duplicated,
            "integrity_ok": not any(self.integrity.values()),
            "drain_s": round(self.drain_s, 1),
            "error": self.error,
            "ok": self.ok,
        }


class ChaosMesh:
    """The five hosts of one run, their contacts and their group."""

    def __init__(self, lab: NetnsLab, root: Path, hosts: int = HOSTS) -> None:
        self.lab = lab
        self.hosts: list[Host] = []
        for i in range(hosts):
            extra = [*FAST_DEAD_PEER, "--clock-offset", str(SKEWS_S[i % len(SKEWS_S)])]
            if i:
                extra += ["--bootstrap", self.hosts[0].address]
            self.hosts.append(Host(lab, i, root / f"h{i}", *extra))
        self.cut: set[int] = set()
        self.group = ""

    def start(self) -> None:
        for host in self.hosts:
            host.start()
        for host in self.hosts:
            for other in self.hosts:
                if other is not host:
                    host.node.api.post("/v1/contacts", {"id": other.id, "name": f"h{other.index}"})
        made = self.hosts[0].node.api.post(
            "/v1/groups", {"name": "chaos", "members": [h.id for h in self.hosts[1:]]}
        )
        self.group = made["id"]
        # Group texts sent before a member holds the group would wait for a
        # retry; the schedule starts once everyone has it.
        for host in self.hosts[1:]:
            host.node.wait_until(lambda h=host: self._holds_group(h))

    def _holds_group(self, host: Host) -> bool:
        groups = host.node.api.get("/v1/groups")["groups"]
        return any(g["id"] == self.group for g in groups)

    def send(self, send: Send) -> list[Expected]:
        api = self.hosts[send.sender].node.api
        if send.to is None:
            answer = api.post(f"/v1/groups/{self.group}/messages", {"texts": [send.text]})
            by_id = {h.id: h.index for h in self.hosts}
            members = {h.id for h in self.hosts if h.index != send.sender}
            if set(answer["copies"]) != members:
                raise AssertionError(f"copies for {sorted(answer['copies'])}, not every member")
            return [
                Expected(by_id[peer], ids[0], send.text) for peer, ids in answer["copies"].items()
            ]
        answer = api.post("/v1/messages", {"to": self.hosts[send.to].id, "texts": [send.text]})
        return [Expected(send.to, answer["ids"][0], send.text)]

    def apply(self, fault: Fault) -> None:
        node = self.hosts[fault.host].node
        if fault.action == "cut":
            self.lab.cut(fault.host)
            self.cut.add(fault.host)
        elif fault.action == "heal":
            self.lab.heal(fault.host)
            self.cut.discard(fault.host)
        else:
            if fault.action == "kill":
                node.kill()
            else:
                node.stop()
            node.start()

    def heal_all(self) -> None:
        for host in sorted(self.cut):
            self.lab.heal(host)
        self.cut.clear()

    def drain(self, timeout: float) -> None:
        """Return once no node has mail waiting for a receipt."""
        # Waited on in turn: a late receipt can add a pending row to a node
        # already passed, but the inboxes are what the run checks.
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            status = host.node.status
            host.node.wait_until(
                lambda s=status: s()["outbox_pending"] == 0,
                max(0.1, deadline - time.monotonic()),
            )

    def pending(self) -> int:
        return sum(h.node.status()["outbox_pending"] for h in self.hosts)

    def close(self) -> None:
        for host in self.hosts:
            host.close()


def run_chaos(
    lab: NetnsLab,
    root: Path,
    seed: int,
    steps: int,
    *,
    step_s: float = 0.5,
    fault_rate: float = 0.25,
    log: Callable[[str], None] = lambda line: None,
) -> ChaosResult:
    rng = random.Random(seed)
    result = ChaosResult(seed, steps)
    sends = workload(rng, HOSTS, steps)
    faults = fault_schedule(rng, HOSTS, steps, fault_rate)
    mesh = ChaosMesh(lab, root)
    expected: list[Expected] = []
    try:
        mesh.start()
        next_step = time.monotonic()
        for step, (send, fault) in enumerate(zip(sends, faults, strict=True)):
            if fault is not None:
                mesh.apply(fault)
                result.faults[fault.action] += 1
                log(f"step {step}: {fault.action} h{fault.host}")
            expected += mesh.send(send)
            result.sends["group" if send.to is None else "1:1"] += 1
            # The schedule is paced in real time: faults need time to bite.
            next_step += step_s
            time.sleep(max(0.0, next_step - time.monotonic()))
        mesh.heal_all()
        began = time.monotonic()
        try:
            mesh.drain(DRAIN_S)
        except TimeoutError:
            result.error = f"{mesh.pending()} copies still pending after {DRAIN_S:.0f} s"
        result.drain_s = time.monotonic() - began
    except Exception as e:  # a broken run is reported with what it got to
        result.error = f"{type(e).__name__}: {e}"
    finally:
        mesh.close()
    check_inboxes(result, [h.home for h in mesh.hosts], expected)
    return result


def check_inboxes(result: ChaosResult, homes: list[Path], expected: list[Expected]) -> None:
    """With the nodes stopped: every expected copy once, and sound stores."""
    inboxes: list[set[str]] = []
    for i, home in enumerate(homes):
        with Store.open(home / "store.db") as store:
            result.integrity[i] = store.integrity_check()
            rows = store.inbox()
        inboxes.append({r.message_id.hex() for r in rows})
        texts = Counter(t for r in rows if (t := text_of_body(r.body)) is not None)
        result.duplicated += sum(n - 1 for n in texts.values())
    result.expected = len(expected)
    for e in expected:
        if e.message_id in inboxes[e.recipient]:
            result.delivered += 1
        else:
            result.missing.append(f"h{e.recipient} {e.text}")
