"""Group conversations: the signed, versioned member list.

A group is an id (16 random bytes), a name, members and admins. Every
change is a whole new state, one version above the state it changes (its
parent, named by digest), sent as a GROUP message (envelope.MessageKind.GROUP)
by an admin of the parent to every member of the parent and the new state:

    {"g": group id, "v": version, "p": parent digest (absent at v1),
     "name": text, "members": [node key, ...], "admins": [node key, ...]}

Keys are sorted and unique; admins are members; the list holds at most
MAX_MEMBERS. The envelope signature says who sent it.

A member keeps every valid state it knows of a group (a tree: two admins
may change the same parent at once) and holds the highest-ranked one
(`rank`: version, then digest). A state is valid when its parent is a
valid state, its version is the parent's plus one, and its sender is an
admin of the parent; the first state a member learns of a group is taken
on trust from an admin it lists, when it lists the member (whoever adds
you vouches for the list). A state whose parent is not known yet waits
aside and is tried again after each state taken. So members that received
the same states hold the same one, whatever order they came in.

Group messages are sealed once per member (docs/PROTOCOL.md, "Groups"), so
a member removed at version v gets nothing sealed after the sender held v.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pdm import wire
from p2pdm.identity import PUBLIC_KEY_LEN, NodeId

if TYPE_CHECKING:
    from p2pdm.store import Store

GROUP_ID_LEN = 16
DIGEST_LEN = 16
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
    parent: bytes | None = None
    """The digest of the state this one changes (None at version 1)."""

    def body(self) -> dict[wire.Key, wire.Value]:
        body: dict[wire.Key, wire.Value] = {
            "g": self.group_id,
            "v": self.version,
            "name": self.name,
            "members": [m.public_key for m in self.members],
            "admins": [a.public_key for a in self.admins],
        }
        if self.parent is not None:
            body["p"] = self.parent
        return body

    def encoded(self) -> bytes:
        return wire.encode(self.body())

    @property
    def digest(self) -> bytes:
        return hashlib.blake2b(self.encoded(), digest_size=DIGEST_LEN).digest()

    def rank(self) -> tuple[int, bytes]:
        """Order of states: version, then digest, so two admins' concurrent
        changes to one parent are settled the same way everywhere."""
        return self.version, self.digest

    def is_member(self, node: NodeId) -> bool:
        return node in self.members

    def is_admin(self, node: NodeId) -> bool:
        return node in self.admins

    def changed(
        self,
        *,
        name: str | None = None,
        add: set[NodeId] | frozenset[NodeId] = frozenset(),
        remove: set[NodeId] | frozenset[NodeId] = frozenset(),
        admins: set[NodeId] | frozenset[NodeId] = frozenset(),
    ) -> GroupState:
        """The next state (a child of this one); GroupError says why not."""
        members = (set(self.members) | add) - remove
        new_admins = (set(self.admins) | admins) & members
        if not new_admins:
            raise GroupError("a group keeps at least one admin")
        return make_state(
            self.group_id,
            self.version + 1,
            self.name if name is None else name,
            members,
            new_admins,
            parent=self.digest,
        )


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
    fields = wire.as_map(
        body, "group", required={"g", "v", "name", "members", "admins"}, optional={"p"}
    )
    group_id = wire.field_bytes(fields, "g", "group", size=GROUP_ID_LEN)
    version = wire.field_int(fields, "v", "group", lo=1, hi=MAX_VERSION)
    parent = wire.field_bytes(fields, "p", "group", size=DIGEST_LEN) if "p" in fields else None
    if (parent is None) != (version == 1):
        raise wire.WireError("group.p names the parent of every state but the first")
    name = wire.field_text(fields, "name", "group", max_len=MAX_GROUP_NAME_LEN)
    if not name.strip():
        raise wire.WireError("group.name is empty")
    members = _keys(fields["members"], "members")
    admins = _keys(fields["admins"], "admins")
    if not set(admins) <= set(members):
        raise wire.WireError("group.admins must all be members")
    return GroupState(group_id, version, name, members, admins, parent)


def make_state(
    group_id: bytes,
    version: int,
    name: str,
    members: set[NodeId],
    admins: set[NodeId],
    *,
    parent: bytes | None = None,
) -> GroupState:
    """A new state from sets; raises GroupError if it is not one members would take."""
    # Names others' states carry are shown escaped; ours are plain text from the start.
    if not name.strip().isprintable():
        raise GroupError("a group name is printable characters on one line")
    state = GroupState(
        group_id,
        version,
        name.strip(),
        tuple(sorted(members, key=lambda n: n.public_key)),
        tuple(sorted(admins, key=lambda n: n.public_key)),
        parent,
    )
    try:
        parse_state(state.body())
    except wire.WireError as exc:
        raise GroupError(str(exc).removeprefix("group.")) from None
    return state


def is_valid_child(parent: GroupState, state: GroupState, sender: NodeId) -> bool:
    """A change an admin of `parent` made to it."""
    return (
        state.parent == parent.digest
        and state.version == parent.version + 1
        and parent.is_admin(sender)
    )


# --- what a member keeps (the store holds it; these decide) ---------------------


def load(store: Store, group_id: bytes) -> GroupState | None:
    """The state held for a group, if any."""
    held = store.group(group_id)
    return None if held is None else parse_state(wire.decode(held[0]))


def take(
    store: Store, me: NodeId, sender: NodeId, offered: GroupState, now_ms: int
) -> list[GroupState]:
    """A member received `offered` from `sender`: keep it if it is valid,
    set it aside if its parent is not known yet, then retry what was set
    aside. Returns the states held in turn (empty if the held one did not
    change)."""
    group_id = offered.group_id
    known = {s.digest: s for s in map(parse_state, map(wire.decode, store.group_states(group_id)))}
    held_before = load(store, group_id)
    if offered.digest in known:
        return []
    if not known:
        # The first we learn of this group: on trust, from an admin it lists.
        if not (offered.is_member(me) and offered.is_admin(sender)):
            return []
        store.add_group_state(group_id, offered.digest, offered.version, offered.encoded())
        known[offered.digest] = offered
    else:
        parent = known.get(offered.parent or b"")
        if parent is None:
            store.keep_pending_group_state(group_id, sender, offered.encoded(), now_ms)
            return []
        if not is_valid_child(parent, offered, sender):
            return []
        store.add_group_state(group_id, offered.digest, offered.version, offered.encoded())
        known[offered.digest] = offered
    # Changes set aside may have the parent they need now.
    progress = True
    while progress:
        progress = False
        for by, data in store.take_pending_group_states(group_id):
            state = parse_state(wire.decode(data))
            parent = known.get(state.parent or b"")
            if state.digest in known:
                continue
            if parent is None:
                store.keep_pending_group_state(group_id, by, data, now_ms)
            elif is_valid_child(parent, state, by):
                store.add_group_state(group_id, state.digest, state.version, data)
                known[state.digest] = state
                progress = True
    best = max(known.values(), key=lambda s: s.rank())
    if best == held_before:
        return []
    store.save_group(group_id, best.version, best.encoded(), best.is_member(me), now_ms)
    return [best]


def keep_own(store: Store, me: NodeId, state: GroupState, now_ms: int) -> None:
    """A state this node made (it created the group, or changed it as admin)."""
    store.add_group_state(state.group_id, state.digest, state.version, state.encoded())
    store.save_group(state.group_id, state.version, state.encoded(), state.is_member(me), now_ms)
