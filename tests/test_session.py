from __future__ import annotations

import pytest

from p2pdm import wire
from p2pdm.session import (
    DEFAULT_WINDOW_BYTES,
    MAX_NOTICE_SIZE,
    MAX_PEER_RECORD_SIZE,
    MAX_PEER_RECORDS,
    AckReceived,
    AckStatus,
    ByeReceived,
    Hello,
    HelloReceived,
    NoticeReceived,
    PeersReceived,
    PingReceived,
    PongReceived,
    PushReceived,
    ReconReceived,
    Session,
    SessionError,
    SessionUsageError,
    State,
    WindowFull,
)


def make_pair(
    window_a: int = 4, window_b: int = 4, window_bytes_b: int = DEFAULT_WINDOW_BYTES
) -> tuple[Session, Session]:
    a = Session(Hello(window_a, True, ("relay",), "test-a"))
    b = Session(Hello(window_b, False, (), "test-b", window_bytes_b))
    ha, hb = a.hello_frame(), b.hello_frame()
    ev = b.receive(ha)
    assert isinstance(ev, HelloReceived)
    assert ev.hello == Hello(window_a, True, ("relay",), "test-a")
    assert isinstance(a.receive(hb), HelloReceived)
    assert a.state is State.OPEN
    assert b.state is State.OPEN
    return a, b


def test_push_and_ack() -> None:
    a, b = make_pair()
    _seq, frame = a.push_frame(b"envelope-1")
    ev = b.receive(frame)
    assert ev == PushReceived(0, b"envelope-1")
    assert a.in_flight == 1
    ack = b.ack_frame(ev.seq, AckStatus.STORED)
    assert a.receive(ack) == AckReceived(0, AckStatus.STORED, "")
    assert a.in_flight == 0


def test_a_session_counts_the_bytes_of_the_frames_it_builds_by_type() -> None:
    a = Session(Hello(4, True, (), "test-a"))
    b = Session(Hello(4, False, (), "test-b"))
    hello = a.hello_frame()
    a.receive(b.hello_frame())
    _, push1 = a.push_frame(b"envelope-1")
    _, push2 = a.push_frame(b"envelope-22")
    ping = a.ping_frame(7)
    assert dict(a.frame_bytes) == {
        "hello": len(hello),
        "push": len(push1) + len(push2),
        "ping": len(ping),
    }


def test_sender_respects_the_peers_window() -> None:
    a, b = make_pair(window_b=3)
    frames = [a.push_frame(b"e%d" % i)[1] for i in range(3)]
    assert a.send_window_free == 0
    with pytest.raises(WindowFull):
        a.push_frame(b"too many")
    events = [b.receive(f) for f in frames]
    assert all(isinstance(e, PushReceived) for e in events)
    a.receive(b.ack_frame(1, AckStatus.DUPLICATE))
    assert a.send_window_free == 1
    a.push_frame(b"fits now")


def test_peer_exceeding_our_window_is_a_protocol_error() -> None:
    """A hostile sender ignores the window: we disconnect instead of buffering."""
    _, b = make_pair(window_b=2)
    for n in range(2):
        b.receive(wire.encode({"t": 2, "n": n, "env": b"x"}))
    with pytest.raises(SessionError, match="flow-control window of 2"):
        b.receive(wire.encode({"t": 2, "n": 2, "env": b"x"}))
    assert b.state is State.CLOSED


def test_out_of_order_push_is_refused() -> None:
    _, b = make_pair()
    with pytest.raises(SessionError, match="out of order"):
        b.receive(wire.encode({"t": 2, "n": 5, "env": b"x"}))


def test_ack_for_unknown_push_is_refused() -> None:
    a, _ = make_pair()
    with pytest.raises(SessionError, match="not in flight"):
        a.receive(wire.encode({"t": 3, "n": 0, "s": 0}))


def test_one_ack_covers_a_run_of_pushes() -> None:
    a, b = make_pair(window_b=8)
    for i in range(5):
        _, frame = a.push_frame(b"m%d" % i)
        b.receive(frame)
    frame = b.ack_frame(1, AckStatus.STORED, count=3)
    assert wire.decode(frame) == {"t": 3, "n": 1, "s": 0, "c": 3}
    assert a.receive(frame) == AckReceived(1, AckStatus.STORED, "", 3)
    assert a.in_flight == 2
    with pytest.raises(SessionUsageError, match=r"pushes 2\.\.4 are not all waiting"):
        b.ack_frame(2, AckStatus.STORED, count=3)


@pytest.mark.parametrize(
    ("ack", "error"),
    [
        ({"t": 3, "n": 0, "s": 0, "c": 3}, r"pushes 0\.\.2, which are not all in flight"),
        ({"t": 3, "n": 0, "s": 0, "c": 1}, r"ACK\.c = 1 is outside"),
        ({"t": 3, "n": 0, "s": 0, "c": 5000}, r"ACK\.c = 5000 is outside"),
    ],
)
def test_bad_range_acks_are_refused(ack: dict[str, int], error: str) -> None:
    a, b = make_pair()
    for i in range(2):
        _, frame = a.push_frame(b"m%d" % i)
        b.receive(frame)
    with pytest.raises(SessionError, match=error):
        a.receive(wire.encode(ack))


def test_refusal_carries_a_reason() -> None:
    a, b = make_pair()
    _, frame = a.push_frame(b"bad")
    b.receive(frame)
    ev = a.receive(b.ack_frame(0, AckStatus.REFUSED, "relay full"))
    assert ev == AckReceived(0, AckStatus.REFUSED, "relay full")


def test_ping_pong_and_bye() -> None:
    a, b = make_pair()
    assert b.receive(a.ping_frame(7)) == PingReceived(7)
    assert a.receive(b.pong_frame(7)) == PongReceived(7)
    assert b.receive(a.bye_frame("shutting down")) == ByeReceived("shutting down")
    assert a.state is State.CLOSED
    assert b.state is State.CLOSED
    with pytest.raises(SessionUsageError):
        a.push_frame(b"x")


def test_nothing_before_hello() -> None:
    a = Session(Hello(4, False, (), "x"))
    a.hello_frame()
    with pytest.raises(SessionError, match="first frame must be HELLO"):
        a.receive(wire.encode({"t": 4, "n": 1}))


def test_bye_is_accepted_before_hello() -> None:
    a = Session(Hello(4, False, (), "x"))
    assert a.receive(wire.encode({"t": 6, "r": "version"})) == ByeReceived("version")


_HELLO: dict[str, wire.Value] = {
    "t": 1,
    "window": 5,
    "wbytes": 65536,
    "relay": True,
    "features": [],
    "agent": "",
}


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({**_HELLO, "window": 0}, "window"),
        ({**_HELLO, "relay": 1}, "relay"),
        ({**_HELLO, "features": "x"}, "features"),
        ({**_HELLO, "features": [1]}, "features"),
        ({**_HELLO, "agent": "a" * 65}, "agent"),
        ({k: v for k, v in _HELLO.items() if k != "agent"}, "lacks"),
        ({"window": 5}, "type"),
        ([1, 2], "type"),
    ],
)
def test_bad_hello_says_why(doc: wire.Value, why: str) -> None:
    a = Session(Hello(4, False, (), "x"))
    a.hello_frame()
    with pytest.raises(SessionError, match=why):
        a.receive(wire.encode(doc))
    assert a.state is State.CLOSED


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xff", b"\xa1\x61t\x09", wire.encode({"t": 99}), wire.encode({"t": 1, "x": 1})],
)
def test_garbage_after_hello_is_a_session_error(frame: bytes) -> None:
    a, _ = make_pair()
    with pytest.raises(SessionError):
        a.receive(frame)


def test_hello_twice() -> None:
    a, _b = make_pair()
    with pytest.raises(SessionError, match="HELLO sent twice"):
        a.receive(wire.encode({"t": 1, "window": 5, "relay": True, "features": [], "agent": ""}))


def test_usage_errors() -> None:
    a = Session(Hello(4, False, (), "x"))
    with pytest.raises(SessionUsageError):
        a.push_frame(b"x")  # not open yet
    with pytest.raises(SessionUsageError, match="send our HELLO"):
        a.receive(Session(Hello(1, False, (), "y")).hello_frame())
    with pytest.raises(SessionUsageError):
        Session(Hello(0, False, (), "x"))
    _a2, b2 = make_pair()
    with pytest.raises(SessionUsageError, match="not waiting"):
        b2.ack_frame(0, AckStatus.STORED)


def test_window_in_bytes_bounds_what_a_receiver_holds() -> None:
    a, b = make_pair(window_b=8, window_bytes_b=1 << 16)
    big = b"x" * 40_000
    assert a.can_push(big)
    _, frame = a.push_frame(big)
    b.receive(frame)
    assert a.send_window_free == 7
    assert not a.can_push(big)
    with pytest.raises(WindowFull):
        a.push_frame(big)
    assert a.can_push(b"small")
    a.receive(b.ack_frame(0, AckStatus.STORED))
    assert a.can_push(big)


def test_a_peer_over_the_byte_window_is_disconnected() -> None:
    _, b = make_pair(window_b=8, window_bytes_b=1 << 16)
    b.receive(wire.encode({"t": 2, "n": 0, "env": b"x" * 40_000}))
    with pytest.raises(SessionError, match="window of 65536 bytes"):
        b.receive(wire.encode({"t": 2, "n": 1, "env": b"x" * 40_000}))
    assert b.state is State.CLOSED


@pytest.mark.parametrize("wbytes", [0, (1 << 16) - 1, (1 << 24) + 1])
def test_hello_with_an_absurd_byte_window_is_refused(wbytes: int) -> None:
    a = Session(Hello(4, True, (), "a"))
    a.hello_frame()
    hello = {"t": 1, "window": 4, "wbytes": wbytes, "relay": True, "features": [], "agent": "x"}
    with pytest.raises(SessionError, match=r"HELLO\.wbytes"):
        a.receive(wire.encode(hello))


def test_peer_records_are_passed_as_opaque_bytes() -> None:
    a, b = make_pair()
    assert b.receive(a.peers_frame([b"r1", b"r2"])) == PeersReceived((b"r1", b"r2"))
    with pytest.raises(SessionUsageError):
        a.peers_frame([b"r"] * (MAX_PEER_RECORDS + 1))


@pytest.mark.parametrize(
    "recs",
    [[b"r"] * (MAX_PEER_RECORDS + 1), [b"x" * (MAX_PEER_RECORD_SIZE + 1)], ["text"], b"r"],
)
def test_an_oversized_or_malformed_peers_frame_is_refused(recs: wire.Value) -> None:
    _, b = make_pair()
    with pytest.raises(SessionError, match=r"PEERS\.recs"):
        b.receive(wire.encode({"t": 7, "recs": recs}))
    assert b.state is State.CLOSED


def test_notices_and_reconciliation_messages_pass_as_opaque_values() -> None:
    a, b = make_pair()
    assert b.receive(a.notice_frame(b"signed")) == NoticeReceived(b"signed")
    recon = {"fp": b"x", "split": b"", "ids": b"", "want": b""}
    assert b.receive(a.recon_frame(recon, request=True)) == ReconReceived(recon, True)
    assert b.receive(a.recon_frame(recon, request=False)) == ReconReceived(recon, False)
    with pytest.raises(SessionUsageError):
        a.notice_frame(b"x" * (MAX_NOTICE_SIZE + 1))
    with pytest.raises(SessionUsageError):
        a.notice_frame(b"")


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"t": 9, "notice": b""}, "empty"),
        ({"t": 9, "notice": "text"}, "notice"),
        ({"t": 9, "notice": b"x" * (MAX_NOTICE_SIZE + 1)}, "notice"),
        ({"t": 8, "q": True, "m": [b"x"]}, "RECON.m"),
        ({"t": 8, "q": 1, "m": {}}, "RECON.q"),
        ({"t": 8, "m": {}}, "RECON"),
    ],
)
def test_malformed_notice_and_recon_frames_are_refused(doc: wire.Value, why: str) -> None:
    _, b = make_pair()
    with pytest.raises(SessionError, match=why):
        b.receive(wire.encode(doc))
    assert b.state is State.CLOSED
