"""Delivery notices: a recipient's signed word that it holds some messages (pure functions).

A relay holding copies of a message drops them when the message's
recipient says it has it. Anyone can learn message ids (every relay sees
them), so the word must be the recipient's own: a notice is signed by the
recipient, and a relay drops only copies whose outer envelope names the
signer as recipient. Notices travel unchanged from relay to relay, like
peer records.

Wire form (deterministic CBOR), carried as a byte string in a NOTICE frame:

    {"notice": bytes, "sig": bytes .size 64}
    notice = {"by": bytes .size 32, "ids": [bytes .size 32], "ts": uint}

`sig` is Ed25519 by `by` over NOTICE_CONTEXT + notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pdm import wire
from p2pdm.envelope import MESSAGE_ID_LEN
from p2pdm.identity import PUBLIC_KEY_LEN, SIGNATURE_LEN, BadSignature, NodeId

if TYPE_CHECKING:
    from collections.abc import Sequence

    from p2pdm.identity import Identity

NOTICE_CONTEXT = b"p2pdm-delivery-notice:"
MAX_NOTICE_IDS = 256
# 256 ids of 33 bytes, the key, the stamp and the signature, with room to spare.
MAX_NOTICE_SIZE = 16 * 1024
MAX_TS = (1 << 63) - 1


class NoticeError(ValueError):
    """A notice that must not be used; the message says why."""


@dataclass(frozen=True)
class DeliveryNotice:
    recipient: NodeId
    message_ids: tuple[bytes, ...]
    timestamp_ms: int
    data: bytes
    """The exact wire bytes, passed on unchanged."""

    @classmethod
    def create(
        cls, identity: Identity, message_ids: Sequence[bytes], timestamp_ms: int
    ) -> DeliveryNotice:
        """Sign a notice for messages we (the recipient) hold."""
        ids = list(dict.fromkeys(message_ids))
        if not 0 < len(ids) <= MAX_NOTICE_IDS:
            raise ValueError(f"a notice lists 1 to {MAX_NOTICE_IDS} message ids")
        if any(not isinstance(i, bytes) or len(i) != MESSAGE_ID_LEN for i in ids):
            raise ValueError(f"message ids are {MESSAGE_ID_LEN} bytes")
        if not 0 <= timestamp_ms <= MAX_TS:
            raise ValueError("timestamp must be a non-negative 63-bit integer")
        id_values: list[wire.Value] = list(ids)
        body = wire.encode(
            {"by": identity.node_id.public_key, "ids": id_values, "ts": timestamp_ms}
        )
        data = wire.encode({"notice": body, "sig": identity.sign(NOTICE_CONTEXT + body)})
        return parse_notice(data)


def parse_notice(data: bytes) -> DeliveryNotice:
    """Check a notice's form and signature; NoticeError says what is wrong."""
    if not isinstance(data, bytes) or len(data) > MAX_NOTICE_SIZE:
        raise NoticeError(f"a notice is bytes of at most {MAX_NOTICE_SIZE}")
    try:
        outer = wire.as_map(wire.decode(data, max_depth=1), "notice", required={"notice", "sig"})
        body = wire.field_bytes(outer, "notice", "notice", max_size=MAX_NOTICE_SIZE)
        sig = wire.field_bytes(outer, "sig", "notice", size=SIGNATURE_LEN)
        fields = wire.as_map(wire.decode(body, max_depth=2), "notice", required={"by", "ids", "ts"})
        key = wire.field_bytes(fields, "by", "notice", size=PUBLIC_KEY_LEN)
        ts = wire.field_int(fields, "ts", "notice", lo=0, hi=MAX_TS)
        ids = fields["ids"]
    except wire.WireError as exc:
        raise NoticeError(f"malformed delivery notice: {exc}") from None
    if not isinstance(ids, list) or not 0 < len(ids) <= MAX_NOTICE_IDS:
        raise NoticeError(f"notice.ids must list 1 to {MAX_NOTICE_IDS} message ids")
    message_ids = tuple(i for i in ids if isinstance(i, bytes) and len(i) == MESSAGE_ID_LEN)
    if len(message_ids) != len(ids):
        raise NoticeError(f"notice.ids holds {MESSAGE_ID_LEN}-byte message ids")
    try:
        recipient = NodeId(key)
        recipient.verify(NOTICE_CONTEXT + body, sig)
    except BadSignature:
        raise NoticeError("notice signature does not verify") from None
    except ValueError as exc:
        raise NoticeError(f"notice signer: {exc}") from None
    return DeliveryNotice(recipient, message_ids, ts, bytes(data))
