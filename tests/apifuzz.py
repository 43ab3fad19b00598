"""Schemathesis against a running node's local API, over its Unix socket.

The driver shared by `tests/test_api_schema.py` (a bounded run in the
default suite) and `scripts/api_fuzz.py` (a long run). It loads the
OpenAPI document the node serves, and for every operation sends requests
schemathesis generates from it, both fitting the schema (positive) and
breaking it (negative). Each answer must pass `CHECKS`: no 5xx, a status,
content type, headers and body the document declares, a schema-breaking
request refused with a 4xx, every error a JSON object with an `error`
message; and it must come within `REQUEST_TIMEOUT`.

Generation is derandomized (hypothesis's seed comes from the test), so a
run with the same document and example count sends the same requests.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import hypothesis
import requests
import schemathesis
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from schemathesis import checks
from schemathesis.core.failures import Failure as CheckFailure
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from p2pdm.identity import Identity
from tests.nodeproc import NodeProcess, init_home, wait_event

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    from schemathesis.core.transport import Response
    from schemathesis.generation.case import Case
    from schemathesis.schemas import APIOperation, BaseSchema

# The host in every URL; the adapter below sends it all to the socket.
BASE_URL = "http://p2pdm"
# Seconds one request may take before it counts as a hang. Every handler
# answers from memory or SQLite; the server's own stall limit is 10 s.
REQUEST_TIMEOUT = 15.0
# The event stream never ends by itself: it is tested on its own.
STREAMING = frozenset({("GET", "/v1/events")})


# --- a requests transport over a Unix socket ------------------------------------


class _UnixConnection(HTTPConnection):
    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self._socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        return sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, socket_path: str) -> None:
        super().__init__("localhost", maxsize=1)
        self._socket_path = socket_path

    def _new_conn(self) -> HTTPConnection:
        self.num_connections += 1
        return _UnixConnection(self._socket_path, timeout=self.timeout.connect_timeout)


class UnixAdapter(HTTPAdapter):
    """Sends every request of a `requests.Session` to one Unix socket."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__()
        self._pool = _UnixPool(str(socket_path))

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def unix_session(socket_path: Path) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment: the socket is the way
    session.mount(BASE_URL, UnixAdapter(socket_path))
    return session


# --- checks -------------------------------------------------------------------------


def error_is_json_message(ctx: Any, response: Response, case: Case) -> bool | None:
    """Every 4xx and 5xx answer is a JSON object with a non-empty `error` text."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} answer is not JSON: {response.content[:200]!r}"
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        raise AssertionError(f"{response.status_code} answer has no error message: {body!r}")
    return True


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    error_is_json_message,
]


# --- the run ------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """Names of things the node holds (a contact, a message, a group), by the
    path parameter, query parameter or top-level body field that takes them.
    Half of the positive requests have them swapped in, so they get past the
    lookup to the code behind it; random text almost never names anything."""

    path: Mapping[str, Sequence[str]] = field(default_factory=dict)
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    body: Mapping[str, Sequence[str]] = field(default_factory=dict)


def _fill(case: Case, known: Known, picks: Sequence[int]) -> Case:
    """`case` with known names where it has those fields (the choice of which
    name is `picks`, drawn by hypothesis so that runs repeat)."""
    pick = iter(picks)

    def choose(values: Sequence[str]) -> str:
        return values[next(pick) % len(values)]

    for name, values in known.path.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = choose(values)
    for name, values in known.query.items():
        if case.query and name in case.query:
            case.query[name] = choose(values)
    if isinstance(case.body, dict):
        for name, values in known.body.items():
            if isinstance(case.body.get(name), str):
                case.body[name] = choose(values)
            elif isinstance(case.body.get(name), list) and case.body[name]:
                case.body[name] = [choose(values)]
    return case


def _with_known(strategy: st.SearchStrategy[Case], known: Known) -> st.SearchStrategy[Case]:
    slots = len(known.path) + len(known.query) + len(known.body)
    picks = st.lists(st.integers(0, 1 << 16), min_size=slots, max_size=slots)
    filled = st.builds(_fill, strategy, st.just(known), picks)
    return st.one_of(strategy, filled)


@dataclass(frozen=True)
class Failure:
    operation: str
    check: str
    message: str
    curl: str


@dataclass
class Report:
    operations: list[str] = field(default_factory=list)
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    _seen: set[tuple[str, str, str]] = field(default_factory=set)

    def fail(self, failure: Failure) -> None:
        # One line per distinct problem: the same one from many examples is noise.
        key = (failure.operation, failure.check, failure.message.splitlines()[0][:200])
        if key not in self._seen:
            self._seen.add(key)
            self.failures.append(failure)


def load_schema(session: requests.Session) -> BaseSchema:
    """The OpenAPI document as the node serves it."""
    answer = session.get(f"{BASE_URL}/openapi.json", timeout=REQUEST_TIMEOUT)
    answer.raise_for_status()
    schema = schemathesis.openapi.from_dict(answer.json())
    schema.config.update(base_url=BASE_URL)
    return schema


def operations(schema: BaseSchema) -> list[APIOperation]:
    """Every operation but the event stream, in a fixed order."""
    found = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) not in STREAMING:
            found.append(op)
    return sorted(found, key=lambda op: order_key(op.method, op.path))


def order_key(method: str, path: str) -> tuple[bool, str, str]:
    """Deletes last: run earlier, they would remove the names others are given."""
    return (method.upper() == "DELETE", path, method.upper())


def run_operation(
    op: APIOperation,
    session: requests.Session,
    examples: int,
    report: Report,
    known: Known | None = None,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
) -> None:
    """Send up to `examples` generated requests per mode to `op`, checking each answer."""
    label = f"{op.method.upper()} {op.path}"
    report.operations.append(label)
    for mode in modes:
        strategy = op.as_strategy(generation_mode=mode)
        if known is not None and mode is GenerationMode.POSITIVE:
            # Only positive ones: a known name could make a negative request valid.
            strategy = _with_known(strategy, known)

        @hypothesis.settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            # Only generate: failures are collected, not raised, so nothing to shrink.
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def one(case: Case) -> None:
            report.requests += 1
            kwargs = case.as_transport_kwargs(base_url=BASE_URL)
            try:
                response = case.call(base_url=BASE_URL, session=session, timeout=REQUEST_TIMEOUT)
            except requests.Timeout:
                curl = case.as_curl_command(base_url=BASE_URL)
                report.fail(Failure(label, "no hang", f"no answer in {REQUEST_TIMEOUT} s", curl))
                return
            except requests.ConnectionError as exc:
                curl = case.as_curl_command(base_url=BASE_URL)
                report.fail(Failure(label, "connection", f"connection failed: {exc}", curl))
                return
            report.by_status[response.status_code] = (
                report.by_status.get(response.status_code, 0) + 1
            )
            try:
                case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
            except FailureGroup as group:
                curl = case.as_curl_command(base_url=BASE_URL)
                for exc in group.exceptions:
                    report.fail(_failure(label, exc, curl, response))
            except CheckFailure as exc:
                report.fail(_failure(label, exc, case.as_curl_command(base_url=BASE_URL), response))

        try:
            one()
        except hypothesis.errors.Unsatisfiable:
            # Negative mode of an operation that takes nothing: no request breaks its schema.
            if mode is not GenerationMode.NEGATIVE:
                raise


def _failure(label: str, exc: CheckFailure, curl: str, response: Response) -> Failure:
    title = getattr(exc, "title", type(exc).__name__)
    body = response.content[:300].decode("utf-8", "replace")
    message = f"{title}: {exc.message}\n-> {response.status_code} {body}"
    return Failure(label, title, message, curl)


def run(socket_path: Path, examples: int, known: Known | None = None) -> Report:
    """The whole run against the node serving on `socket_path`."""
    report = Report()
    with unix_session(socket_path) as session:
        schema = load_schema(session)
        for op in operations(schema):
            run_operation(op, session, examples, report, known)
    return report


@contextlib.contextmanager
def seeded_node(workdir: Path) -> Iterator[tuple[NodeProcess, Known]]:
    """A node to fuzz, with something to name: a contact (carol, a node that
    never runs) sent a text, a group with her, a file to send, and a stranger
    (bob, a second real node on loopback) who wrote to it. Both run on
    127.0.0.1 with mDNS off and know no other address, so whatever the
    requests make the node send stays on this host."""
    a_id = init_home(workdir / "a", "alice")
    b_id = init_home(workdir / "b", "bob")
    carol = str(Identity.generate().node_id)
    a = NodeProcess(workdir / "a").start()
    b = None
    try:
        events = a.api.events("/v1/events")
        try:
            b = NodeProcess(workdir / "b", "--bootstrap", a.address).start()
            wait_event(events, "peer", lambda d: d["id"] == b_id and d["connected"])
            a.api.post("/v1/contacts", {"id": carol, "name": "carol"})
            [mine] = a.api.post("/v1/messages", {"to": "carol", "text": "hello carol"})["ids"]
            [theirs] = b.api.post("/v1/messages", {"to": a_id, "text": "hello alice"})["ids"]
            wait_event(events, "message", lambda d: d["id"] == theirs)
        finally:
            events.close()
        group = a.api.post("/v1/groups", {"name": "fuzzers", "members": [carol]})["id"]
        attachment = workdir / "note.txt"
        attachment.write_text("a small file\n")
        peers = ["carol", carol, b_id]
        known = Known(
            path={"peer": peers, "id": [mine, theirs], "group": [group, "fuzzers"]},
            query={"peer": peers},
            body={
                "id": [carol, b_id],
                "to": peers,
                "peer": peers,
                "ids": [mine, theirs],
                "members": peers,
                "path": [str(attachment)],
            },
        )
        yield a, known
    finally:
        a.close()
        if b is not None:
            b.close()


def only_loopback(node: NodeProcess) -> list[str]:
    """Addresses the node knows for any peer that are not on 127.0.0.0/8 (it
    dials no others): what a run must leave empty."""
    found = []
    for peer in node.api.get("/v1/peers")["peers"]:
        for address in peer["addresses"]:
            host = address.rsplit(":", 1)[0].strip("[]")
            if ipaddress.ip_address(host) not in ipaddress.ip_network("127.0.0.0/8"):
                found.append(address)
    return found


def format_report(report: Report) -> str:
    lines = [
        f"operations tested: {len(report.operations)}",
        f"requests made: {report.requests}",
        "statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(report.by_status.items())),
        f"failures: {len(report.failures)}",
    ]
    for f in report.failures:
        lines += [f"- {f.operation} [{f.check}]", f"  {f.message}", f"  {f.curl}"]
    return "\n".join(lines)
