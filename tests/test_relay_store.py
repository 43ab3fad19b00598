"""The store's relay role: envelopes held for others, quotas, delivery records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from p2pdm import envelope
from p2pdm.envelope import MessageKind
from p2pdm.identity import Identity, NodeId
from p2pdm.store import RelayQuota, RelayResult, Store

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

NOW = 1_800_000_000_000
DAY = 86_400_000
LATER = NOW + DAY
RELAY_QUOTA = RelayQuota()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "node.db") as s:
        yield s


@pytest.fixture(scope="module")
def people() -> tuple[Identity, Identity, Identity, Identity]:
    """Sender, recipient, and two uploading peers."""
    return Identity.generate(), Identity.generate(), Identity.generate(), Identity.generate()


@dataclass(frozen=True)
class Sealed:
    message_id: bytes
    recipient: NodeId
    expires_ms: int
    raw: bytes


def sealed_for(sender: Identity, to: Identity, text: str, exp: int = LATER) -> Sealed:
    data = envelope.seal(
        sender, to.node_id, MessageKind.TEXT, text, timestamp_ms=NOW, expires_ms=exp
    )
    outer = envelope.parse_outer(data)
    return Sealed(outer.message_id, outer.recipient, outer.expires_ms, data)


def hold(
    db: Store, outer: Sealed, uploader: Identity, quota: RelayQuota = RELAY_QUOTA
) -> RelayResult:
    verdict = db.accept_relay(
        outer.message_id, outer.recipient, outer.expires_ms, outer.raw, uploader.node_id, NOW, quota
    )
    return verdict.result


def test_an_envelope_is_held_once_and_counted(db: Store, people: tuple[Identity, ...]) -> None:
    a, b, up, _ = people
    outer = sealed_for(a, b, "one")
    assert hold(db, outer, up) is RelayResult.STORED
    assert hold(db, outer, up) is RelayResult.DUPLICATE
    assert db.relay_usage() == (1, len(outer.raw))
    assert db.relay_usage(up.node_id) == (1, len(outer.raw))
    [row] = db.relay_for(b.node_id, NOW)
    assert row.envelope == outer.raw
    assert row.uploader == up.node_id
    assert db.relay_ids(NOW) == [outer.message_id]
    assert db.relay_recipients(NOW) == [b.node_id]


def test_a_peer_past_its_quota_is_refused_and_others_still_accepted(
    db: Store, people: tuple[Identity, ...]
) -> None:
    a, b, greedy, other = people
    first = sealed_for(a, b, "x" * 100)
    quota = RelayQuota(max_peer_bytes=len(first.raw) + 50, max_total_bytes=10 << 20)
    assert hold(db, first, greedy, quota) is RelayResult.STORED
    second = sealed_for(a, b, "y" * 100)
    verdict = db.accept_relay(
        second.message_id, second.recipient, second.expires_ms, second.raw,
        greedy.node_id, NOW, quota,
    )  # fmt: skip
    assert verdict.result is RelayResult.REFUSED
    assert "quota for this peer is full" in verdict.reason
    assert hold(db, second, other, quota) is RelayResult.STORED
    assert db.relay_usage() == (2, len(first.raw) + len(second.raw))


def test_total_storage_ttl_size_and_expiry_limits_refuse_with_reasons(
    db: Store, people: tuple[Identity, ...]
) -> None:
    a, b, up, _ = people
    cases = [
        (sealed_for(a, b, "t"), RelayQuota(max_total_bytes=10), "relay storage is full"),
        (sealed_for(a, b, "s" * 200), RelayQuota(max_envelope_bytes=100), "over this relay"),
        (sealed_for(a, b, "l", exp=NOW + 8 * DAY + 1), RelayQuota(), "beyond this relay's limit"),
        (sealed_for(a, b, "e", exp=NOW - 1), RelayQuota(), "expired"),
    ]
    for outer, quota, why in cases:
        verdict = db.accept_relay(
            outer.message_id, outer.recipient, outer.expires_ms, outer.raw,
            up.node_id, NOW, quota,
        )  # fmt: skip
        assert verdict.result is RelayResult.REFUSED
        assert why in verdict.reason
    assert db.relay_usage() == (0, 0)


def test_a_sender_whose_clock_runs_ahead_can_still_use_the_relay(
    db: Store, people: tuple[Identity, ...]
) -> None:
    """A 7-day message from a clock an hour ahead expires 7 days and an hour
    from now by ours; a relay with the default 7-day limit still takes it,
    and holds it for its 7 days."""
    a, b, up, _ = people
    ahead = sealed_for(a, b, "from a fast clock", exp=NOW + 7 * DAY + 3600_000)
    assert hold(db, ahead, up) is RelayResult.STORED
    assert [r.message_id for r in db.relay_for(b.node_id, NOW + 7 * DAY - 1)] == [ahead.message_id]
    assert db.relay_for(b.node_id, NOW + 7 * DAY) == []
    # A relay with a short limit allows no more skew than the limit itself.
    half_day = RelayQuota(max_ttl_ms=DAY // 2)
    for exp, taken in ((NOW + DAY, True), (NOW + DAY + 1, False)):
        outer = sealed_for(a, b, f"exp {exp}", exp=exp)
        verdict = db.accept_relay(
            outer.message_id, outer.recipient, outer.expires_ms, outer.raw,
            up.node_id, NOW, half_day,
        )  # fmt: skip
        assert (verdict.result is RelayResult.STORED) == taken


def test_delivery_drops_only_copies_for_the_signer_and_later_copies_are_refused(
    db: Store, people: tuple[Identity, ...]
) -> None:
    a, b, up, mallory = people
    outer = sealed_for(a, b, "for b")
    assert hold(db, outer, up) is RelayResult.STORED
    # Someone else claiming delivery of b's mail deletes nothing.
    assert db.note_delivered([outer.message_id], mallory.node_id, NOW, b"forged") == []
    assert db.relay_usage() == (1, len(outer.raw))
    assert db.notices_for([outer.message_id]) == []
    # b's own notice drops the copy and is kept to pass on.
    assert db.note_delivered([outer.message_id], b.node_id, NOW, b"notice") == [outer.message_id]
    assert db.relay_usage() == (0, 0)
    assert db.relay_for(b.node_id, NOW) == []
    assert db.notices_for([outer.message_id]) == [b"notice"]
    verdict = db.accept_relay(
        outer.message_id, outer.recipient, outer.expires_ms, outer.raw,
        up.node_id, NOW, RelayQuota(),
    )  # fmt: skip
    assert verdict.result is RelayResult.DELIVERED
    assert verdict.notice == b"notice"


def test_expired_envelopes_are_purged_and_usage_follows(
    db: Store, people: tuple[Identity, ...]
) -> None:
    a, b, up, _ = people
    soon = sealed_for(a, b, "soon", exp=NOW + 1000)
    late = sealed_for(a, b, "late")
    assert hold(db, soon, up) is RelayResult.STORED
    assert hold(db, late, up) is RelayResult.STORED
    assert db.relay_ids(NOW + 1000) == [late.message_id]
    assert db.purge_relay(NOW + 1000) == 1
    assert db.relay_usage() == (1, len(late.raw))
    assert db.relay_usage(up.node_id) == (1, len(late.raw))


def test_usage_survives_a_reopen(tmp_path: Path, people: tuple[Identity, ...]) -> None:
    a, b, up, _ = people
    outer = sealed_for(a, b, "kept")
    with Store.open(tmp_path / "n.db") as s:
        assert hold(s, outer, up) is RelayResult.STORED
    with Store.open(tmp_path / "n.db") as s:
        assert s.relay_usage() == (1, len(outer.raw))
        assert [r.message_id for r in s.relay_for(b.node_id, NOW)] == [outer.message_id]


def test_a_notice_for_our_own_mail_is_kept_only_if_relays_hold_copies(
    db: Store, people: tuple[Identity, ...]
) -> None:
    a, b, relay, _ = people
    direct, handed = sealed_for(a, b, "direct"), sealed_for(a, b, "handed")
    for s in (direct, handed):
        assert db.enqueue(
            message_id=s.message_id,
            recipient=s.recipient,
            envelope=s.raw,
            kind=MessageKind.TEXT,
            body="x",
            now_ms=NOW,
            expires_ms=s.expires_ms,
        )
    db.mark_sent(handed.message_id, NOW, relay=relay.node_id)
    recorded = db.note_delivered([direct.message_id, handed.message_id], b.node_id, NOW, b"n")
    # Nothing to pass on for the message no relay holds: no work, no record.
    assert recorded == [handed.message_id]
    assert db.notices_for([direct.message_id]) == []
    assert db.notices_for([handed.message_id]) == [b"n"]
