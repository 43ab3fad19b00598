"""Whom to keep connected, and when to dial them (sans-IO: the caller passes the time).

The policy (docs/DECISIONS.md, "Dial policy"):
- wanted, in this order: peers we hold mail for, contacts, and the most
  recently discovered others (mDNS hints), at most `max_discovered` of
  those, so a LAN of 100 nodes does not become 100 x 99 connections;
- a peer already connected, or being dialled, is not dialled again; at most
  `max_dialling` dials run at once;
- a failed dial backs off exponentially per peer (with jitter), and a
  success resets it;
- dials wanted only because of discovery also spend a token from a bucket
  (`rate` per second, `burst` at once), so a flood of fake announcements,
  each with a new made-up id, costs a bounded number of dials.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2pdm.transport import TokenBucket, backoff_delay

if TYPE_CHECKING:
    from collections.abc import Collection

    from p2pdm.identity import NodeId

# Discovered ids remembered (most recent kept); more are forgotten, oldest first.
MAX_REMEMBERED_DISCOVERIES = 256


@dataclass
class PeerTable:
    max_discovered: int = 16
    max_dialling: int = 8
    rate: float = 1.0
    burst: float = 8.0
    backoff_base: float = 0.5
    backoff_cap: float = 15.0
    dials_started: int = 0
    discovery_dials: int = 0
    _discovered: OrderedDict[NodeId, float] = field(default_factory=OrderedDict)
    _failures: dict[NodeId, int] = field(default_factory=dict)
    _retry_at: dict[NodeId, float] = field(default_factory=dict)
    dialling: set[NodeId] = field(default_factory=set)
    _bucket: TokenBucket | None = None
    _starved = False  # a discovered peer waited for a token in the last plan

    def discovered(self, peer: NodeId, now: float) -> None:
        """A discovery hint named `peer` (an untrusted claim: only a reason to dial)."""
        self._discovered[peer] = now
        self._discovered.move_to_end(peer)
        while len(self._discovered) > MAX_REMEMBERED_DISCOVERIES:
            self._discovered.popitem(last=False)

    def was_discovered(self, peer: NodeId) -> bool:
        """A discovery hint named `peer` lately (one of the last 256 ids heard)."""
        return peer in self._discovered

    def new_address(self, peer: NodeId) -> None:
        """A new address for `peer` was learned: its backoff no longer applies."""
        self._retry_at.pop(peer, None)
        self._failures.pop(peer, None)

    def plan(
        self,
        now: float,
        *,
        connected: Collection[NodeId],
        mail: Collection[NodeId],
        contacts: Collection[NodeId],
    ) -> list[NodeId]:
        """The peers to dial now; each is marked as dialling until `dial_done`."""
        if self._bucket is None:
            self._bucket = TokenBucket(self.rate, self.burst, now)
        recent = list(reversed(self._discovered))[: self.max_discovered]
        self._starved = False
        chosen: list[NodeId] = []
        for group, from_discovery in ((mail, False), (contacts, False), (recent, True)):
            for peer in group:
                if len(self.dialling) >= self.max_dialling:
                    return chosen
                if peer in connected or peer in self.dialling:
                    continue
                if self._retry_at.get(peer, 0.0) > now:
                    continue
                if from_discovery:
                    if not self._bucket.take(now):
                        self._starved = True
                        continue
                    self.discovery_dials += 1
                self.dialling.add(peer)
                self.dials_started += 1
                chosen.append(peer)
        return chosen

    def dial_done(self, peer: NodeId, ok: bool, now: float, jitter: float) -> None:
        """A dial ended; `jitter` in [0, 1) is drawn by the caller."""
        self.dialling.discard(peer)
        if ok:
            self._failures.pop(peer, None)
            self._retry_at.pop(peer, None)
            return
        failures = self._failures.get(peer, 0)
        self._failures[peer] = failures + 1
        delay = backoff_delay(failures, base=self.backoff_base, cap=self.backoff_cap, jitter=jitter)
        self._retry_at[peer] = now + delay
        # Forget backoff state of peers nobody wants any more, so it stays bounded.
        if len(self._retry_at) > 4 * MAX_REMEMBERED_DISCOVERIES:
            for stale in [p for p, t in self._retry_at.items() if t <= now]:
                del self._retry_at[stale]
                self._failures.pop(stale, None)

    def next_wake(self, now: float) -> float | None:
        """When `plan` may have something new: a backoff ends or a token comes back."""
        times = [t for t in self._retry_at.values() if t > now]
        if self._starved and self._bucket is not None:
            times.append(now + self._bucket.wait_time(now))
        return min(times) if times else None
