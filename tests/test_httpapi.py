"""The local API server (`httpapi`) with its real client (`apiclient`) and raw sockets.

Every server runs in the test's own trio run on a socket under tmp_path; the
blocking client runs in a worker thread. Everything waits on something the
server does (an answer, a close, an event); nothing sleeps, and every test
has a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import socket
import stat
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from p2pdm.apiclient import (
    ApiClient,
    ApiRequestError,
    ApiUnavailable,
    EventStream,
    EventStreamEnded,
)
from p2pdm.httpapi import (
    ApiError,
    ApiLimits,
    Request,
    Response,
    Router,
    ServeError,
    StreamResponse,
    json_response,
    serve_tcp,
    serve_unix,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

DEADLINE = 10.0
# A small body limit, so the 413 tests send little; the timeouts stay long, so a
# slow machine cannot make a test's client look stalled.
LIMITS = ApiLimits(max_body_bytes=64 * 1024, request_timeout=DEADLINE, linger=DEADLINE)


class App:
    """A small router's handlers, plus what the tests drive them with."""

    def __init__(self, keepalive: float = 30.0) -> None:
        self.events_in, self.events_out = trio.open_memory_channel[tuple[str, Any]](16)
        self.stream_closed = trio.Event()
        self.released = trio.Event()
        self.keepalive = keepalive

    def router(self) -> Router:
        r = Router()
        r.route("POST", "/echo")(self.echo)
        r.route("GET", "/items/{item}")(self.item)
        r.route("DELETE", "/items/{item}")(self.item)
        r.route("GET", "/items/{item}/parts/{part}")(self.item)
        r.route("GET", "/items/special")(self.special)
        r.route("GET", "/refuse")(self.refuse)
        r.route("GET", "/boom")(self.boom)
        r.route("GET", "/unencodable")(self.unencodable)
        r.route("GET", "/events")(self.events)
        r.route("GET", "/broken-events")(self.broken_events)
        r.route("GET", "/subscribed-events")(self.subscribed_events)
        return r

    async def echo(self, request: Request) -> Response:
        return json_response({"got": request.json(), "type": request.headers["content-type"]}, 201)

    async def item(self, request: Request) -> Response:
        return json_response(
            {
                "method": request.method,
                "path": request.path,
                "params": dict(request.params),
                "query": dict(request.query),
            }
        )

    async def special(self, request: Request) -> Response:
        return json_response({"special": True})

    async def refuse(self, request: Request) -> Response:
        raise ApiError(409, "no can do", "try again later")

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("kaboom")

    async def unencodable(self, request: Request) -> Response:
        raise ApiError(400, "no \ud800 in UTF-8")

    async def events(self, request: Request) -> Response:
        async def generate() -> AsyncIterator[tuple[str, Any]]:
            try:
                async for item in self.events_out:
                    yield item
            finally:
                self.stream_closed.set()

        return StreamResponse(generate(), keepalive=self.keepalive)

    async def subscribed_events(self, request: Request) -> Response:
        async def generate() -> AsyncIterator[tuple[str, Any]]:
            async for item in self.events_out:
                yield item

        return StreamResponse(generate(), keepalive=self.keepalive, on_close=self.released.set)

    async def broken_events(self, request: Request) -> Response:
        async def generate() -> AsyncIterator[tuple[str, Any]]:
            yield "one", 1
            raise RuntimeError("generator broke")

        return StreamResponse(generate(), keepalive=self.keepalive)


@asynccontextmanager
async def serving(
    path: Path, router: Router, limits: ApiLimits = LIMITS
) -> AsyncIterator[ApiClient]:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_unix, path, router, limits=limits))
        yield ApiClient(path, timeout=DEADLINE)
        nursery.cancel_scope.cancel()


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


def http_request(method: str, target: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Reads HTTP answers from a raw stream, with what is left over kept."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _more(self) -> None:
        data = await self.stream.receive_some()
        if not data:
            raise EOFError(f"closed; got {bytes(self.buf)!r}")
        self.buf += data

    async def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            await self._more()
        end = self.buf.index(marker) + len(marker)
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    async def response(self) -> tuple[int, dict[str, str], Any]:
        """One answer with a Content-Length body, its body decoded as JSON."""
        status, headers, body = await self.raw_response()
        return status, headers, json.loads(body) if body else None

    async def raw_response(self) -> tuple[int, dict[str, str], bytes]:
        head = (await self.until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        headers = {}
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            await self._more()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return status, headers, body

    async def eof(self) -> bytes:
        """Everything until the server closes."""
        while True:
            data = await self.stream.receive_some()
            if not data:
                out = bytes(self.buf)
                self.buf.clear()
                return out
            self.buf += data


async def raw(path: Path) -> tuple[trio.SocketStream, Reader]:
    stream = await trio.open_unix_socket(os.fspath(path))
    return stream, Reader(stream)


# --- the socket file ------------------------------------------------------------


async def test_socket_is_0600_and_removed_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()):
            mode = path.lstat().st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o600
        assert not path.exists()


async def test_second_server_on_same_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    router = App().router()
    with trio.fail_after(DEADLINE):
        async with serving(path, router) as client:
            with pytest.raises(ServeError, match="another node is running for this home"):
                await serve_unix(path, router)
            # The refused one left the running server's socket alone.
            assert await in_thread(client.get, "/items/x") is not None


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(path))  # a crashed node's leftover: bound, nobody listening
    assert path.exists()
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()) as client:
            answer = await in_thread(client.get, "/items/x")
            assert answer["params"] == {"item": "x"}
            assert stat.S_IMODE(path.lstat().st_mode) == 0o600


async def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    path.write_text("not mine to delete")
    with trio.fail_after(DEADLINE), pytest.raises(ServeError, match="not a socket"):
        await serve_unix(path, App().router())
    assert path.read_text() == "not mine to delete"


async def test_client_without_node_is_told_to_start_one(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    client = ApiClient(path, timeout=DEADLINE)
    with trio.fail_after(DEADLINE):
        with pytest.raises(ApiUnavailable, match="no node is running for home") as missing:
            await in_thread(client.get, "/v1/status")
        assert str(tmp_path) in str(missing.value)
        assert "p2pdm run" in str(missing.value)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(os.fspath(path))
        with pytest.raises(ApiUnavailable, match="no node is running for home"):
            await in_thread(client.events, "/v1/events")


# --- requests and answers ------------------------------------------------------------


async def test_json_round_trip(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with serving(tmp_path / "api.sock", App().router()) as client:
            body = {"text": "héllo ✓ 👋", "n": [1, 2.5, None, True]}
            answer = await in_thread(client.post, "/echo", body)
            assert answer == {"got": body, "type": "application/json"}


async def test_json_is_compact_utf8_with_content_length(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(
                    http_request("POST", "/echo", '{"t": "é"}'.encode(), "Content-Type: x/y")
                )
                status, headers, body = await reader.raw_response()
            assert status == 201
            assert headers["content-type"] == "application/json"
            assert body == '{"got":{"t":"é"},"type":"x/y"}'.encode()


async def test_path_params_query_and_specificity(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with serving(tmp_path / "api.sock", App().router()) as client:
            answer = await in_thread(client.get, "/items/bob smith é", limit=5, q="a&b", none=None)
            assert answer == {
                "method": "GET",
                "path": "/items/bob smith é",
                "params": {"item": "bob smith é"},
                "query": {"limit": "5", "q": "a&b"},
            }
            answer = await in_thread(client.get, "/items/a/parts/b")
            assert answer["params"] == {"item": "a", "part": "b"}
            answer = await in_thread(client.delete, "/items/gone")
            assert answer["method"] == "DELETE"
            # A literal segment beats a parameter, whatever the order of registration.
            assert await in_thread(client.get, "/items/special") == {"special": True}


async def test_api_error_becomes_its_status_with_error_and_hint(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()) as client:
            with pytest.raises(ApiRequestError) as refused:
                await in_thread(client.get, "/refuse")
            assert (refused.value.status, refused.value.message, refused.value.hint) == (
                409,
                "no can do",
                "try again later",
            )
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(http_request("GET", "/refuse"))
                status, headers, body = await reader.response()
            assert status == 409
            assert headers["content-type"] == "application/json"
            assert body == {"error": "no can do", "hint": "try again later"}


async def test_unknown_path_is_404_and_wrong_method_is_405(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(http_request("GET", "/nowhere"))
                status, _, body = await reader.response()
                assert status == 404
                assert body == {"error": "no such path: /nowhere", "hint": None}

                await stream.send_all(http_request("PUT", "/items/x"))
                status, headers, body = await reader.response()
                assert status == 405
                assert headers["allow"] == "DELETE, GET"
                assert body["allow"] == ["DELETE", "GET"]
                assert body["error"] == "PUT is not allowed on /items/x"

                await stream.send_all(http_request("GET", "/items/%ff"))
                status, _, body = await reader.response()
                assert status == 400
                assert "UTF-8" in body["error"]


async def test_bad_json_body_is_400(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()):
            stream, reader = await raw(path)
            async with stream:
                lone_surrogates = (b'"\\ud800"', b'{"a\\udfff": 1}', b'["\\ud83d", "\\ude00"]')
                for bad in (b"{nope", b"", b"[NaN]", b"[" * 50_000, b'"\xff"', *lone_surrogates):
                    await stream.send_all(http_request("POST", "/echo", bad))
                    status, _, body = await reader.response()
                    assert status == 400, bad[:10]
                    assert "JSON" in body["error"]
                # A whole pair is one character.
                pair = b'"\\ud83d\\ude00"'
                await stream.send_all(http_request("POST", "/echo", pair, "Content-Type: a/b"))
                status, _, body = await reader.response()
                assert (status, body["got"]) == (201, "\U0001f600")


async def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()) as client:
            # Far beyond the socket buffers: the server answers before reading it all.
            huge = {"text": "x" * (4 * 1024 * 1024)}
            with pytest.raises(ApiRequestError) as refused:
                await in_thread(client.post, "/echo", huge)
            assert refused.value.status == 413

            # Declared too big: refused without reading, then closed.
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
                )
                status, _, body = await reader.response()
                assert status == 413
                assert "request body over" in body["error"]
                assert await reader.eof() == b""

            # Chunked, so only counting tells.
            stream, reader = await raw(path)
            async with stream:
                chunk = b"%x\r\n%s\r\n" % (40_000, b"y" * 40_000)
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + chunk * 2
                )
                status, _, _ = await reader.response()
                assert status == 413
                assert await reader.eof() == b""


async def test_malformed_http_is_400_then_close(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()) as client:
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
                status, headers, body = await reader.response()
                assert status == 400
                assert headers["connection"] == "close"
                assert body["error"].startswith("malformed HTTP request")
                assert await reader.eof() == b""
            # Headers past max_header_bytes: h11's hint, 431, then close.
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000)
                status, _, _ = await reader.response()
                assert status == 431
                assert await reader.eof() == b""
            assert (await in_thread(client.get, "/items/ok"))["params"] == {"item": "ok"}


async def test_a_refusal_after_a_head_request_still_carries_its_body(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A HEAD answer has no body. The next request on the connection, if
    # malformed, used to be refused without one too, though its header says
    # how long it is: h11 refused to end that answer, so the client got no
    # answer at all and the server logged a traceback. (Found by fuzzing.)
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE), caplog.at_level(logging.ERROR, logger="p2pdm.httpapi"):
        async with serving(path, App().router()):
            for second in (b"THIS IS NOT HTTP\r\n\r\n", b"GET /items/x HTTP/1.1\r\nHost"):
                stream, reader = await raw(path)
                async with stream:
                    await stream.send_all(http_request("HEAD", "/items/1") + second)
                    await stream.send_eof()
                    head = await reader.until(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 405 ")  # HEAD is routed nowhere
                    status, headers, body = await reader.response()
                    assert status == 400
                    assert headers["connection"] == "close"
                    assert body["error"].startswith("malformed HTTP request")
                    assert await reader.eof() == b""
    assert not caplog.records


async def test_handler_crash_is_500_and_the_server_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(DEADLINE), caplog.at_level(logging.ERROR, logger="p2pdm.httpapi"):
        async with serving(tmp_path / "api.sock", App().router()) as client:
            with pytest.raises(ApiRequestError) as crashed:
                await in_thread(client.get, "/boom")
            assert crashed.value.status == 500
            assert crashed.value.message == "internal error: RuntimeError"
            assert "kaboom" not in str(crashed.value)  # details stay in the log
            assert (await in_thread(client.get, "/items/after"))["params"] == {"item": "after"}
    (record,) = [r for r in caplog.records if r.exc_info]
    assert "GET /boom" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def test_an_error_that_cannot_be_encoded_is_still_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE), caplog.at_level(logging.ERROR, logger="p2pdm.httpapi"):
        async with serving(path, App().router()):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(http_request("GET", "/unencodable"))
                status, _, body = await reader.response()
                assert (status, body["error"]) == (500, "internal error: UnicodeEncodeError")
                # The connection goes on.
                await stream.send_all(http_request("GET", "/items/after"))
                status, _, body = await reader.response()
                assert (status, body["params"]) == (200, {"item": "after"})
    assert any("GET /unencodable" in r.getMessage() for r in caplog.records)


async def test_keep_alive_serves_several_requests_on_one_connection(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(http_request("POST", "/echo", b"[1]", "Content-Type: a/b"))
                assert (await reader.response())[2] == {"got": [1], "type": "a/b"}
                await stream.send_all(http_request("GET", "/items/two"))
                assert (await reader.response())[2]["params"] == {"item": "two"}
                # Two pipelined in one write, the last asking to close.
                await stream.send_all(
                    http_request("GET", "/items/3")
                    + http_request("GET", "/items/4", b"", "Connection: close")
                )
                assert (await reader.response())[2]["params"] == {"item": "3"}
                _, headers, body = await reader.response()
                assert body["params"] == {"item": "4"}
                assert headers["connection"] == "close"
                assert await reader.eof() == b""


async def test_keep_alive_off_closes_after_each_answer(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router(), ApiLimits(keep_alive=False)):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(http_request("GET", "/items/1") * 2)
                _, headers, body = await reader.response()
                assert (headers["connection"], body["params"]) == ("close", {"item": "1"})
                assert await reader.eof() == b""


async def test_request_fed_one_byte_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()):
            stream, reader = await raw(path)
            async with stream:
                data = http_request("POST", "/echo", b'{"a": 1}', "Content-Type: c/d")
                for i in range(len(data)):
                    await stream.send_all(data[i : i + 1])
                assert (await reader.response())[:3:2] == (201, {"got": {"a": 1}, "type": "c/d"})


async def test_expect_100_continue(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router()):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: e/f\r\n"
                    b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
                )
                assert (await reader.until(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 ")
                await stream.send_all(b"{}")
                assert (await reader.response())[2] == {"got": {}, "type": "e/f"}


async def test_client_stalled_mid_request_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    limits = ApiLimits(request_timeout=0.2)
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router(), limits) as client:
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(b"GET /items/x HTTP/1.1\r\nHost: x\r\n")  # no blank line
                assert await reader.eof() == b""  # closed by the server, unanswered
            stream, reader = await raw(path)
            async with stream:
                # Headers complete, 1 of 10 body bytes.
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"
                )
                assert await reader.eof() == b""
            assert (await in_thread(client.get, "/items/y"))["params"] == {"item": "y"}


async def test_connections_beyond_the_limit_wait_for_a_slot(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    limits = ApiLimits(max_connections=1, request_timeout=DEADLINE * 10)
    with trio.fail_after(DEADLINE):
        async with serving(path, App().router(), limits):
            first, first_reader = await raw(path)
            await first.send_all(http_request("GET", "/items/1"))
            assert (await first_reader.response())[0] == 200  # kept alive: holds the slot
            second, second_reader = await raw(path)
            async with second:
                await second.send_all(http_request("GET", "/items/2"))
                await trio.testing.wait_all_tasks_blocked()
                # Everything in this run is idle, and still no answer: it waits.
                readable, _, _ = select.select([second.socket.fileno()], [], [], 0)
                assert readable == []
                await first.aclose()
                status, _, body = await second_reader.response()
                assert (status, body["params"]) == (200, {"item": "2"})


# --- event streams ---------------------------------------------------------------


async def test_events_arrive_in_order_and_the_stream_ends(tmp_path: Path) -> None:
    app = App(keepalive=0.05)  # keepalive comments in between, skipped by the client
    with trio.fail_after(DEADLINE):
        async with serving(tmp_path / "api.sock", app.router()) as client:
            events: EventStream = await in_thread(client.events, "/events")
            with events:
                assert await in_thread(events.next, 0.01) is None  # nothing sent yet
                await app.events_in.send(("first", {"n": 1}))
                assert await in_thread(events.next, DEADLINE) == ("first", {"n": 1})
                sent = [("tick", {"n": i, "text": "é\nline"}) for i in range(5)]
                for item in sent:
                    await app.events_in.send(item)
                await app.events_in.aclose()  # the server side ends the stream
                assert await in_thread(list, events) == sent
                with pytest.raises(EventStreamEnded):
                    await in_thread(events.next, DEADLINE)
            await app.stream_closed.wait()


async def test_events_stream_sends_keepalive_comments(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    app = App(keepalive=0.05)
    with trio.fail_after(DEADLINE):
        async with serving(path, app.router()):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(http_request("GET", "/events"))
                head = await reader.until(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                assert b"text/event-stream" in head
                await reader.until(b": keepalive\n")
                await app.events_in.send(("x", [1]))
                await reader.until(b"event: x\ndata: [1]\n\n")


async def test_events_of_a_gone_client_are_closed(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    app = App(keepalive=0.05)
    with trio.fail_after(DEADLINE):
        async with serving(path, app.router()):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(http_request("GET", "/events"))
                await reader.until(b"\r\n\r\n")
            # The next keepalive write fails; the handler's generator is closed.
            await app.stream_closed.wait()


async def test_a_client_gone_before_the_headers_still_releases_the_stream(
    tmp_path: Path,
) -> None:
    # The handler subscribed to something; the client sent its request and
    # left at once, so sending the headers fails and the generator never
    # starts. on_close must run anyway, or the subscription leaks.
    path = tmp_path / "api.sock"
    app = App(keepalive=60)
    with trio.fail_after(DEADLINE):
        async with serving(path, app.router()):
            for _ in range(3):
                app.released = trio.Event()
                stream, _reader = await raw(path)
                async with stream:
                    await stream.send_all(http_request("GET", "/subscribed-events"))
                await app.released.wait()


async def test_a_client_that_closes_its_stream_is_noticed_at_once(tmp_path: Path) -> None:
    # Keepalives every minute: only reading the connection notices the close
    # in time (it frees the connection and the handler's subscription).
    path = tmp_path / "api.sock"
    app = App(keepalive=60)
    with trio.fail_after(10):
        async with serving(path, app.router()):
            stream, reader = await raw(path)
            async with stream:
                await stream.send_all(http_request("GET", "/events"))
                await reader.until(b"\r\n\r\n")
            await app.stream_closed.wait()


async def test_event_streams_have_a_cap_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    app = App(keepalive=60)
    limits = dataclasses.replace(LIMITS, max_event_streams=2)
    with trio.fail_after(DEADLINE):
        async with serving(path, app.router(), limits) as client:
            first: EventStream = await in_thread(client.events, "/events")
            second: EventStream = await in_thread(client.events, "/events")
            with pytest.raises(ApiRequestError, match="too many event streams") as refused:
                await in_thread(client.events, "/events")
            assert refused.value.status == 503
            # Plain requests still get through.
            assert (await in_thread(client.get, "/items/x"))["params"] == {"item": "x"}
            first.close()
            await app.stream_closed.wait()  # the node noticed, and freed its place
            third: EventStream = await in_thread(client.events, "/events")
            second.close()
            third.close()


async def test_a_failing_event_stream_is_cut_not_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(DEADLINE), caplog.at_level(logging.ERROR, logger="p2pdm.httpapi"):
        async with serving(tmp_path / "api.sock", App().router()) as client:
            events: EventStream = await in_thread(client.events, "/broken-events")
            with events:
                assert await in_thread(events.next, DEADLINE) == ("one", 1)
                with pytest.raises(ApiUnavailable, match="cut the event stream") as cut:
                    await in_thread(events.next, DEADLINE)
                assert not isinstance(cut.value, EventStreamEnded)
            assert (await in_thread(client.get, "/items/z"))["params"] == {"item": "z"}
    assert any(r.exc_info and "generator broke" in str(r.exc_info[1]) for r in caplog.records)


async def test_events_request_refused_with_json_error(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with serving(tmp_path / "api.sock", App().router()) as client:
            with pytest.raises(ApiRequestError) as refused:
                await in_thread(client.events, "/refuse")
            assert (refused.value.status, refused.value.hint) == (409, "try again later")
            with pytest.raises(ApiRequestError) as missing:
                await in_thread(client.events, "/nowhere")
            assert missing.value.status == 404


# --- TCP ----------------------------------------------------------------------------


async def test_tcp_needs_the_bearer_token(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_tcp, "127.0.0.1", 0, App().router(), "s3cret-token", limits=LIMITS)
            )
            for auth, want in [
                (None, 401),
                ("Bearer wrong", 401),
                ("Bearer s3cret-toke", 401),
                ("Basic s3cret-token", 401),
                ("Bearer s3cret-token", 200),
                ("bearer s3cret-token", 200),
            ]:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    extra = [f"Authorization: {auth}"] if auth else []
                    await stream.send_all(http_request("GET", "/items/t", b"", *extra))
                    status, headers, body = await Reader(stream).response()
                assert status == want, auth
                if want == 401:
                    assert headers["www-authenticate"] == "Bearer"
                    assert body["error"] == "missing or wrong API token"
                else:
                    assert body["params"] == {"item": "t"}
            nursery.cancel_scope.cancel()


async def test_tcp_serves_loopback_only_with_a_real_token() -> None:
    router = App().router()
    with trio.fail_after(DEADLINE):
        with pytest.raises(ValueError, match="loopback"):
            await serve_tcp("0.0.0.0", 0, router, "token")
        with pytest.raises(ValueError, match="loopback"):
            await serve_tcp("localhost", 0, router, "token")
        with pytest.raises(ValueError, match="token"):
            await serve_tcp("127.0.0.1", 0, router, "")


# --- routing ------------------------------------------------------------------------


def test_router_refuses_bad_patterns() -> None:
    # Pure and synchronous: no I/O to bound with a deadline.
    async def handler(request: Request) -> Response:
        return json_response(None)

    r = Router()
    r.route("GET", "/a/{x}")(handler)
    for pattern, why in [
        ("no/slash", "starts with '/'"),
        ("/a/{x}{y}", "whole segment"),
        ("/a/pre{x}", "whole segment"),
        ("/a/{x}/{x}", "twice"),
        ("/a/{y}", "already routed"),  # the same route as /a/{x}
    ]:
        with pytest.raises(ValueError, match=why):
            r.route("GET", pattern)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        ApiError(200, "fine")
