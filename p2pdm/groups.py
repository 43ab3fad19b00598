"""Group conversations: the signed, versioned member list (pure functions).

A group is an id (16 random bytes), a name, members and admins. Every
change is a whole new state with the version one higher, sent as a GROUP
message (envelope.MessageKind.GROUP) by an admin to every member of the old
and the new state, so each member can check it alone:

    {"g": group id, "v": version, "name": text,
     "members": [node key, ...], "admins": [node key, ...]}

Keys are sorted and unique; admins are members; the list holds at most
MAX_MEMBERS. The envelope signature says who sent it; `next_state` decides
whether a member takes it. Group messages are sealed once per member (see
docs/PROTOCOL.md, "Groups"), so a member removed at version v gets nothing
sealed after the sender saw v.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from p2pdm import wire
from p2pdm.identity import PUBLIC_KEY_LEN, NodeId

if TYPE_CHECKING:
    from p2pdm.store import Store

GROUP_ID_LEN = 16
# Common apps allow groups of 15 to 50; each message is sealed per member,
# so the cost of a send grows with this.
MAX_MEMBERS = 64
MAX_GROUP_NAME_LEN = 64
# A version that cannot run out: one change a millisecond for 10^5 years.
MAX_VERSION = (1 << 53) - 1


class GroupError(ValueError):
    """A group state or change that is not valid; the message says why."""


@dataclass(frozen=True)
class GroupState:
    group_id: bytes
    version: int
    name: str
    members: tuple[NodeId, ...]
    admins: tuple[NodeId, ...]

    def body(self) -> dict[wire.Key, wire.Value]:
        return {
            "g": self.group_id,
            "v": self.version,
            "name": self.name,
            "members": [m.public_key for m in self.members],
            "admins": [a.public_key for a in self.admins],
        }

    def encoded(self) -> bytes:
        return wire.encode(self.body())

    def rank(self) -> tuple[int, bytes]:
        """Order of states: version, then a digest, so two admins' concurrent
        changes to the same version are settled the same way everywhere."""
        return self.version, hashlib.blake2b(self.encoded(), digest_size=16).digest()

    def is_member(self, node: NodeId) -> bool:
        return node in self.members

    def is_admin(self, node: NodeId) -> bool:
        return node in self.admins


def _keys(value: wire.Value, what: str) -> tuple[NodeId, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_MEMBERS:
        raise wire.WireError(f"group.{what} must list 1 to {MAX_MEMBERS} node keys")
    if not all(isinstance(k, bytes) and len(k) == PUBLIC_KEY_LEN for k in value):
        raise wire.WireError(f"group.{what} holds {PUBLIC_KEY_LEN}-byte node keys")
    keys = [k for k in value if isinstance(k, bytes)]
    if keys != sorted(set(keys)):
        raise wire.WireError(f"group.{what} must be sorted and without repeats")
    return tuple(NodeId(k) for k in keys)


def parse_state(body: wire.Value) -> GroupState:
    """A GROUP message body as a state; raises wire.WireError."""
    fields = wire.as_map(body, "group", required={"g", "v", "name", "members", "admins"})
    group_id = wire.field_bytes(fields, "g", "group", size=GROUP_ID_LEN)
    version = wire.field_int(fields, "v", "group", lo=1, hi=MAX_VERSION)
    name = wire.field_text(fields, "name", "group", max_len=MAX_GROUP_NAME_LEN)
    if not name.strip():
        raise wire.WireError("group.name is empty")
    members = _keys(fields["members"], "members")
    admins = _keys(fields["admins"], "admins")
    if not set(admins) <= set(members):
        raise wire.WireError("group.admins must all be members")
    return GroupState(group_id, version, name, members, admins)


def make_state(
    group_id: bytes, version: int, name: str, members: set[NodeId], admins: set[NodeId]
) -> GroupState:
    """A new state from sets; raises GroupError if it is not one members would take."""
    state = GroupState(
        group_id,
        version,
        name.strip(),
        tuple(sorted(members, key=lambda n: n.public_key)),
        tuple(sorted(admins, key=lambda n: n.public_key)),
    )
    try:
        parse_state(state.body())
    except wire.WireError as exc:
        raise GroupError(str(exc).removeprefix("group.")) from None
    return state


class Verdict(Enum):
    """What a member does with a GROUP message it received."""

    TAKE = "take"
    """Newer and sent by an admin of the state we hold: it replaces ours."""
    STALE = "stale"
    """Not newer than ours: nothing changes."""
    LATER = "later"
    """Newer, but its sender is not an admin of the state we hold; it may be
    once a change we have not seen yet arrives, so it is kept and tried again."""
    REFUSE = "refuse"
    """Never acceptable: it is not a group we are or were in."""


def next_state(
    current: GroupState | None, offered: GroupState, sender: NodeId, me: NodeId
) -> Verdict:
    """Whether `me`, holding `current`, takes `offered` from `sender`.

    A group we do not know yet is taken from one of its admins when it lists
    us (trust on first use: whoever adds us vouches for the list). After
    that, only a newer state from an admin of the one we hold.
    """
    if current is None:
        if offered.is_member(me) and offered.is_admin(sender):
            return Verdict.TAKE
        return Verdict.REFUSE
    if offered.rank() <= current.rank():
        return Verdict.STALE
    if current.is_admin(sender):
        return Verdict.TAKE
    return Verdict.LATER


# --- held states (the store keeps them; these say what to keep) -----------------


def load(store: Store, group_id: bytes) -> GroupState | None:
    """The state held for a group, if any."""
    held = store.group(group_id)
    return None if held is None else parse_state(wire.decode(held[0]))


def take(
    store: Store, me: NodeId, sender: NodeId, offered: GroupState, now_ms: int
) -> list[GroupState]:
    """A member received `offered` from `sender`: keep it if `next_state`
    says so, or set it aside for later; then retry what was set aside.
    Returns the states taken, in order (the last is the one held now)."""
    current = load(store, offered.group_id)
    verdict = next_state(current, offered, sender, me)
    if verdict is Verdict.LATER:
        store.keep_pending_group_state(offered.group_id, sender, offered.encoded(), now_ms)
        return []
    if verdict is not Verdict.TAKE:
        return []
    taken = [offered]
    _save(store, offered, me, now_ms)
    # States set aside may be acceptable now: retry until nothing changes.
    while True:
        progress = False
        left: list[tuple[NodeId, GroupState]] = []
        for by, data in store.take_pending_group_states(offered.group_id):
            state = parse_state(wire.decode(data))
            verdict = next_state(taken[-1], state, by, me)
            if verdict is Verdict.TAKE:
                taken.append(state)
                _save(store, state, me, now_ms)
                progress = True
            elif verdict is Verdict.LATER:
                left.append((by, state))
        for by, state in left:
            store.keep_pending_group_state(state.group_id, by, state.encoded(), now_ms)
        if not progress or not left:
            return taken


def _save(store: Store, state: GroupState, me: NodeId, now_ms: int) -> None:
    store.save_group(state.group_id, state.version, state.encoded(), state.is_member(me), now_ms)
