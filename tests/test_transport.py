from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pdm import wire
from p2pdm.handshake import HandshakeError, NoiseStatic, TransportError
from p2pdm.identity import Identity
from p2pdm.transport import (
    AdmissionControl,
    Connection,
    ConnectionClosed,
    TokenBucket,
    TransportLimits,
    backoff_delay,
    parse_address,
    run_handshake,
)

LIMITS = TransportLimits(handshake_timeout=5.0)


async def connected_pair(
    limits: TransportLimits = LIMITS,
) -> tuple[Connection, Connection, Identity, Identity]:
    alice, bob = Identity.generate(), Identity.generate()
    left, right = trio.testing.memory_stream_pair()
    results: dict[str, Connection] = {}

    async def side(name: str, ident: Identity, stream: trio.abc.Stream, initiator: bool) -> None:
        results[name] = await run_handshake(
            stream,
            ident,
            NoiseStatic.generate(ident),
            initiator=initiator,
            remote="memory",
            limits=limits,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", alice, left, True)
        nursery.start_soon(side, "b", bob, right, False)
    return results["a"], results["b"], alice, bob


async def test_handshake_over_a_stream_then_frames_both_ways() -> None:
    with trio.fail_after(10):
        a, b, alice, bob = await connected_pair()
        assert a.peer == bob.node_id
        assert b.peer == alice.node_id
        assert a.initiator
        assert not b.initiator
        for i in range(20):
            await a.send(b"x" * i)
            assert await b.receive() == b"x" * i
        await b.send(b"back")
        assert await a.receive() == b"back"


async def test_peer_closing_is_connection_closed() -> None:
    with trio.fail_after(10):
        a, b, _, _ = await connected_pair()
        await a.aclose()
        with pytest.raises(ConnectionClosed):
            await b.receive()


async def test_corrupted_frame_is_a_transport_error() -> None:
    with trio.fail_after(10):
        alice, bob = Identity.generate(), Identity.generate()
        left, right = trio.testing.memory_stream_pair()
        conns: dict[str, Connection] = {}

        async def side(name: str, ident: Identity, s: trio.abc.Stream, init: bool) -> None:
            conns[name] = await run_handshake(
                s, ident, NoiseStatic.generate(ident), initiator=init, remote="m", limits=LIMITS
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "a", alice, left, True)
            nursery.start_soon(side, "b", bob, right, False)
        await left.send_all(wire.encode_frame(b"\x00" * 40))
        with pytest.raises(TransportError):
            await conns["b"].receive()


async def test_silent_peer_hits_the_handshake_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bob = Identity.generate()
    _left, right = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(HandshakeError, match="not finished within 5 s"):
        await run_handshake(
            right, bob, NoiseStatic.generate(bob), initiator=False, remote="m", limits=LIMITS
        )
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_half_handshake_then_silence_hits_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The dialler sends message 1 and stops: the responder gives up, bounded."""
    from p2pdm.handshake import Handshake

    alice, bob = Identity.generate(), Identity.generate()
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(wire.encode_frame(Handshake(alice, initiator=True).start()))
    with pytest.raises(HandshakeError, match="not finished"):
        await run_handshake(
            right, bob, NoiseStatic.generate(bob), initiator=False, remote="m", limits=LIMITS
        )


async def test_garbage_instead_of_a_handshake() -> None:
    bob = Identity.generate()
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(b"\x00\x10" + b"GET / HTTP/1.1\r\n")
    with trio.fail_after(5), pytest.raises(HandshakeError):
        await run_handshake(
            right, bob, NoiseStatic.generate(bob), initiator=False, remote="m", limits=LIMITS
        )


async def test_frame_rate_budget_throttles_instead_of_buffering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = TransportLimits(frame_rate=10.0, frame_burst=5.0)
    a, b, _, _ = await connected_pair(limits)
    start = trio.current_time()
    for _ in range(25):
        await a.send(b"f")
        await b.receive()
    # 5 frames of burst, then 20 more at 10/s: about 2 s of (virtual) time.
    assert trio.current_time() - start == pytest.approx(2.0, abs=0.2)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert bucket.full(10.0)


async def test_admission_limits_per_source_and_half_open() -> None:
    control = AdmissionControl(
        TransportLimits(handshake_rate=1.0, handshake_burst=2.0, max_half_open=3)
    )
    assert control.admit("10.0.0.1", 0.0) is None
    assert control.admit("10.0.0.1", 0.0) is None
    refusal = control.admit("10.0.0.1", 0.0)
    assert refusal is not None
    assert "10.0.0.1" in refusal
    assert control.admit("10.0.0.2", 0.0) is None  # others are unaffected
    assert control.admit("10.0.0.1", 1.0) is None  # refilled
    scopes = [trio.CancelScope() for _ in range(3)]
    keys = [control.started(5.0 + i / 10, scope) for i, scope in enumerate(scopes)]
    assert control.half_open == 3
    assert "in progress" in (control.admit("10.0.0.3", 5.5) or "")
    # Past the grace, a newcomer ends the oldest handshake to take its slot...
    assert control.admit("10.0.0.4", 6.0 + TransportLimits().half_open_grace) is None
    assert [s.cancel_called for s in scopes] == [True, False, False]
    assert control.half_open == 2
    control.finished(keys[0])  # its task ends after being cancelled: no effect
    assert control.half_open == 2


async def test_a_newcomer_refused_anyway_ends_no_handshake() -> None:
    control = AdmissionControl(
        TransportLimits(handshake_rate=0.001, handshake_burst=1.0, max_half_open=1)
    )
    assert control.admit("10.0.0.1", 0.0) is None
    scope = trio.CancelScope()
    control.started(0.0, scope)
    assert "10.0.0.1" in (control.admit("10.0.0.1", 100.0) or "")
    assert not scope.cancel_called
    # Nor one refused at the connection cap.
    assert "connection limit" in (control.admit("10.0.0.2", 100.0, connections=256) or "")
    assert not scope.cancel_called
    assert control.admit("10.0.0.2", 100.0, connections=255) is None
    assert scope.cancel_called


def test_admission_table_is_bounded() -> None:
    control = AdmissionControl(TransportLimits(), max_buckets=10)
    for i in range(1000):
        control.admit(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(control._buckets) <= 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7707", ("127.0.0.1", 7707)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("example.org", ("example.org", 7707)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, 7707) == expected


@pytest.mark.parametrize("text", ["", ":80", "host:99999", "host:x", "[::1", "host"])
def test_parse_address_errors(text: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        parse_address(text)


def test_backoff_grows_caps_and_jitters() -> None:
    delays = [backoff_delay(n, base=0.5, cap=60, jitter=0.0) for n in range(10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 60
    assert backoff_delay(3, base=0.5, cap=60, jitter=0.999) == pytest.approx(4.0 * 0.5005)


async def test_unsupported_version_gets_a_clear_refusal_over_the_stream() -> None:
    from p2pdm.handshake import Handshake, PeerRefused

    alice, bob = Identity.generate(), Identity.generate()
    left, right = trio.testing.memory_stream_pair()
    future = Handshake(alice, initiator=True, versions=[9])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def responder() -> None:
                with pytest.raises(HandshakeError, match="no common protocol version"):
                    await run_handshake(
                        right,
                        bob,
                        NoiseStatic.generate(bob),
                        initiator=False,
                        remote="m",
                        limits=LIMITS,
                    )

            nursery.start_soon(responder)
            await left.send_all(wire.encode_frame(future.start()))
            reader = wire.FrameReader()
            while not (frames := list(reader.frames())):
                reader.feed(await left.receive_some(65536))
            with pytest.raises(PeerRefused, match="this node speaks \\[1\\]"):
                future.receive(frames[0])


def test_limits_can_be_overridden_by_name() -> None:
    from p2pdm.transport import limits_with

    limits = limits_with({"handshake_timeout": "2.5", "max_connections": 10})
    assert limits.handshake_timeout == 2.5
    assert limits.max_connections == 10
    assert limits.idle_timeout == TransportLimits().idle_timeout
    with pytest.raises(ValueError, match="unknown limit 'handshake'"):
        limits_with({"handshake": 1})
    with pytest.raises(ValueError, match="positive number"):
        limits_with({"idle_timeout": -1})
    with pytest.raises(ValueError, match="must be a number"):
        limits_with({"idle_timeout": "soon"})
    with pytest.raises(ValueError, match="whole number"):
        limits_with({"max_connections": 2.5})
