"""Peer records: where a node says it can be reached, signed by that node (pure functions).

A record is the only address claim a node trusts from a third party: peer
exchange passes records on unchanged, and a record is accepted only with a
valid signature by the node it describes and a higher sequence number than
the one already held. So nobody can point another node's id at their own
address, or replay an old record to undo a newer one.

Wire form (deterministic CBOR), carried as a byte string in a PEERS frame:

    {"rec": bytes, "sig": bytes .size 64}
    rec = {"id": bytes .size 32, "addrs": [text], "seq": uint, "ts": uint}

`sig` is Ed25519 by `id` over RECORD_CONTEXT + rec. Addresses are IP
literals with a port ("192.0.2.7:7707", "[2001:db8::7]:7707"), never names,
so a record cannot make a node resolve anything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pdm import wire
from p2pdm.identity import PUBLIC_KEY_LEN, SIGNATURE_LEN, BadSignature, NodeId
from p2pdm.transport import format_address, parse_address

if TYPE_CHECKING:
    from collections.abc import Iterable

    from p2pdm.identity import Identity

RECORD_CONTEXT = b"p2pdm-peer-record:"
MAX_RECORD_ADDRESSES = 8
MAX_ADDRESS_TEXT = 47  # "[" + longest IPv6 text (39) + "]:" + 5 digits
MAX_RECORD_SIZE = 1024
MAX_SEQ = (1 << 63) - 1
# A record stamped further ahead than this is refused (clocks drift, not by days).
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000


class PeerRecordError(ValueError):
    """A record that must not be used; the message says why."""


@dataclass(frozen=True)
class PeerRecord:
    node_id: NodeId
    addresses: tuple[tuple[str, int], ...]
    seq: int
    timestamp_ms: int
    data: bytes
    """The exact wire bytes, passed on unchanged by peer exchange."""

    @classmethod
    def create(
        cls,
        identity: Identity,
        addresses: Iterable[tuple[str, int]],
        seq: int,
        timestamp_ms: int,
    ) -> PeerRecord:
        """Sign a record for our own node; ValueError for what a record cannot carry."""
        addrs = [_check_address(format_address(h, p)) for h, p in addresses]
        if len(addrs) > MAX_RECORD_ADDRESSES:
            raise ValueError(f"a record holds at most {MAX_RECORD_ADDRESSES} addresses")
        if not 0 <= seq <= MAX_SEQ or timestamp_ms < 0:
            raise ValueError("seq and timestamp must be non-negative 63-bit integers")
        addr_values: list[wire.Value] = list(addrs)
        rec = wire.encode(
            {
                "id": identity.node_id.public_key,
                "addrs": addr_values,
                "seq": seq,
                "ts": timestamp_ms,
            }
        )
        data = wire.encode({"rec": rec, "sig": identity.sign(RECORD_CONTEXT + rec)})
        return parse_record(data, now_ms=timestamp_ms)


def parse_record(data: bytes, *, now_ms: int) -> PeerRecord:
    """Check a record's form and signature; PeerRecordError says what is wrong."""
    if len(data) > MAX_RECORD_SIZE:
        raise PeerRecordError(f"record is {len(data)} bytes, over {MAX_RECORD_SIZE}")
    try:
        outer = wire.as_map(wire.decode(data, max_depth=1), "record", required={"rec", "sig"})
        rec = wire.field_bytes(outer, "rec", "record", max_size=MAX_RECORD_SIZE)
        sig = wire.field_bytes(outer, "sig", "record", size=SIGNATURE_LEN)
        fields = wire.as_map(
            wire.decode(rec, max_depth=2), "record", required={"id", "addrs", "seq", "ts"}
        )
        key = wire.field_bytes(fields, "id", "record", size=PUBLIC_KEY_LEN)
        seq = wire.field_int(fields, "seq", "record", lo=0, hi=MAX_SEQ)
        ts = wire.field_int(fields, "ts", "record", lo=0, hi=MAX_SEQ)
        addrs = fields["addrs"]
    except wire.WireError as exc:
        raise PeerRecordError(f"malformed peer record: {exc}") from None
    if not isinstance(addrs, list) or len(addrs) > MAX_RECORD_ADDRESSES:
        raise PeerRecordError(f"record.addrs must be a list of at most {MAX_RECORD_ADDRESSES}")
    addresses = []
    for text in addrs:
        if not isinstance(text, str):
            raise PeerRecordError("record.addrs holds texts")
        try:
            addresses.append(parse_address(_check_address(text)))
        except ValueError as exc:
            raise PeerRecordError(f"record address: {exc}") from None
    try:
        node_id = NodeId(key)
        node_id.verify(RECORD_CONTEXT + rec, sig)
    except BadSignature:
        raise PeerRecordError("record signature does not verify") from None
    except ValueError as exc:
        raise PeerRecordError(f"record id: {exc}") from None
    if ts > now_ms + MAX_FUTURE_SKEW_MS:
        raise PeerRecordError("record is stamped more than 24 h in the future")
    return PeerRecord(node_id, tuple(addresses), seq, ts, bytes(data))


def _check_address(text: str) -> str:
    """An IP literal and a port 1..65535, in the one text form format_address gives."""
    if len(text) > MAX_ADDRESS_TEXT:
        raise PeerRecordError(f"address {text[:MAX_ADDRESS_TEXT]!r}... is too long")
    try:
        host, port = parse_address(text)
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise PeerRecordError(f"address {text!r} is not IP:PORT: {exc}") from None
    if not 1 <= port <= 65535:
        raise PeerRecordError(f"address {text!r}: port must be 1..65535")
    if ip.is_unspecified or ip.is_multicast:
        raise PeerRecordError(f"address {text!r} cannot be dialled")
    canonical = format_address(str(ip), port)
    if canonical != text:
        raise PeerRecordError(f"address {text!r} is not in canonical form ({canonical!r})")
    return text


def usable_from(record: PeerRecord, *, via_loopback: bool) -> tuple[tuple[str, int], ...]:
    """The record's addresses worth dialling for a node that received it.

    A loopback address names the host it was said on: it is only meaningful
    when the record came over a loopback connection (nodes on one machine),
    and anywhere else it would aim dials at the receiver's own services.
    """
    if via_loopback:
        return record.addresses
    return tuple((h, p) for h, p in record.addresses if not ipaddress.ip_address(h).is_loopback)
