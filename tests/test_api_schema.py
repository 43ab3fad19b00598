"""A real `p2pdm run` against its own OpenAPI document, with schemathesis.

Every operation the document lists gets requests generated from it (fitting
it and breaking it), over the node's Unix socket: no answer may be a 5xx,
stray from the document, or be an error that is not a JSON object with an
`error` message, and none may take longer than `apifuzz.REQUEST_TIMEOUT`.
The event stream, which never ends, is tested on its own. A longer run is
`scripts/api_fuzz.py`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

from p2pdm.api import OPENAPI
from tests import apifuzz

if TYPE_CHECKING:
    from collections.abc import Iterator

    import requests
    from schemathesis.schemas import BaseSchema

    from tests.nodeproc import NodeProcess

# Per operation and per mode (fitting, breaking the schema): about 500 requests,
# 10 to 15 s in all with the node's start.
EXAMPLES = 10
ERROR = "#/components/schemas/Error"
OPERATIONS = sorted(
    (
        (method.upper(), path)
        for path, item in OPENAPI["paths"].items()
        for method in item
        if (method.upper(), path) not in apifuzz.STREAMING
    ),
    key=lambda op: apifuzz.order_key(*op),
)


class Fuzzed:
    def __init__(self, node: NodeProcess, known: apifuzz.Known) -> None:
        self.node = node
        self.known = known
        self.session = apifuzz.unix_session(node.home / "api.sock")
        self.schema: BaseSchema = apifuzz.load_schema(self.session)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    with apifuzz.seeded_node(tmp_path_factory.mktemp("api-schema")) as (node, known):
        target = Fuzzed(node, known)
        with target.session:
            yield target


def test_the_node_serves_the_document_it_was_built_with(fuzzed: Fuzzed) -> None:
    served = fuzzed.session.get(f"{apifuzz.BASE_URL}/openapi.json", timeout=30).json()
    assert served == OPENAPI
    fuzzed_ops = [(op.method.upper(), op.path) for op in apifuzz.operations(fuzzed.schema)]
    assert fuzzed_ops == OPERATIONS


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_keeps_to_the_document(fuzzed: Fuzzed, method: str, path: str) -> None:
    op = fuzzed.schema[path][method]
    report = apifuzz.Report()
    apifuzz.run_operation(op, fuzzed.session, EXAMPLES, report, fuzzed.known)
    assert report.requests > 0
    assert not report.failures, apifuzz.format_report(report)
    # Some request got through to the code behind the checks, and its answer
    # was checked against the document too.
    assert any(200 <= status < 300 for status in report.by_status), report.by_status
    # Whatever it was asked to do, it knows (so dials) only loopback addresses.
    assert apifuzz.only_loopback(fuzzed.node) == []


def test_every_operation_documents_its_parameters_and_answers() -> None:
    # Without these a generator has nothing to vary and a checker nothing to check.
    missing = []
    for method, path in OPERATIONS:
        op = OPENAPI["paths"][path][method.lower()]
        declared = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
        if declared != set(re.findall(r"{(\w+)}", path)):
            missing.append(f"{method} {path}: path parameters")
        for status, answer in op["responses"].items():
            schema = answer.get("content", {}).get("application/json", {}).get("schema")
            if schema is None:
                missing.append(f"{method} {path}: {status} answer")
            elif status.startswith(("4", "5")) and schema != {"$ref": ERROR}:
                missing.append(f"{method} {path}: {status} is not an Error")
        if not any(status.startswith("4") for status in op["responses"]):
            missing.append(f"{method} {path}: no error answer")
    assert missing == []


def _get(fuzzed: Fuzzed, path: str, **kwargs: Any) -> requests.Response:
    return fuzzed.session.get(f"{apifuzz.BASE_URL}{path}", timeout=30, **kwargs)


def test_status_answer_matches_the_document(fuzzed: Fuzzed) -> None:
    # frame_bytes_sent is an object of counts by frame type, not a count.
    answer = _get(fuzzed, "/v1/status")
    assert answer.status_code == 200
    fuzzed.schema["/v1/status"]["GET"].validate_response(answer)


def test_event_stream_is_the_documented_stream(fuzzed: Fuzzed) -> None:
    with _get(fuzzed, "/v1/events", stream=True) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.iter_lines(decode_unicode=True)
        assert next(lines) == "event: hello"
        assert next(lines).startswith('data: {"id":')


def test_event_stream_refuses_other_methods_in_json(fuzzed: Fuzzed) -> None:
    answer = fuzzed.session.post(f"{apifuzz.BASE_URL}/v1/events", timeout=30)
    assert answer.status_code == 405
    assert answer.json()["error"]
    assert answer.headers["allow"] == "GET"
