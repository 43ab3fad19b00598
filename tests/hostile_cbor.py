"""Hostile CBOR inputs: what cbor2's lenient defaults would accept or choke on.

Shared by tests/test_wire.py (each must be refused) and
scripts/bench_crypto.py (which times each refusal).
"""

from __future__ import annotations

import cbor2


def _dag_bomb() -> bytes:
    # Each level shares the previous one twice: ~150 bytes that a naive
    # walker expands into 2^40 nodes.
    node: list[object] = []
    for _ in range(40):
        node = [node, node]
    return bytes(cbor2.dumps(node, value_sharing=True))


def _cycle() -> bytes:
    loop: list[object] = []
    loop.append(loop)
    return bytes(cbor2.dumps(loop, value_sharing=True))


HOSTILE: dict[str, bytes] = {
    "trailing bytes": bytes.fromhex("0102"),
    "trailing garbage after map": bytes.fromhex("a0ffffffff"),
    "duplicate map keys": bytes.fromhex("a2616101616102"),
    "duplicate int keys": bytes.fromhex("a2010001ff"),
    "map keys out of canonical order": bytes.fromhex("a2616201616101"),
    "unknown tag": bytes.fromhex("d9ffff00"),
    "shared reference cycle (tags 28/29)": _cycle(),
    "shared reference DAG bomb (tags 28/29)": _dag_bomb(),
    "string references (tags 25/256)": bytes(
        cbor2.dumps(["abcdef", "abcdef", "abcdef"], string_referencing=True)
    ),
    "regular expression (tag 35)": bytes.fromhex("d823") + bytes(cbor2.dumps("(a+)+$")),
    "MIME message (tag 36)": bytes.fromhex("d824") + bytes(cbor2.dumps("Subject: x\n\nhi")),
    "bignum (tag 2)": bytes.fromhex("c249010000000000000000"),
    "datetime (tag 0)": bytes.fromhex("c074323031332d30332d32315432303a30343a30305a"),
    "self-describe tag": bytes.fromhex("d9d9f7a0"),
    "run of empty arrays": b"\x99\xea\x60" + b"\x80" * 60000,
    "run of empty maps": b"\x99\xea\x60" + b"\xa0" * 60000,
    "array of 2^32 items in 9 bytes": bytes.fromhex("9b0000000100000000"),
    "byte string of 2^64-1 bytes": bytes.fromhex("5bffffffffffffffff"),
    "map of 2^32 entries": bytes.fromhex("bb0000000100000000"),
    "indefinite array": bytes.fromhex("9f01ff"),
    "indefinite map": bytes.fromhex("bf616101ff"),
    "indefinite byte string": bytes.fromhex("5f4101ff"),
    "indefinite text": bytes.fromhex("7f6161ff"),
    "half float": bytes.fromhex("f93c00"),
    "double float": bytes.fromhex("fb3ff0000000000000"),
    "undefined": bytes.fromhex("f7"),
    "simple value 255": bytes.fromhex("f8ff"),
    "non-canonical integer": bytes.fromhex("1805"),
    "non-canonical length": bytes.fromhex("580141"),
    "reserved additional info": bytes.fromhex("1c"),
    "deep nesting": b"\x81" * 10000 + b"\x00",
    "invalid utf-8": bytes.fromhex("62fffe"),
    "byte string map key": bytes.fromhex("a14100f6"),
    "array map key": bytes.fromhex("a180f6"),
    "oversized document": b"\x5a\x00\x01\x11\x70" + b"\x00" * 70000,
    "truncated": bytes.fromhex("8301"),
    "empty input": b"",
}
