"""Delivery notices: only the recipient's signature counts; malformed ones are refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from p2pdm import wire
from p2pdm.notice import (
    MAX_NOTICE_IDS,
    NOTICE_CONTEXT,
    DeliveryNotice,
    NoticeError,
    parse_notice,
)

if TYPE_CHECKING:
    from p2pdm.identity import Identity

NOW = 1_700_000_000_000
IDS = [bytes([i]) * 32 for i in range(3)]


def signed_by(signer: Identity, body: dict[str, wire.Value]) -> bytes:
    inner = wire.encode(body)
    return wire.encode({"notice": inner, "sig": signer.sign(NOTICE_CONTEXT + inner)})


def test_a_notice_round_trips(bob: Identity) -> None:
    notice = DeliveryNotice.create(bob, IDS + IDS[:1], NOW)
    assert notice.recipient == bob.node_id
    assert notice.message_ids == tuple(IDS)  # repeats left out
    assert parse_notice(notice.data) == notice


def test_a_notice_signed_by_someone_else_is_refused(alice: Identity, bob: Identity) -> None:
    ids: list[wire.Value] = list(IDS)
    forged = signed_by(alice, {"by": bob.node_id.public_key, "ids": ids, "ts": NOW})
    with pytest.raises(NoticeError, match="signature does not verify"):
        parse_notice(forged)


def test_every_flipped_byte_is_refused(bob: Identity) -> None:
    data = DeliveryNotice.create(bob, IDS[:1], NOW).data
    for i in range(len(data)):
        flipped = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
        with pytest.raises(NoticeError):
            parse_notice(flipped)


@pytest.mark.parametrize(
    ("ids", "why"),
    [
        ([], "1 to 256"),
        ([b"short"], "32-byte"),
        (["text"], "32-byte"),
        ([i.to_bytes(32, "big") for i in range(MAX_NOTICE_IDS + 1)], "1 to 256"),
    ],
)
def test_bad_id_lists_are_refused(bob: Identity, ids: list[wire.Value], why: str) -> None:
    data = signed_by(bob, {"by": bob.node_id.public_key, "ids": ids, "ts": NOW})
    with pytest.raises(NoticeError, match=why):
        parse_notice(data)
    with pytest.raises(ValueError, match="message ids"):
        DeliveryNotice.create(bob, ids, NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data", [b"", b"\xa0", wire.encode({"notice": b"x", "sig": bytes(64)}), bytes(20_000)]
)
def test_malformed_notices_are_refused(data: bytes) -> None:
    with pytest.raises(NoticeError):
        parse_notice(data)
