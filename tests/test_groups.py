"""Groups: the member-list rules, and five nodes over real TCP on 127.0.0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from p2pdm import envelope, groups
from p2pdm.envelope import EnvelopeError, MessageKind
from p2pdm.groups import GroupState, make_state
from p2pdm.identity import Identity
from p2pdm.node import IncomingPush
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


def held_after(
    tmp_path: Path, name: str, me: NodeId, offers: list[tuple[NodeId, GroupState]]
) -> GroupState | None:
    """The state a member holds after receiving `offers` in this order."""
    store = Store.open(tmp_path / f"{name}.db")
    for n, (sender, state) in enumerate(offers):
        groups.take(store, me, sender, state, n + 1)
    held = groups.load(store, GID)
    store.close()
    return held


def test_a_new_group_is_taken_from_an_admin_that_lists_us(tmp_path: Path) -> None:
    admin, me, other = ids(3)
    state = make_state(GID, 1, "friends", {admin, me}, {admin})
    assert held_after(tmp_path, "ok", me, [(admin, state)]) == state
    # Not from a member who is not an admin, and not a group without us.
    assert held_after(tmp_path, "not-admin", me, [(me, state)]) is None
    assert held_after(tmp_path, "not-listed", other, [(admin, state)]) is None


def test_only_a_change_by_an_admin_of_its_parent_counts(tmp_path: Path) -> None:
    admin, me, other = ids(3)
    v1 = make_state(GID, 1, "friends", {admin, me, other}, {admin})
    v2 = v1.changed(remove={other})
    assert held_after(tmp_path, "a", me, [(admin, v1), (admin, v2)]) == v2
    # An older state does not undo a newer one; a member cannot change it.
    assert held_after(tmp_path, "b", me, [(admin, v1), (admin, v2), (admin, v1)]) == v2
    by_other = v1.changed(name="renamed")
    assert held_after(tmp_path, "c", me, [(admin, v1), (other, by_other)]) == v1
    # No jumping versions: a child must be its parent's version plus one.
    jump = make_state(GID, 10**6, "mine now", {admin, me}, {admin}, parent=v1.digest)
    assert held_after(tmp_path, "d", me, [(admin, v1), (admin, jump)]) == v1


def test_concurrent_admin_changes_settle_the_same_way_in_any_order(tmp_path: Path) -> None:
    """A demotes B while B removes R, both from v1: whichever order the two
    changes reach a member, every member holds the same one."""
    a, b, x, y, r = ids(5)
    v1 = make_state(GID, 1, "g", {a, b, x, y, r}, {a, b})
    demote_b = make_state(GID, 2, "g", set(v1.members), {a}, parent=v1.digest)
    remove_r = v1.changed(remove={r})
    orders = {
        "x": (x, [(a, v1), (a, demote_b), (b, remove_r)]),
        "y": (y, [(a, v1), (b, remove_r), (a, demote_b)]),
    }
    held = {n: held_after(tmp_path, n, me, offers) for n, (me, offers) in orders.items()}
    assert held["x"] == held["y"] == max(demote_b, remove_r, key=lambda s: s.rank())
    # A change built on the loser does not count for less: the tree decides.
    later = remove_r.changed(name="after")
    offers = [(a, v1), (a, demote_b), (b, remove_r), (b, later)]
    assert held_after(tmp_path, "z", x, offers) == later


def test_bad_states_are_refused_with_a_reason() -> None:
    admin, me = ids(2)
    with pytest.raises(groups.GroupError, match="admins must all be members"):
        make_state(GID, 1, "x", {me}, {admin})
    with pytest.raises(groups.GroupError, match="name is empty"):
        make_state(GID, 1, "  ", {me}, {me})
    for name in ("\x1b[31mred", "two\nlines"):
        with pytest.raises(groups.GroupError, match="printable"):
            make_state(GID, 1, name, {me}, {me})
    with pytest.raises(groups.GroupError, match="names the parent"):
        make_state(GID, 2, "x", {me}, {me})
    many = set(ids(groups.MAX_MEMBERS + 1))
    with pytest.raises(groups.GroupError, match="1 to 64"):
        make_state(GID, 1, "big", many, {next(iter(many))})
    body = make_state(GID, 1, "x", {admin, me}, {admin}).body()
    body["members"] = list(reversed(body["members"]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sorted"):
        envelope.seal(
            Identity.generate(), me, MessageKind.GROUP, body, timestamp_ms=1, expires_ms=2
        )


def test_a_change_that_arrives_before_its_parent_is_taken_after_it(tmp_path: Path) -> None:
    admin, me, helper, other = ids(4)
    v1 = make_state(GID, 1, "g", {admin, me, helper, other}, {admin})
    v2 = v1.changed(admins={helper})
    v3 = v2.changed(remove={other})  # by helper, an admin of v2
    assert held_after(tmp_path, "s", me, [(admin, v1), (helper, v3), (admin, v2)]) == v3


def test_one_member_cannot_push_out_others_waiting_changes(tmp_path: Path) -> None:
    admin, me, pest = ids(3)
    store = Store.open(tmp_path / "p.db")
    v1 = make_state(GID, 1, "g", {admin, me, pest}, {admin, pest})
    groups.take(store, me, admin, v1, 1)
    v2 = v1.changed(name="two")
    v3 = v2.changed(name="three")
    groups.take(store, me, admin, v3, 2)  # waits for v2
    for n in range(100):  # changes of unknown parents, all from one member
        junk = make_state(GID, 5, f"junk {n}", {pest, me}, {pest}, parent=bytes(16))
        groups.take(store, me, pest, junk, 3 + n)
    groups.take(store, me, admin, v2, 200)
    assert groups.load(store, GID) == v3
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


async def test_reactions_edits_and_unsend_in_a_group(tmp_path: Path) -> None:
    homes = {n: Home(tmp_path, n) for n in "abc"}
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a = homes["a"].node(relay=True)
            await nursery.start(run_until_cancelled, a)
            nodes = {"a": a}
            events = {"a": a.events.subscribe()}
            for n in "bc":
                nodes[n] = homes[n].node(a.bound[0], relay=False)
                events[n] = nodes[n].events.subscribe()
                await nursery.start(run_until_cancelled, nodes[n])
            state = await a.create_group("team", [homes[n].id for n in "bc"])
            for n in "bc":
                await until(events[n], ("group", {"id": state.group_id.hex()}))
            [gm], _ = await a.send_group_texts(state.group_id, ["lunch at 12"])
            for n in "bc":
                await until(events[n], ("message", {"gm": gm.hex()}))

            # b reacts: a (the author) and c (another member) both see it.
            await nodes["b"].react(gm, "👍")
            for n in "ac":
                await until(events[n], ("reaction", {"id": gm.hex(), "by": str(homes["b"].id)}))
                assert nodes[n].store.reactions([gm]) == {gm: [(homes["b"].id, "👍")]}
            # Only the author edits or unsends, on every member's node.
            with pytest.raises(ValueError, match="only your own"):
                await nodes["c"].change_own_text(gm, "lunch at 1")
            await a.change_own_text(gm, "lunch at 12:30")
            for n in "bc":
                await until(events[n], ("edited", {"id": gm.hex(), "text": "lunch at 12:30"}))
                [row] = nodes[n].store.group_messages(state.group_id)
                assert (row["body"]["t"], row["edited"]) == ("lunch at 12:30", True)
            await a.change_own_text(gm, None)
            for n in "bc":
                await until(events[n], ("deleted", {"id": gm.hex()}))
                [row] = nodes[n].store.group_messages(state.group_id)
                assert row["deleted"]
                assert nodes[n].store.reactions([gm]) == {}
            [mine] = a.store.group_messages(state.group_id)
            assert mine["deleted"]
            nursery.cancel_scope.cancel()


async def test_a_member_reusing_a_shared_id_cannot_block_anothers_edit(
    tmp_path: Path,
) -> None:
    """M sends B a group message under A's shared id before A's arrives:
    A's edit still changes A's message, and M's stays M's."""
    homes = {n: Home(tmp_path, n) for n in "abm"}
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a = homes["a"].node()
            await nursery.start(run_until_cancelled, a)
            state = await a.create_group("g", [homes["b"].id, homes["m"].id])
            [gm], _ = await a.send_group_texts(state.group_id, ["the plan"])
            await a.change_own_text(gm, "the real plan")
            to_b = [r for r in a.store.outbox() if r.recipient == homes["b"].id]
            b = homes["b"].node()
            b_events = b.events.subscribe()
            await nursery.start(run_until_cancelled, b)
            now = b.now_ms()
            forged = envelope.seal(
                homes["m"].identity,
                homes["b"].id,
                MessageKind.GROUP_TEXT,
                {"g": state.group_id, "gm": gm, "t": "not the plan"},
                timestamp_ms=now,
                expires_ms=now + 60_000,
            )
            pushes = [(homes["a"].id, to_b[0].envelope), (homes["m"].id, forged)]
            pushes += [(homes["a"].id, r.envelope) for r in to_b[1:]]  # A's text, then edit
            for seq, (sender, data) in enumerate(pushes):
                op = IncomingPush(sender, seq, data)
                await b.committer.submit(op)
                await op.done.wait()
            await until(b_events, ("edited", {"id": gm.hex(), "by": str(homes["a"].id)}))
            texts = {str(m["from"]): m["body"]["t"] for m in b.store.group_messages(state.group_id)}
            assert texts == {
                str(homes["a"].id): "the real plan",
                str(homes["m"].id): "not the plan",
            }
            nursery.cancel_scope.cancel()
