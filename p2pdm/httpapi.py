"""A small HTTP/1.1 + JSON server on trio over h11, with routing and server-sent events.

h11 does the protocol (sans-IO); this module is the trio wrapper around it,
the way h11's own trio example is: one task per connection reads a whole
request, hands it to a route's handler, and writes the answer. Handlers are
`async def handler(request: Request) -> Response` and answer with
`json_response(...)` or a `StreamResponse` of events; they refuse with
`ApiError`, which becomes `{"error": ..., "hint": ...}` with its status.

The server never lets one client hurt the others: every limit is in
`ApiLimits` with its reason, a client that misbehaves is answered (or just
dropped) and closed, and a handler that crashes gets a 500 and a logged
traceback while everyone else is served as before.

`serve_unix` is what the daemon serves the CLI on (a 0600 socket in the
node's home needs no token); `serve_tcp` serves 127.0.0.1 to a web UI with
a bearer token.
"""

from __future__ import annotations

import hmac
import http
import ipaddress
import json
import logging
import os
import re
import socket
import stat
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, unquote

import h11
import trio

from p2pdm.transport import ACCEPT_CAPACITY_ERRNOS, ACCEPT_RETRY_DELAY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
    from pathlib import Path

log = logging.getLogger(__name__)

# One read from a client; a request line plus headers fits, bodies take a few.
RECEIVE_SIZE = 64 * 1024
# Connections the kernel queues for us while all slots are taken.
LISTEN_BACKLOG = 128
# After EMFILE and the like, wait this long before accepting again (as trio's
# serve_listeners does): retrying at once would spin while nothing is freed.
# A handler's event generator gets this long to clean up once its client is gone.
STREAM_CLEANUP_TIMEOUT = 5.0
# Default seconds between keepalive comments on an event stream.
DEFAULT_KEEPALIVE = 15.0
# parse_qsl stops here: the header limit bounds it anyway, this says so plainly.
MAX_QUERY_FIELDS = 256
KEEPALIVE_COMMENT = b": keepalive\n"
JSON_CONTENT_TYPE = b"application/json"
SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"


@dataclass(frozen=True)
class ApiLimits:
    max_header_bytes: int = 16 * 1024
    """h11's max_incomplete_event_size (its default): far above any real request
    line and headers, so a client streaming header bytes cannot grow our buffer."""
    max_body_bytes: int = 1024 * 1024
    """Request bodies; a send of a few hundred texts fits, a runaway upload does not."""
    max_connections: int = 64
    """Connections served at once; beyond it new ones wait in the listen backlog."""
    max_event_streams: int = 32
    """Event streams open at once (each also holds a connection): the rest of
    the connections stay free for requests; past it a stream request gets 503."""
    request_timeout: float = 10.0
    """Seconds from waiting for a request to having all of it: a client that stalls
    mid-request, or idles on a kept-alive connection, is dropped and frees its slot."""
    write_timeout: float = 10.0
    """Seconds one write may take: a client that stops reading (a stuck event
    stream reader) is dropped instead of holding its slot and subscription."""
    linger: float = 2.0
    """After an error answer that ends a connection, seconds spent reading and
    dropping what the client still sends, so closing does not reset the connection
    before the client has read the answer."""
    keep_alive: bool = True
    """Serve several requests on one connection; off, every answer says close."""


DEFAULT_LIMITS = ApiLimits()


class ServeError(Exception):
    """The API cannot be served here; the message says why."""


class ApiError(Exception):
    """Raised by a handler: the client gets `{"error": message, "hint": hint}`."""

    def __init__(
        self,
        status: int,
        message: str,
        hint: str | None = None,
        *,
        headers: Sequence[tuple[str, str]] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"an ApiError status is 4xx or 5xx, not {status}")
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.headers = tuple(headers)
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "hint": self.hint, **self.extra}


def _no_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """Percent-decoded, without the query."""
    params: Mapping[str, str]
    """The `{name}` segments of the route's pattern, percent-decoded."""
    query: Mapping[str, str]
    """Query parameters; of a repeated name, the last one."""
    headers: Mapping[str, str]
    """Lower-case names; repeated headers joined with ", "."""
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON; `ApiError(400)` if it is missing or not JSON."""
        if not self.body:
            raise ApiError(400, "this request needs a JSON body")
        try:
            value = json.loads(self.body.decode("utf-8"), parse_constant=_no_json_constant)
        except ValueError as exc:  # includes UnicodeDecodeError and JSONDecodeError
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, "body is not valid JSON: nested too deeply") from None
        # "\ud800" is JSON syntax for half a UTF-16 pair: a string no UTF-8 can
        # hold, so it could be neither stored, nor sent, nor quoted in an error.
        if b"\\u" in self.body:
            try:
                encode_json(value)
            except UnicodeEncodeError:
                raise ApiError(
                    400, "body is not valid JSON: a \\u escape makes a lone surrogate"
                ) from None
        return value


@dataclass(frozen=True)
class JsonResponse:
    status: int
    body: Any
    """Anything `json.dumps` takes; encoded when sent (a failure is a 500)."""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StreamResponse:
    """Server-sent events: each (name, JSON-able data) becomes `event:` and `data:`
    lines; a comment line goes out after `keepalive` seconds without an event, so
    a client that is gone is noticed by the failing write. The stream ends when
    `events` ends; if `events` is an async generator it is closed either way.
    `on_close` runs once in every case, even when the client was gone before
    the headers went out and `events` never started (so a subscription made
    by the handler is always released)."""

    events: AsyncIterator[tuple[str, Any]]
    keepalive: float = DEFAULT_KEEPALIVE
    on_close: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if not self.keepalive > 0:
            raise ValueError("keepalive must be a positive number of seconds")


Response: TypeAlias = JsonResponse | StreamResponse
Handler: TypeAlias = "Callable[[Request], Awaitable[Response]]"
H = TypeVar("H", bound=Handler)


def json_response(obj: Any, status: int = 200) -> JsonResponse:
    return JsonResponse(status, obj)


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def encode_event(name: str, data: Any) -> bytes:
    if not name or "\n" in name or "\r" in name:
        raise ValueError(f"bad event name {name!r}")
    # Compact JSON has no raw newline, so data is always one `data:` line.
    return b"event: " + name.encode() + b"\ndata: " + encode_json(data) + b"\n\n"


# --- routing -----------------------------------------------------------------

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: str
    segments: tuple[str | None, ...]
    """Literal text, or None where a parameter goes (named in `names`)."""
    names: tuple[str, ...]
    handler: Handler

    @property
    def literals(self) -> int:
        return sum(s is not None for s in self.segments)

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        values = []
        for want, got in zip(self.segments, segments, strict=True):
            if want is None:
                if not got:
                    return None
                values.append(got)
            elif want != got:
                return None
        return dict(zip(self.names, values, strict=True))


def _split_path(path: str) -> list[str]:
    return path.split("/")[1:]


class Router:
    """Maps (method, path) to handlers; `{name}` in a pattern matches one segment.

    Where patterns overlap, the one with more literal segments wins.
    """

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def route(self, method: str, pattern: str) -> Callable[[H], H]:
        """Register a handler: `router.route("GET", "/v1/items/{id}")(handler)`."""
        if not pattern.startswith("/"):
            raise ValueError(f"a route pattern starts with '/': {pattern!r}")
        segments: list[str | None] = []
        names: list[str] = []
        for part in _split_path(pattern):
            if m := _PARAM.fullmatch(part):
                if m.group(1) in names:
                    raise ValueError(f"{m.group(1)!r} twice in {pattern!r}")
                names.append(m.group(1))
                segments.append(None)
            elif "{" in part or "}" in part:
                raise ValueError(f"a parameter is a whole segment: {part!r} in {pattern!r}")
            else:
                segments.append(part)
        method = method.upper()
        for r in self._routes:
            if r.method == method and r.segments == tuple(segments):
                raise ValueError(f"{method} {pattern} is already routed (as {r.pattern})")

        def register(handler: H) -> H:
            self._routes.append(_Route(method, pattern, tuple(segments), tuple(names), handler))
            return handler

        return register

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and parameters for a raw (still percent-encoded) path.

        Raises `ApiError`: 404 for an unknown path, 405 (with `allow`) for a
        known path and another method, 400 for a bad percent-encoding.
        """
        try:
            segments = [unquote(s, errors="strict") for s in _split_path(path)]
        except UnicodeDecodeError:
            raise ApiError(400, "the path is not UTF-8 once percent-decoded") from None
        best: tuple[_Route, dict[str, str]] | None = None
        allow: list[str] = []
        for r in self._routes:
            params = r.match(segments)
            if params is None:
                continue
            if r.method != method:
                allow.append(r.method)
            elif best is None or r.literals > best[0].literals:
                best = r, params
        if best is not None:
            return best[0].handler, best[1]
        shown = unquote(path)
        if allow:
            allowed = sorted(set(allow))
            raise ApiError(
                405,
                f"{method} is not allowed on {shown}",
                f"allowed: {', '.join(allowed)}",
                headers=[("allow", ", ".join(allowed))],
                extra={"allow": allowed},
            )
        raise ApiError(404, f"no such path: {shown}")


# --- one connection ------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _header_map(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _declared_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits and consistent
    return None


def _bearer_matches(headers: Mapping[str, str], token: bytes) -> bool:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken does not tell how much of the token matched.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode("latin-1"), token
    )


async def _aclose_events(events: AsyncIterator[tuple[str, Any]]) -> None:
    if not isinstance(events, AsyncGenerator):
        return
    # Shielded: this runs when the connection is being cancelled, and the
    # generator's own cleanup (unsubscribing) must still happen, but bounded.
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + STREAM_CLEANUP_TIMEOUT
        try:
            await events.aclose()
        except Exception:
            log.exception("closing an api event stream failed")


class _HttpConnection:
    """Serves one client connection: h11 for the protocol, `stream` for bytes."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        router: Router,
        limits: ApiLimits,
        token: bytes | None,
        stream_slots: trio.Semaphore,
    ) -> None:
        self._stream = stream
        self._stream_slots = stream_slots
        self._router = router
        self._limits = limits
        self._token = token
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        # Cancelled to drop the connection from anywhere inside it.
        self._scope = trio.CancelScope()
        self._head = False

    async def run(self) -> None:
        with self._scope:
            while await self._one_cycle():
                pass

    def _drop(self, why: str) -> None:
        log.debug("dropping api connection: %s", why)
        self._scope.cancel()

    async def _one_cycle(self) -> bool:
        """Read one request and answer it; False once the connection is done."""
        try:
            with trio.move_on_after(self._limits.request_timeout) as timer:
                got = await self._receive_request()
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc.error_status_hint, f"malformed HTTP request: {exc}")
            return False
        except _BodyTooLarge:
            await self._refuse(413, f"request body over {self._limits.max_body_bytes} bytes")
            return False
        if timer.cancelled_caught:
            log.debug("dropping api connection: stalled mid-request or idle too long")
            return False
        if got is None:
            return False
        await self._answer(*got)
        if self._h11.our_state is h11.MUST_CLOSE:
            return False
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True

    async def _next_event(self) -> h11.Event:
        while True:
            event = self._h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                # Only reachable if we read past a request we have not answered.
                raise RuntimeError("h11 paused while reading a request")
            if self._h11.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:  # reset by the peer: same as it closing
                data = b""
            self._h11.receive_data(bytes(data))

    async def _receive_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its whole body; None when the client has closed."""
        # Until this cycle's request is read, a refusal answers no HEAD: one
        # left from the last cycle would drop the refusal's body.
        self._head = False
        event = await self._next_event()
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed: the only other event h11 gives a server here
        self._head = event.method == b"HEAD"
        declared = _declared_length(event.headers)
        if declared is not None and declared > self._limits.max_body_bytes:
            raise _BodyTooLarge
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self._limits.max_body_bytes:
                    raise _BodyTooLarge
            elif isinstance(part, h11.EndOfMessage):
                return event, bytes(body)
            else:
                return None

    async def _answer(self, event: h11.Request, body: bytes) -> None:
        method = event.method.decode("ascii")
        target = event.target.decode("ascii")  # h11 allows only visible ASCII here
        payload = b""
        try:
            try:
                response = await self._dispatch(method, target, event.headers, body)
            except ApiError as exc:
                response = JsonResponse(exc.status, exc.body(), exc.headers)
            if isinstance(response, JsonResponse):
                # In the try, errors too: one that cannot be encoded is a 500, not
                # a connection closed without an answer.
                payload = encode_json(response.body)
        except Exception as exc:
            log.exception("api handler for %s %s failed", method, target)
            error = {"error": f"internal error: {type(exc).__name__}", "hint": None}
            response, payload = JsonResponse(500, None), encode_json(error)
        if isinstance(response, StreamResponse):
            log.debug("api %s %s -> event stream", method, target)
            try:
                self._stream_slots.acquire_nowait()
            except trio.WouldBlock:
                await self._close_stream_response(response)
                busy = ApiError(
                    503,
                    f"too many event streams open (limit {self._limits.max_event_streams})",
                    "close one, or try again later",
                )
                await self._send_json(503, encode_json(busy.body()))
                return
            try:
                await self._send_stream(response)
            finally:
                self._stream_slots.release()
                await self._close_stream_response(response)
        else:
            log.debug("api %s %s -> %d", method, target, response.status)
            await self._send_json(response.status, payload, response.headers)

    async def _dispatch(
        self, method: str, target: str, raw_headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        headers = _header_map(raw_headers)
        if self._token is not None and not _bearer_matches(headers, self._token):
            raise ApiError(
                401,
                "missing or wrong API token",
                "send the header Authorization: Bearer <token>",
                headers=[("www-authenticate", "Bearer")],
            )
        if not target.startswith("/"):
            raise ApiError(400, f"the request target must be a path, not {target!r}")
        path, _, raw_query = target.partition("?")
        handler, params = self._router.resolve(method, path)
        try:
            query = dict(
                parse_qsl(
                    raw_query,
                    keep_blank_values=True,
                    errors="strict",
                    max_num_fields=MAX_QUERY_FIELDS,
                )
            )
        except ValueError as exc:  # includes UnicodeDecodeError
            raise ApiError(400, f"bad query string: {exc}") from None
        request = Request(
            method=method,
            path=unquote(path),
            params=MappingProxyType(params),
            query=MappingProxyType(query),
            headers=MappingProxyType(headers),
            body=body,
        )
        return await handler(request)

    # --- writing ----------------------------------------------------------------

    async def _send(self, *events: h11.Event) -> None:
        data = b"".join(self._h11.send(e) or b"" for e in events)
        with trio.move_on_after(self._limits.write_timeout):
            try:
                await self._stream.send_all(data)
                return
            except trio.BrokenResourceError:
                pass
        self._h11.send_failed()
        self._drop("client gone or not reading")
        await trio.lowlevel.checkpoint()  # raises Cancelled: unwinds to run()

    def _headers(self, pairs: Sequence[tuple[str, str]], close: bool) -> list[tuple[bytes, bytes]]:
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
        if close or not self._limits.keep_alive:
            out.append((b"connection", b"close"))
        return out

    async def _send_json(
        self,
        status: int,
        payload: bytes,
        headers: Sequence[tuple[str, str]] = (),
        *,
        close: bool = False,
    ) -> None:
        pairs = [("content-type", JSON_CONTENT_TYPE.decode())]
        no_body = status in (204, 304)
        if not no_body:
            pairs.append(("content-length", str(len(payload))))
        events: list[h11.Event] = [
            h11.Response(
                status_code=status,
                headers=self._headers([*pairs, *headers], close),
                reason=_reason(status),
            )
        ]
        if not (no_body or self._head):
            events.append(h11.Data(data=payload))
        events.append(h11.EndOfMessage())
        await self._send(*events)

    async def _refuse(self, status: int, message: str) -> None:
        """Answer a request we will not read to the end, then close."""
        log.debug("api refused a request: %d %s", status, message)
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send_json(status, encode_json({"error": message, "hint": None}), close=True)
        with trio.move_on_after(self._limits.linger):
            try:
                if isinstance(self._stream, trio.abc.HalfCloseableStream):
                    await self._stream.send_eof()
                while await self._stream.receive_some(RECEIVE_SIZE):
                    pass
            except trio.BrokenResourceError:
                pass

    @staticmethod
    async def _close_stream_response(response: StreamResponse) -> None:
        await _aclose_events(response.events)
        if response.on_close is not None:
            response.on_close()

    async def _send_stream(self, response: StreamResponse) -> None:
        # The connection ends with the stream: then anything the client sends
        # meanwhile can be read and dropped, and its EOF means it has left.
        headers = self._headers([("cache-control", "no-store")], close=True)
        await self._send(
            h11.Response(status_code=200, headers=[(b"content-type", SSE_CONTENT_TYPE), *headers])
        )
        failed = False

        async def produce(out: trio.MemorySendChannel[bytes]) -> None:
            # The handler's iterator runs here, so that waiting for its next event
            # can time out (for keepalives) without cancelling the iterator itself.
            nonlocal failed
            async with out:
                try:
                    async for name, data in response.events:
                        await out.send(encode_event(name, data))
                except Exception:
                    log.exception("api event stream failed")
                    failed = True
                finally:
                    await _aclose_events(response.events)

        async def watch_client() -> None:
            # Without this a client that closed is noticed only by the next
            # write (up to a keepalive later), holding its slots until then.
            while True:
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self._drop("the event stream's client left")
                    return

        send_chunks, chunks = trio.open_memory_channel[bytes](0)
        async with trio.open_nursery() as nursery, chunks:
            nursery.start_soon(produce, send_chunks)
            nursery.start_soon(watch_client)
            while True:
                chunk = KEEPALIVE_COMMENT
                with trio.move_on_after(response.keepalive):
                    try:
                        chunk = await chunks.receive()
                    except trio.EndOfChannel:
                        break
                await self._send(h11.Data(data=chunk))
            nursery.cancel_scope.cancel()  # the stream ended: stop watching the client
        if failed:
            # No clean end: the client sees the stream cut, not finished.
            self._drop("event stream failed")
            await trio.lowlevel.checkpoint()
        await self._send(h11.EndOfMessage())


# --- serving ---------------------------------------------------------------------


async def _serve_connection(
    stream: trio.abc.Stream,
    router: Router,
    limits: ApiLimits,
    token: bytes | None,
    slots: trio.Semaphore,
    stream_slots: trio.Semaphore,
) -> None:
    try:
        async with stream:
            await _HttpConnection(stream, router, limits, token, stream_slots).run()
    except Exception:
        # A bug here must cost one connection, not the server.
        log.exception("api connection failed")
    finally:
        slots.release()


async def _serve_listener(
    listener: trio.SocketListener, router: Router, limits: ApiLimits, token: bytes | None
) -> None:
    slots = trio.Semaphore(limits.max_connections)
    stream_slots = trio.Semaphore(limits.max_event_streams)
    async with listener, trio.open_nursery() as nursery:
        while True:
            # Take a slot before accepting: past the limit, clients wait in the backlog.
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("api accept failed (%s); retrying", os.strerror(exc.errno or 0))
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(
                _serve_connection, stream, router, limits, token, slots, stream_slots
            )


def _socket_kind(path: Path) -> bool | None:
    """None if nothing is at `path`, else whether it is a socket."""
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:
        return None


def _remove_stale(path: Path) -> None:
    log.info("removing stale api socket %s (nothing answers on it)", path)
    path.unlink(missing_ok=True)


async def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file nobody answers on; refuse if someone does."""
    kind = _socket_kind(path)
    if kind is None:
        return
    if not kind:
        raise ServeError(f"{path} exists and is not a socket; move it away")
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            await probe.connect(os.fspath(path))
        except ConnectionRefusedError:
            _remove_stale(path)
            return
        except FileNotFoundError:
            return
        except BlockingIOError:
            pass  # its backlog is full: very much alive
        except OSError as exc:
            raise ServeError(f"cannot check {path}: {exc.strerror or exc}") from None
    raise ServeError(f"another node is running for this home ({path} answers)")


def _bind_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bound under umask 0o177 so the file is 0600 from its first instant.
        # The umask is per process: a file another thread creates meanwhile
        # gets a narrower mode, never a wider one.
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _remove_if_ours(path: Path, ours: tuple[int, int] | None) -> None:
    # Another node may have replaced a socket it found stale: leave that one be.
    if ours is not None and _file_id(path) == ours:
        path.unlink(missing_ok=True)


async def serve_unix(
    path: Path,
    router: Router,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    limits: ApiLimits = DEFAULT_LIMITS,
) -> None:
    """Serve `router` on a 0600 Unix socket at `path` until cancelled.

    A stale socket file (nobody answers on it) is replaced; if a live server
    answers, `ServeError` says another node is running for this home. The
    socket file is removed on exit.
    """
    await _clear_stale_socket(path)
    sock = _bind_unix(path)
    ours = _file_id(path)
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        task_status.started()
        log.info("api listening on %s", path)
        await _serve_listener(listener, router, limits, None)
    finally:
        sock.close()
        _remove_if_ours(path, ours)


async def serve_tcp(
    host: str,
    port: int,
    router: Router,
    token: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    limits: ApiLimits = DEFAULT_LIMITS,
) -> None:
    """Serve `router` on a loopback address; every request needs
    `Authorization: Bearer <token>` (401 otherwise). Reports the bound port."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the TCP API serves a loopback address only, not {host!r}")
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("the API token must be non-empty printable ASCII without spaces")
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=LISTEN_BACKLOG)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_serve_listener, listener, router, limits, token.encode())
        bound: int = listeners[0].socket.getsockname()[1]
        task_status.started(bound)
        log.info("api listening on %s:%d", host, bound)
