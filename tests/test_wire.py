from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import TYPE_CHECKING

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from p2pdm import wire
from p2pdm.envelope import MessageKind
from p2pdm.wire import MAX_DEPTH, MAX_INT, MIN_INT, WireError, WireUsageError

from .hostile_cbor import HOSTILE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

keys = st.one_of(st.integers(MIN_INT, MAX_INT), st.text(max_size=20))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(MIN_INT, MAX_INT),
    st.binary(max_size=64),
    st.text(max_size=64),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=40,
)


def depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((max(depth(k), depth(x)) for k, x in v.items()), default=0)
    return 0


def same(a: object, b: object) -> bool:
    """Equality that also tells bool from int (True == 1 in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(values)
def test_round_trip_every_schema_value(value: wire.Value) -> None:
    assume(depth(value) <= MAX_DEPTH)
    encoded = wire.encode(value)
    assert same(wire.decode(encoded), value)
    # cbor2 reads our bytes back the same, and encoding is deterministic.
    assert same(cbor2.loads(encoded), value)
    assert wire.encode(wire.decode(encoded)) == encoded


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        value = wire.decode(data)
    except WireError:
        return
    # Whatever is accepted is canonical: it re-encodes to the same bytes.
    assert wire.encode(value) == data


@settings(max_examples=500, deadline=None)
@given(values, st.data())
def test_mutated_documents_raise_only_wire_error(value: wire.Value, data: st.DataObject) -> None:
    assume(depth(value) <= MAX_DEPTH)
    encoded = bytearray(wire.encode(value))
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        try:
            decoded = wire.decode(candidate)
        except WireError:
            continue
        assert wire.encode(decoded) == candidate


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_corpus_is_refused_cheaply(name: str) -> None:
    data = HOSTILE[name]
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    tracemalloc.start()
    sys.setprofile(count)
    try:
        with pytest.raises(WireError):
            wire.decode(data)
    finally:
        sys.setprofile(None)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # Deterministic work bounds instead of wall-clock ones: refusing costs a
    # bounded number of calls and no allocation proportional to a claim.
    # (scripts/bench_crypto.py prints the time each item takes.)
    assert calls <= 8 * wire.MAX_ITEMS, f"{name}: {calls} calls"
    assert peak <= 2 * len(data) + 2 * 1024 * 1024, f"{name}: peak {peak} bytes"


def test_hostile_corpus_is_really_hostile_to_cbor2() -> None:
    # The corpus is not a straw man: cbor2's lenient defaults accept these.
    assert cbor2.loads(HOSTILE["trailing bytes"]) == 1
    assert cbor2.loads(HOSTILE["duplicate map keys"]) == {"a": 2}
    assert isinstance(cbor2.loads(HOSTILE["unknown tag"]), cbor2.CBORTag)
    bomb = cbor2.loads(HOSTILE["shared reference DAG bomb (tags 28/29)"])
    assert bomb[0] is bomb[1]


def test_declared_huge_array_allocates_nothing_large() -> None:
    # Garbage from earlier tests is collected first and not during the
    # measurement: finalizers run by a collection would count as our peak.
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="declares 4294967296 items"):
            wire.decode(bytes.fromhex("9b0000000100000000"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert peak < 16 * 1024


def test_errors_name_the_problem() -> None:
    with pytest.raises(WireError, match="trailing"):
        wire.decode(bytes.fromhex("0102"))
    with pytest.raises(WireError, match="duplicate map key"):
        wire.decode(HOSTILE["duplicate map keys"])
    with pytest.raises(WireError, match=r"tags are not allowed \(tag 28\)"):
        wire.decode(HOSTILE["shared reference cycle (tags 28/29)"])
    with pytest.raises(WireError, match="nesting too deep"):
        wire.decode(b"\x81" * (MAX_DEPTH + 1) + b"\x00")
    assert wire.decode(b"\x81" * MAX_DEPTH + b"\x00") is not None


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        ("00", 0),
        ("20", -1),
        ("1818", 24),
        ("1bffffffffffffffff", MAX_INT),
        ("3bffffffffffffffff", MIN_INT),
        ("60", ""),
        ("62c3a9", "é"),
        ("f4", None),  # false
        ("f5", None),  # true
        ("f6", None),  # null
        ("4100", None),  # bytes
        ("80", None),  # array
        ("a0", None),  # map
    ],
)
def test_map_keys_are_integers_or_text(key: str, accepted: wire.Key | None) -> None:
    data = bytes.fromhex("a1" + key + "00")
    if accepted is None:
        with pytest.raises(WireError, match="map keys must be integers or text"):
            wire.decode(data)
    else:
        assert same(wire.decode(data), {accepted: 0})


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (1.5, "float"),
        (2**64, "64 bits"),
        (-(2**64) - 1, "64 bits"),
        ((1, 2), "tuple"),
        ({b"k": 1}, "map keys"),
        ({True: 1}, "map keys"),
        ([[]] * 0 + [[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]], "deeper"),
        (b"x" * 70000, "over 65535"),
    ],
)
def test_encode_refuses_what_the_schema_cannot_carry(value: object, why: str) -> None:
    with pytest.raises(WireUsageError, match=why):
        wire.encode(value)  # type: ignore[arg-type]


def as_map_as_first_written(
    value: wire.Value, what: str, *, required: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, wire.Value]:
    """wire.as_map before its fast path for exactly the required fields."""
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a map")
    keys = set(value)
    missing = set(required) - keys
    if missing:
        raise WireError(f"{what} lacks field(s) {', '.join(sorted(missing))}")
    unknown = keys - set(required) - set(optional)
    if unknown:
        raise WireError(f"{what} has unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return {str(k): v for k, v in value.items()}


field_names = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(st.one_of(field_names, st.integers(0, 2), st.booleans()), st.integers()),
    st.sets(field_names),
    st.sets(field_names),
    st.sampled_from([set, frozenset, sorted, tuple]),
)
def test_as_map_decides_as_first_written(
    value: dict[wire.Key, wire.Value],
    required: set[str],
    optional: set[str],
    collection: Callable[[set[str]], Iterable[str]],
) -> None:
    def outcome(fn: Callable[..., dict[str, wire.Value]]) -> object:
        try:
            result = fn(value, "thing", required=collection(required), optional=optional)
        except WireError as exc:
            return str(exc)
        return [(type(k), k, v) for k, v in result.items()]

    assert outcome(wire.as_map) == outcome(as_map_as_first_written)


def check_as_first_written(value: object, depth: int = 0) -> None:
    """wire's _check_encodable before it checked plain leaves inline."""
    if depth > MAX_DEPTH:
        raise WireUsageError(f"value nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, bytes, str)):
        return
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise WireUsageError(f"integer {value} does not fit in 64 bits")
        return
    if isinstance(value, list):
        for item in value:
            check_as_first_written(item, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise WireUsageError(f"map keys are int or str, not {type(k).__name__}")
            check_as_first_written(k, depth + 1)
            check_as_first_written(v, depth + 1)
        return
    raise WireUsageError(f"{type(value).__name__} cannot be encoded (allowed: {wire._ALLOWED})")


# Valid and invalid leaves and keys, nested to around the depth limit.
any_leaves = st.one_of(
    scalars,
    st.sampled_from([MIN_INT - 1, MAX_INT + 1, 1.5, (1,), bytearray(b"x"), MessageKind.TEXT]),
)
any_keys = st.one_of(keys, st.sampled_from([True, None, b"k", MAX_INT + 1, MessageKind.TEXT]))


@st.composite
def nested_anything(draw: st.DrawFn) -> object:
    value = draw(
        st.recursive(
            any_leaves,
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(any_keys, inner, max_size=4)
            ),
            max_leaves=12,
        )
    )
    for _ in range(draw(st.sampled_from([0, 0, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH]))):
        value = draw(st.sampled_from([[value], {"k": value}, {1: value}]))
    return value


@settings(max_examples=400, deadline=None)
@given(nested_anything())
def test_encode_refuses_what_it_refused_as_first_written(value: object) -> None:
    def outcome(check: Callable[[], object]) -> str | None:
        try:
            check()
        except WireUsageError as exc:
            return str(exc)
        return None

    expected = outcome(lambda: check_as_first_written(value))
    assert outcome(lambda: wire.encode(value)) == expected  # type: ignore[arg-type]


def test_schema_helpers() -> None:
    m = wire.as_map({"a": 1, "b": b"xy"}, "thing", required={"a"}, optional={"b"})
    assert wire.field_int(m, "a", "thing", lo=0, hi=5) == 1
    assert wire.field_bytes(m, "b", "thing", size=2) == b"xy"
    with pytest.raises(WireError, match="thing lacks field"):
        wire.as_map({}, "thing", required={"a"})
    with pytest.raises(WireError, match="unknown field"):
        wire.as_map({"a": 1, "z": 2}, "thing", required={"a"})
    with pytest.raises(WireError, match="must be a map"):
        wire.as_map([1], "thing", required=())
    with pytest.raises(WireError, match=r"outside 0\.\.5"):
        wire.field_int({"a": 9}, "a", "thing", lo=0, hi=5)
    with pytest.raises(WireError, match="must be an integer"):
        wire.field_int({"a": True}, "a", "thing", lo=0, hi=5)
    with pytest.raises(WireError, match="must be 3 bytes"):
        wire.field_bytes({"b": b"xy"}, "b", "thing", size=3)
    with pytest.raises(WireError, match="over 3"):
        wire.field_text({"t": "abcd"}, "t", "thing", max_len=3)


# --- encode_fields: flat maps whose keys come in canonical order -------------

# Integer head boundaries (1, 2, 3, 5 and 9-byte forms), both signs.
INT_EDGES = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53 - 1, MAX_INT]
INT_EDGES += [-1 - n for n in INT_EDGES]
field_values = st.one_of(
    st.booleans(),
    st.sampled_from(INT_EDGES),
    st.integers(MIN_INT, MAX_INT),
    st.binary(max_size=300),
    values,
)


def canonical_order(keys: Iterable[str]) -> list[str]:
    """Shorter encoding first, then bytewise (what encode's cbor2 sort does)."""
    return sorted(keys, key=lambda k: (len(cbor2.dumps(k)), cbor2.dumps(k)))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), field_values, max_size=8), st.data())
def test_encode_fields_makes_the_bytes_encode_makes(
    fields: dict[str, wire.Value], data: st.DataObject
) -> None:
    def as_field(value: wire.Value) -> int | bytes | wire.Encoded:
        # ints and bytes either as they are or through encode_field: same bytes
        if isinstance(value, int | bytes) and data.draw(st.booleans()):
            return value
        return wire.encode_field(value)

    try:
        expected = wire.encode(fields)
    except WireUsageError:  # nested too deep
        with pytest.raises(WireUsageError):
            wire.encode_fields({k: as_field(fields[k]) for k in canonical_order(fields)})
        return
    assert wire.encode_fields({k: as_field(fields[k]) for k in canonical_order(fields)}) == expected


def test_encode_fields_at_every_length_boundary() -> None:
    for size in (0, 23, 24, 255, 256, 65000):
        fields: dict[str, wire.Value] = {"b": b"x" * size, "n": size, "t": "é" * (size // 8)}
        flat = {"b": b"x" * size, "n": size, "t": wire.encode_field("é" * (size // 8))}
        if size < 65000:
            assert wire.encode_fields(flat) == wire.encode(fields)
        else:  # the same limit as encode
            with pytest.raises(WireUsageError, match="over 65535"):
                wire.encode(fields)
            with pytest.raises(WireUsageError, match="over 65535"):
                wire.encode_fields(flat)


def test_encode_field_nests_one_level_below_the_map() -> None:
    for levels in range(MAX_DEPTH - 2, MAX_DEPTH + 2):
        value: wire.Value = 0
        for _ in range(levels):
            value = [value]
        try:
            expected = wire.encode({"k": value})
        except WireUsageError:
            with pytest.raises(WireUsageError, match="deeper"):
                wire.encode_field(value)
        else:
            assert wire.encode_fields({"k": wire.encode_field(value)}) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (1.5, "float"),
        (2**64, "64 bits"),
        (-(2**64) - 1, "64 bits"),
        (bytearray(b"x"), "bytearray"),
        ("text", "encode_field"),
        ([1], "encode_field"),
        (None, "encode_field"),
    ],
)
def test_encode_fields_refuses_what_is_not_a_flat_field(value: object, why: str) -> None:
    with pytest.raises(WireUsageError, match=why):
        wire.encode_fields({"k": value})  # type: ignore[dict-item]


# --- frames -----------------------------------------------------------------


def _feed_in_chunks(reader: wire.FrameReader, data: bytes, chunk: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
        out.extend(reader.frames())
    return out


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000, 200_000])
def test_frames_survive_any_split(chunk: int) -> None:
    payloads = [b"", b"a", b"hello" * 10, bytes(range(256)) * 10, b"z" * wire.MAX_FRAME_PAYLOAD]
    stream = b"".join(wire.encode_frame(p) for p in payloads)
    reader = wire.FrameReader()
    feed: Callable[[wire.FrameReader, bytes, int], list[bytes]] = _feed_in_chunks
    if chunk > wire.MAX_FRAME_BUFFER:
        chunk = wire.MAX_FRAME_BUFFER
    assert feed(reader, stream, chunk) == payloads
    assert reader.buffered == 0


def test_frame_payload_limit() -> None:
    with pytest.raises(WireUsageError, match="over 65535"):
        wire.encode_frame(b"x" * (wire.MAX_FRAME_PAYLOAD + 1))


def test_largest_declared_frame_is_bounded() -> None:
    # The biggest length a peer can declare is 65535: a reader waiting for
    # it holds one frame's worth, and refuses to be fed past its buffer.
    reader = wire.FrameReader()
    reader.feed(b"\xff\xff" + b"x" * 100)
    assert list(reader.frames()) == []
    reader.feed(b"x" * (wire.MAX_FRAME_PAYLOAD - 100))
    assert [len(f) for f in reader.frames()] == [wire.MAX_FRAME_PAYLOAD]
    reader.feed(b"\x00\x05" + b"y" * (wire.MAX_FRAME_BUFFER - 2))
    with pytest.raises(WireUsageError, match="drain"):
        reader.feed(b"y")
