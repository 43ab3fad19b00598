"""The node's API handlers over a real Unix socket: bad input is a 400 with a reason."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest
import trio

from p2pdm import api as api_module
from p2pdm.api import Api
from p2pdm.apiclient import ApiClient, ApiRequestError
from p2pdm.httpapi import serve_unix
from tests.nodes import make_node, next_event

if TYPE_CHECKING:
    from pathlib import Path

DEADLINE = 30


async def answer(client: ApiClient, method: str, *args: Any, **query: Any) -> ApiRequestError:
    """The error the node answers with (the call must fail)."""

    def call() -> None:
        if method == "get":
            client.get(*args, **query)
        else:
            client.post(*args)

    with pytest.raises(ApiRequestError) as refused:
        await trio.to_thread.run_sync(call)
    return refused.value


@pytest.mark.parametrize("limit", ["\u00b2", "1" * 5000, "-1", "1.5", "", "abc", "0x10"])
async def test_bad_limits_are_a_400_not_a_crash(tmp_path: Path, limit: str) -> None:
    node = make_node(tmp_path, "n")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(serve_unix, tmp_path / "api.sock", Api(node).router())
            client = ApiClient(tmp_path / "api.sock", timeout=DEADLINE)
            for path, query in [
                ("/v1/inbox", {}),
                ("/v1/outbox", {}),
                ("/v1/outbox", {"ids": "00" * 32}),
            ]:
                refused = await answer(client, "get", path, limit=limit, **query)
                assert refused.status == 400
                assert "limit must be an integer" in str(refused)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("ttl", [1e308, 10**400, float("inf"), float("nan"), 0, -5, 10**9, "1"])
async def test_bad_message_lifetimes_are_a_400(tmp_path: Path, ttl: object) -> None:
    node = make_node(tmp_path, "n")
    other = make_node(tmp_path, "o")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(serve_unix, tmp_path / "api.sock", Api(node).router())
            client = ApiClient(tmp_path / "api.sock", timeout=DEADLINE)
            body = {"to": str(other.identity.node_id), "text": "hi", "ttl_s": ttl}
            refused = await answer(client, "post", "/v1/messages", body)
            assert refused.status == 400
            # Infinity and NaN are not JSON: refused before ttl_s is read.
            assert "ttl_s" in str(refused) or "is not JSON" in str(refused)
            assert node.store.outbox() == []  # nothing stored
            nursery.cancel_scope.cancel()


async def test_a_message_that_expires_before_it_is_stored_is_a_400(tmp_path: Path) -> None:
    node = make_node(tmp_path, "n")
    other = make_node(tmp_path, "o")
    reads = itertools.count()
    node.now_ms = lambda: 1_800_000_000_000 + 1000 * next(reads)  # each read a second later
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(serve_unix, tmp_path / "api.sock", Api(node).router())
            client = ApiClient(tmp_path / "api.sock", timeout=DEADLINE)
            body = {"to": str(other.identity.node_id), "text": "hi", "ttl_s": 0.001}
            refused = await answer(client, "post", "/v1/messages", body)
            # The caller's lifetime, not the disk: not a 507 "try again".
            assert refused.status == 400
            assert "expired before it could be stored" in str(refused)
            assert node.store.outbox() == []
            nursery.cancel_scope.cancel()
    other.store.close()


@pytest.mark.parametrize("seconds", [1e308, 9.4e307, 10**400, 2419201])
async def test_bad_disappearing_timers_are_a_400(tmp_path: Path, seconds: float) -> None:
    node = make_node(tmp_path, "n")
    other = make_node(tmp_path, "o")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(serve_unix, tmp_path / "api.sock", Api(node).router())
            client = ApiClient(tmp_path / "api.sock", timeout=DEADLINE)
            path = f"/v1/conversations/{other.identity.node_id}/timer"
            refused = await answer(client, "post", path, {"seconds": seconds})
            assert refused.status == 400
            assert "the timer is off (0) or 5 s to 28 days" in str(refused)
            assert node.store.timer(other.identity.node_id) == 0  # nothing changed
            nursery.cancel_scope.cancel()
    other.store.close()


async def test_lists_without_a_limit_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_module, "DEFAULT_LIST", 5)  # the real default is 10,000
    a = make_node(tmp_path, "a")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            b = make_node(tmp_path, "b", bootstrap=(a.bound[0],))
            await nursery.start(b.run)
            b_events = b.events.subscribe()
            ids = await b.send_texts(a.identity.node_id, [f"m{i}" for i in range(8)])
            delivered = set()
            while len(delivered) < len(ids):
                delivered.add((await next_event(b_events, "delivered"))["id"])
            await nursery.start(serve_unix, tmp_path / "a.sock", Api(a).router())
            await nursery.start(serve_unix, tmp_path / "b.sock", Api(b).router())
            inbox = await trio.to_thread.run_sync(
                ApiClient(tmp_path / "a.sock", timeout=DEADLINE).get, "/v1/inbox"
            )
            assert [m["text"] for m in inbox["messages"]] == [f"m{i}" for i in range(3, 8)]
            outbox = await trio.to_thread.run_sync(
                ApiClient(tmp_path / "b.sock", timeout=DEADLINE).get, "/v1/outbox"
            )
            assert [m["text"] for m in outbox["messages"]] == [f"m{i}" for i in range(3, 8)]
            nursery.cancel_scope.cancel()


async def test_chat_routes_refuse_bad_input_with_a_reason_and_change_nothing(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, "n")
    other = make_node(tmp_path, "o")
    peer = str(other.identity.node_id)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(serve_unix, tmp_path / "api.sock", Api(node).router())
            client = ApiClient(tmp_path / "api.sock", timeout=DEADLINE)
            cases: list[tuple[str, tuple[Any, ...], dict[str, Any], int, str]] = [
                ("get", ("/v1/search",), {"q": "!!"}, 400, "at least one word"),
                ("get", ("/v1/search",), {}, 400, "at least one word"),
                ("get", (f"/v1/conversations/{peer}",), {"before": "x"}, 400, "cursor"),
                ("get", (f"/v1/conversations/{peer}",), {"limit": "501"}, 400, "limit"),
                ("post", ("/v1/read", {"ids": ["zz"]}), {}, 400, "hex message ids"),
                ("post", ("/v1/read", {"ids": []}), {}, 400, "hex message ids"),
                ("post", ("/v1/read", {"ids": ["00" * 32], "peer": peer}), {}, 400, "or"),
                ("post", ("/v1/typing", {"to": peer}), {}, 400, "active"),
                ("post", ("/v1/settings", {"accept": "friends"}), {}, 400, "one of"),
                ("post", ("/v1/settings", {"read_receipts": 1}), {}, 400, "true or false"),
                ("post", ("/v1/settings", {"colour": "red"}), {}, 400, "unknown setting"),
                ("post", ("/v1/settings", []), {}, 400, "JSON object"),
            ]
            for method, args, query, status, reason in cases:
                refused = await answer(client, method, *args, **query)
                assert (refused.status, reason in str(refused)) == (status, True), args
            assert node.settings.to_json() == {"read_receipts": True, "accept": "requests"}

            await node.store_call(node.store.set_blocked, other.identity.node_id, True, 1)
            refused = await answer(client, "post", f"/v1/requests/{peer}/accept", {})
            assert refused.status == 409
            assert "unblock it first" in str(refused)

            typing = await trio.to_thread.run_sync(
                client.post, "/v1/typing", {"to": peer, "active": True}
            )
            assert typing == {
                "sent": False,
                "reason": "not an accepted contact (blocked, or a request not accepted)",
            }
            number = await trio.to_thread.run_sync(client.get, f"/v1/safety-number/{peer}")
            assert len(number["safety_number"].split()) == 12
            nursery.cancel_scope.cancel()
    other.store.close()
