"""Groups: the member-list rules, and five nodes over real TCP on 127.0.0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from p2pdm import envelope, groups
from p2pdm.envelope import EnvelopeError, MessageKind
from p2pdm.groups import Verdict, make_state, next_state
from p2pdm.identity import Identity
from p2pdm.store import Store
from tests.nodes import next_event
from tests.test_relay import Home, run_until_cancelled, until

if TYPE_CHECKING:
    from pathlib import Path

    from p2pdm.identity import NodeId
    from p2pdm.node import Node

DEADLINE = 60
GID = bytes(range(16))


def ids(n: int) -> list[NodeId]:
    return sorted((Identity.generate().node_id for _ in range(n)), key=lambda k: k.public_key)


def test_a_new_group_is_taken_from_an_admin_that_lists_us() -> None:
    admin, me, other = ids(3)
    state = make_state(GID, 1, "friends", {admin, me}, {admin})
    assert next_state(None, state, admin, me) is Verdict.TAKE
    # Not from a member who is not an admin, and not a group without us.
    assert next_state(None, state, me, other) is Verdict.REFUSE
    forged = make_state(GID, 1, "friends", {admin, me, other}, {admin})
    assert next_state(None, forged, other, me) is Verdict.REFUSE


def test_only_a_newer_state_from_a_current_admin_replaces_ours() -> None:
    admin, me, other = ids(3)
    v1 = make_state(GID, 1, "friends", {admin, me, other}, {admin})
    v2 = make_state(GID, 2, "friends", {admin, me}, {admin})
    assert next_state(v1, v2, admin, me) is Verdict.TAKE
    assert next_state(v2, v1, admin, me) is Verdict.STALE
    assert next_state(v2, v2, admin, me) is Verdict.STALE
    # A member that is not an admin may become one in a change not seen yet.
    by_other = make_state(GID, 2, "renamed", {admin, me, other}, {admin})
    assert next_state(v1, by_other, other, me) is Verdict.LATER
    # Two admins' changes to the same version: the same one wins everywhere.
    a = make_state(GID, 2, "a", {admin, me, other}, {admin})
    b = make_state(GID, 2, "b", {admin, me, other}, {admin})
    winner = max(a, b, key=lambda s: s.rank())
    loser = a if winner is b else b
    assert next_state(loser, winner, admin, me) is Verdict.TAKE
    assert next_state(winner, loser, admin, me) is Verdict.STALE


def test_bad_states_are_refused_with_a_reason() -> None:
    admin, me = ids(2)
    with pytest.raises(groups.GroupError, match="admins must all be members"):
        make_state(GID, 1, "x", {me}, {admin})
    with pytest.raises(groups.GroupError, match="name is empty"):
        make_state(GID, 1, "  ", {me}, {me})
    many = set(ids(groups.MAX_MEMBERS + 1))
    with pytest.raises(groups.GroupError, match="1 to 64"):
        make_state(GID, 1, "big", many, {next(iter(many))})
    body = make_state(GID, 1, "x", {admin, me}, {admin}).body()
    body["members"] = list(reversed(body["members"]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sorted"):
        envelope.seal(
            Identity.generate(), me, MessageKind.GROUP, body, timestamp_ms=1, expires_ms=2
        )


def test_a_change_that_arrives_before_the_one_it_needs_is_taken_after_it(
    tmp_path: Path,
) -> None:
    admin, me, helper, other = ids(4)
    store = Store.open(tmp_path / "s.db")
    v1 = make_state(GID, 1, "g", {admin, me, helper, other}, {admin})
    v2 = make_state(GID, 2, "g", {admin, me, helper, other}, {admin, helper})
    v3 = make_state(GID, 3, "g", {admin, me, helper}, {admin, helper})  # helper removes other
    assert groups.take(store, me, admin, v1, 1) == [v1]
    assert groups.take(store, me, helper, v3, 2) == []  # helper is not an admin yet
    assert groups.load(store, GID) == v1
    assert groups.take(store, me, admin, v2, 3) == [v2, v3]
    assert groups.load(store, GID) == v3
    assert store.take_pending_group_states(GID) == []
    store.close()


def group_copy_to(node: Node, member: NodeId, gm: bytes) -> bytes:
    """The envelope `node` sealed to `member` for the group message `gm`."""
    for row in node.store.outbox():
        if row.recipient == member and isinstance(row.body, dict) and row.body.get("gm") == gm:
            return row.envelope
    raise AssertionError("no copy for that member")


async def test_a_group_message_reaches_all_five_and_a_removed_member_gets_nothing_after(
    tmp_path: Path,
) -> None:
    homes = {n: Home(tmp_path, n) for n in ("r", "a", "b", "c", "d", "e")}
    r_home, a_home = homes["r"], homes["a"]
    members = [homes[n].id for n in "bcde"]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r = r_home.node()
            await nursery.start(run_until_cancelled, r)
            nodes: dict[str, Node] = {}
            events = {}
            for n in "abc":  # d and e are away
                nodes[n] = homes[n].node(r.bound[0], relay=False)
                events[n] = nodes[n].events.subscribe()
                await nursery.start(run_until_cancelled, nodes[n])
            a = nodes["a"]
            state = await a.create_group("friends", members)
            assert state.admins == (a_home.id,)
            [gm], copies = await a.send_group_texts(state.group_id, ["hello, group"])
            assert set(copies) == set(members)
            for n in "bc":
                message = await next_event(events[n], "message")
                assert (message["text"], message["group"]) == ("hello, group", state.group_id.hex())

            # d and e come online later and get the group and the message
            # from the relay.
            for n in "de":
                nodes[n] = homes[n].node(r.bound[0], relay=False)
                events[n] = nodes[n].events.subscribe()
                await nursery.start(run_until_cancelled, nodes[n])
                group = await next_event(events[n], "group")
                assert group["members"] == [str(m) for m in state.members]
                message = await next_event(events[n], "message")
                assert (message["text"], message["gm"]) == ("hello, group", gm.hex())
            wanted = [("delivered", {"id": mids[0].hex()}) for mids in copies.values()]
            await until(events["a"], *wanted)

            # e is removed: it is told, and nothing sent after reaches it.
            e = homes["e"].id
            after = await a.change_group(state.group_id, remove=[e])
            assert not after.is_member(e)
            told = await next_event(events["e"], "group")
            assert (told["version"], told["member"]) == (2, False)
            [gm2], copies2 = await a.send_group_texts(state.group_id, ["after e left"])
            assert set(copies2) == {homes[n].id for n in "bcd"}
            for n in "bcd":
                message = await next_event(events[n], "message")
                assert message["text"] == "after e left"
            # Even with a copy in hand, e cannot open what was sealed to d.
            with pytest.raises(EnvelopeError):
                envelope.open_envelope(homes["e"].identity, group_copy_to(a, homes["d"].id, gm2))
            with pytest.raises(ValueError, match="no longer a member"):
                await nodes["e"].send_group_texts(state.group_id, ["still here?"])
            texts = [envelope_text(m.body) for m in nodes["e"].store.inbox()]
            assert "after e left" not in texts
            assert "hello, group" in texts
            nursery.cancel_scope.cancel()


def envelope_text(body: object) -> str | None:
    return body.get("t") if isinstance(body, dict) else None  # type: ignore[return-value]
