"""The node's API handlers over a real Unix socket: bad input is a 400 with a reason."""

from __future__ import annotations

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
            for path in ("/v1/inbox", "/v1/outbox"):
                refused = await answer(client, "get", path, limit=limit)
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
