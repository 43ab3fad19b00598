"""A blocking client for a running node's local API, for the CLI and scripts.

Standard library only, so that `p2pdm status` starts fast. Each call opens its
own connection to the node's Unix socket (cheap, and a client object is then
safe to share between threads). Paths are given unencoded (`/v1/contacts/bob
smith`) and percent-encoded here; `/` stays a separator.

Errors: `ApiUnavailable` when no node answers (or the connection is lost),
`ApiRequestError` when the node answers with an error.
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

# Re-exported: callers import the errors from here.
from p2pdm.apierrors import ApiClientError as ApiClientError
from p2pdm.apierrors import ApiRequestError as ApiRequestError
from p2pdm.apierrors import ApiUnavailable as ApiUnavailable
from p2pdm.apierrors import EventStreamEnded as EventStreamEnded

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

DEFAULT_TIMEOUT = 30.0
# An event stream's status line and headers are a few hundred bytes.
MAX_STREAM_HEAD = 16 * 1024
# One event (or a chunk-size line) never comes near this; past it the answer is not ours.
MAX_EVENT_BYTES = 4 * 1024 * 1024
RECV_SIZE = 64 * 1024


def _no_node(home: Path) -> ApiUnavailable:
    return ApiUnavailable(f"no node is running for home {home} (start one with `p2pdm run`)")


def _connect(path: Path, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise _no_node(path.parent) from None
    except TimeoutError:
        sock.close()
        raise ApiUnavailable(
            f"the node for home {path.parent} does not accept connections"
        ) from None
    except OSError as exc:
        sock.close()
        raise ApiUnavailable(f"cannot reach the node at {path}: {exc.strerror or exc}") from None
    return sock


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the node's Unix socket."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = _connect(self._path, self.timeout)


def _target(path: str, query: dict[str, object]) -> str:
    if not path.startswith("/"):
        raise ValueError(f"an API path starts with '/': {path!r}")
    pairs = [(k, _query_value(v)) for k, v in query.items() if v is not None]
    # "%" stays: a caller quotes a segment that may hold "/", "?" or "%"
    # (quote(part, safe="")), and that must reach the node as quoted once.
    return quote(path, safe="/%") + (f"?{urlencode(pairs)}" if pairs else "")


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bad_answer(detail: str) -> ApiRequestError:
    return ApiRequestError(502, f"bad answer from the node: {detail}")


def _error_from(status: int, reason: str, data: bytes) -> ApiRequestError:
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        hint = body.get("hint")
        return ApiRequestError(status, body["error"], hint if isinstance(hint, str) else None)
    return ApiRequestError(status, f"HTTP {status} {reason}".rstrip())


class ApiClient:
    """Talks to the node whose API socket is `socket_path`.

    `timeout` bounds connecting and each wait for the node's answer, in seconds.
    """

    def __init__(self, socket_path: Path | str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    @property
    def home(self) -> Path:
        return self.socket_path.parent

    def get(self, path: str, **query: object) -> Any:
        """GET `path` with query parameters (None values left out); the JSON answer."""
        return self._request("GET", _target(path, query), None)

    def post(self, path: str, body: Any) -> Any:
        """POST `body` as JSON; the JSON answer."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return self._request("POST", _target(path, {}), data)

    def delete(self, path: str) -> Any:
        return self._request("DELETE", _target(path, {}), None)

    def events(self, path: str, **query: object) -> EventStream:
        """Open an event stream; returns once the node has accepted it, so no
        event that happens after this call returns is missed."""
        return EventStream.open(self.socket_path, _target(path, query), self.timeout)

    def _request(self, method: str, target: str, body: bytes | None) -> Any:
        headers = {"Accept": "application/json", "Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            # The node may refuse a request (413) and stop reading before we
            # finish sending it: then its answer, read next, says why.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError:
            raise ApiUnavailable(
                f"the node for home {self.home} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnavailable(
                f"lost the connection to the node for home {self.home} ({exc!r})"
            ) from None
        finally:
            conn.close()
        if response.status >= 400:
            raise _error_from(response.status, response.reason, data)
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise _bad_answer("not JSON") from None


class _ChunkState(enum.Enum):
    SIZE = enum.auto()
    """Waiting for a chunk-size line."""
    DATA = enum.auto()
    """Inside a chunk's data."""
    CRLF = enum.auto()
    """Waiting for the CRLF after a chunk's data."""
    DONE = enum.auto()
    """The last (empty) chunk came: the body is complete."""


class _Dechunker:
    """Undoes HTTP/1.1 chunked transfer coding on bytes fed as they arrive."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0
        self.state = _ChunkState.SIZE

    def feed(self, data: bytes) -> bytes:
        """The body bytes decodable so far; ValueError on a malformed coding."""
        self._buf += data
        out = bytearray()
        while True:
            if self.state is _ChunkState.SIZE:
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > MAX_STREAM_HEAD:
                        raise ValueError("chunk-size line too long")
                    break
                size_text = bytes(self._buf[:end]).split(b";", 1)[0].strip()
                del self._buf[: end + 2]
                self._left = int(size_text, 16)
                self.state = _ChunkState.DATA if self._left else _ChunkState.DONE
            elif self.state is _ChunkState.DATA:
                take = min(self._left, len(self._buf))
                if not take:
                    break
                out += self._buf[:take]
                del self._buf[:take]
                self._left -= take
                if not self._left:
                    self.state = _ChunkState.CRLF
            elif self.state is _ChunkState.CRLF:
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
                del self._buf[:2]
                self.state = _ChunkState.SIZE
            else:
                break  # DONE; trailers, if any, are of no interest
        return bytes(out)


class EventStream:
    """Server-sent events from the node, read on this thread.

    Iterate it (ends when the node ends the stream) or call `next(timeout)`.
    Close it when done (it is a context manager too).
    """

    def __init__(self, sock: socket.socket, home: Path, chunked: bool, rest: bytes) -> None:
        self._sock: socket.socket | None = sock
        self._home = home
        self._dechunker = _Dechunker() if chunked else None
        self._text = bytearray()
        self._eof = False
        self._name: str | None = None
        self._data: list[str] = []
        self._take(rest)

    @classmethod
    def open(cls, socket_path: Path, target: str, timeout: float | None) -> EventStream:
        home = socket_path.parent
        sock = _connect(socket_path, timeout)
        try:
            sock.sendall(
                f"GET {target} HTTP/1.1\r\nHost: localhost\r\n"
                "Accept: text/event-stream\r\n\r\n".encode("ascii")
            )
            head = bytearray()
            while b"\r\n\r\n" not in head:
                if len(head) > MAX_STREAM_HEAD:
                    raise _bad_answer("headers too long")
                data = sock.recv(RECV_SIZE)
                if not data:
                    raise ApiUnavailable(f"the node for home {home} closed the connection")
                head += data
            raw_head, _, rest = bytes(head).partition(b"\r\n\r\n")
            status, reason, headers = _parse_head(raw_head)
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            if status != 200:
                raise _error_from(status, reason, _read_error_body(sock, headers, chunked, rest))
            if not headers.get("content-type", "").startswith("text/event-stream"):
                raise _bad_answer("not an event stream")
            return cls(sock, home, chunked, rest)
        except TimeoutError:
            sock.close()
            raise ApiUnavailable(
                f"the node for home {home} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise ApiUnavailable(
                f"lost the connection to the node for home {home} ({exc!r})"
            ) from None
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self

    def __next__(self) -> tuple[str, Any]:
        try:
            event = self.next(timeout=None)
        except EventStreamEnded:
            raise StopIteration from None
        assert event is not None  # with no timeout, next() returns an event or raises
        return event

    def next(self, timeout: float | None) -> tuple[str, Any] | None:
        """The next (name, data) event; None if `timeout` seconds pass without one
        (None waits for ever). Raises `EventStreamEnded` when the node ends the
        stream, `ApiUnavailable` when the connection is lost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self._parse_event()
            if event is not None:
                return event
            if self._eof:
                raise EventStreamEnded(f"the node for home {self._home} ended the event stream")
            if self._sock is None:
                raise ApiUnavailable("the event stream is closed")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                self._sock.settimeout(left)
                data = self._sock.recv(RECV_SIZE)
            except TimeoutError:
                return None
            except OSError as exc:
                raise ApiUnavailable(
                    f"lost the connection to the node for home {self._home} ({exc!r})"
                ) from None
            if not data:
                if self._dechunker is not None and self._dechunker.state is not _ChunkState.DONE:
                    raise ApiUnavailable(f"the node for home {self._home} cut the event stream")
                self._eof = True
            self._take(data)

    def _take(self, data: bytes) -> None:
        if self._dechunker is None:
            self._text += data
        else:
            try:
                self._text += self._dechunker.feed(data)
            except ValueError as exc:
                raise _bad_answer(str(exc)) from None
            if self._dechunker.state is _ChunkState.DONE:
                self._eof = True
        if len(self._text) > MAX_EVENT_BYTES:
            raise _bad_answer("an event too long")

    def _parse_event(self) -> tuple[str, Any] | None:
        while True:
            end = self._text.find(b"\n")
            if end < 0:
                return None
            line = bytes(self._text[:end]).rstrip(b"\r").decode("utf-8", errors="replace")
            del self._text[: end + 1]
            if not line:
                if not self._data:
                    self._name = None
                    continue
                name, data = self._name or "message", "\n".join(self._data)
                self._name, self._data = None, []
                try:
                    return name, json.loads(data)
                except ValueError:
                    raise _bad_answer(f"event {name!r} data is not JSON") from None
            if line.startswith(":"):
                continue  # a comment: the node's keepalive
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                self._name = value
            elif field == "data":
                self._data.append(value)
            # id and retry are not used by the node


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _bad_answer(f"status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _bad_answer(f"header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def _read_error_body(
    sock: socket.socket, headers: dict[str, str], chunked: bool, rest: bytes
) -> bytes:
    """The (small) body of an error answer to an event-stream request."""
    dechunker = _Dechunker() if chunked else None
    declared = headers.get("content-length", "")
    length = int(declared) if dechunker is None and declared.isdigit() else None
    body = bytearray()
    data = rest
    with contextlib.suppress(OSError, ValueError):
        while True:
            body += data if dechunker is None else dechunker.feed(data)
            if (
                (dechunker is not None and dechunker.state is _ChunkState.DONE)
                or (length is not None and len(body) >= length)
                or len(body) > MAX_STREAM_HEAD
            ):
                break
            data = sock.recv(RECV_SIZE)
            if not data:
                break
    return bytes(body)
