"""mDNS discovery: the checks on what is heard (no network), then real mDNS between
hosts of a NetnsLab (root only; skipped with the reason elsewhere).

mDNS only ever runs inside namespaces these tests made: the probe
(tests/mdns_probe.py) is always started through the lab.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ifaddr
import pytest
import trio
import trio.testing
import zeroconf

from p2pdm.discovery.mdns import (
    MAX_ADDRESSES_PER_HINT,
    SERVICE_TYPE,
    DialHint,
    InvalidAnnouncement,
    MdnsDiscovery,
    MdnsError,
    hint_from_service_info,
    parse_versions,
    plan_interfaces,
)
from p2pdm.identity import Identity, NodeId
from tests.netns import LineReader, NetnsLab, netns_available

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

PROBE = str(Path(__file__).with_name("mdns_probe.py"))
# Each wait below is for one mDNS exchange on an idle virtual link: tens of
# milliseconds, after a registration's ~2 s of probing and announcing.
DEADLINE = 15.0


def new_id() -> NodeId:
    return Identity.generate().node_id


def record(
    instance: str,
    properties: dict[bytes, bytes | None],
    *,
    port: int | None = 7707,
    addresses: Sequence[str] = ("10.1.2.3",),
    type_: str = SERVICE_TYPE,
) -> zeroconf.ServiceInfo:
    """A record as a resolution would hand it over, made without any network."""
    return zeroconf.ServiceInfo(
        type_,
        f"{instance}.{type_}",
        port=port,
        properties=properties,
        addresses=[ipaddress.ip_address(a).packed for a in addresses],
    )


def good(node: NodeId, **kw: Any) -> zeroconf.ServiceInfo:
    return record(str(node), {b"id": str(node).encode(), b"v": b"1"}, **kw)


# --- what is heard: checked, never trusted ----------------------------------


def test_a_good_record_becomes_a_hint() -> None:
    node = new_id()
    hint = hint_from_service_info(
        record(
            str(node),
            {b"id": str(node).encode(), b"v": b"1,2", b"future": b"ignored"},
            addresses=["10.1.2.3", "2001:db8::7"],
        )
    )
    assert hint == DialHint(node, ("10.1.2.3:7707", "[2001:db8::7]:7707"), (1, 2))


def _typo(text: str) -> str:
    return text[:-1] + ("a" if text[-1] != "a" else "b")


# Each case: (instance name, TXT id) from a node's id text and another's.
ID_CASES: dict[str, tuple[Callable[[str, str], tuple[str, bytes]], str]] = {
    "garbage": (lambda me, other: ("not-a-node-id", b"not-a-node-id"), "not a node id"),
    "short": (lambda me, other: (me[:-1], me[:-1].encode()), "not a node id"),
    "typo": (lambda me, other: (_typo(me), _typo(me).encode()), "checksum"),
    "upper case": (lambda me, other: (me.upper(), me.upper().encode()), "canonical"),
    "not ascii": (lambda me, other: (me, b"\xff" * 56), "not a node id"),
    "mismatch": (lambda me, other: (other, me.encode()), "instance name differs"),
}


@pytest.mark.parametrize("case", ID_CASES)
def test_a_record_whose_id_is_wrong_is_rejected(case: str) -> None:
    make, reason = ID_CASES[case]
    instance, txt_id = make(str(new_id()), str(new_id()))
    with pytest.raises(InvalidAnnouncement, match=reason):
        hint_from_service_info(record(instance, {b"id": txt_id, b"v": b"1"}))


def test_a_record_without_id_or_versions_is_rejected() -> None:
    node = str(new_id())
    with pytest.raises(InvalidAnnouncement, match="no id"):
        hint_from_service_info(record(node, {b"v": b"1"}))
    with pytest.raises(InvalidAnnouncement, match="no id"):
        hint_from_service_info(record(node, {b"id": None, b"v": b"1"}))
    with pytest.raises(InvalidAnnouncement, match="no v"):
        hint_from_service_info(record(node, {b"id": node.encode()}))


@pytest.mark.parametrize(
    "raw",
    [b"", b"1,,2", b"x", b"-1", b"+1", b"65536", b"01", b"1.0", b"\xd9\xa1", b"123456",
     b",".join(str(v).encode() for v in range(17))],
)  # fmt: skip
def test_bad_versions_are_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidAnnouncement):
        parse_versions(raw)
    node = str(new_id())
    with pytest.raises(InvalidAnnouncement):
        hint_from_service_info(record(node, {b"id": node.encode(), b"v": raw}))


def test_versions_parse_in_order_without_repeats() -> None:
    assert parse_versions(b"3,1,3,65535,0") == (3, 1, 65535, 0)
    assert parse_versions(b",".join(str(v).encode() for v in range(16))) == tuple(range(16))


@pytest.mark.parametrize("port", [None, 0])
def test_a_record_without_a_port_is_rejected(port: int | None) -> None:
    with pytest.raises(InvalidAnnouncement, match="port"):
        hint_from_service_info(good(new_id(), port=port))


def test_a_record_from_another_service_type_is_rejected() -> None:
    with pytest.raises(InvalidAnnouncement, match="service type"):
        hint_from_service_info(good(new_id(), type_="_other._tcp.local."))


def test_addresses_no_peer_could_dial_are_left_out() -> None:
    node = new_id()
    hint = hint_from_service_info(
        good(
            node,
            addresses=[
                "127.0.0.1", "0.0.0.0", "224.0.0.251", "255.255.255.255", "10.0.0.9",
                "::1", "::", "fe80::1", "ff02::fb", "::ffff:10.0.0.8", "fd00::9",
                "169.254.3.4",
            ],
        )
    )  # fmt: skip
    assert hint.addresses == ("10.0.0.9:7707", "169.254.3.4:7707", "[fd00::9]:7707")
    with pytest.raises(InvalidAnnouncement, match="no usable address"):
        hint_from_service_info(good(node, addresses=["127.0.0.1", "fe80::1"]))
    with pytest.raises(InvalidAnnouncement, match="no usable address"):
        hint_from_service_info(good(node, addresses=[]))


def test_a_hint_carries_at_most_eight_addresses() -> None:
    many = [f"10.9.0.{i}" for i in range(1, 41)]
    hint = hint_from_service_info(good(new_id(), addresses=many))
    assert len(hint.addresses) == MAX_ADDRESSES_PER_HINT


# --- our own side: interfaces, arguments --------------------------------------


def adapter(name: str, index: int, *ips: str | tuple[str, int, int]) -> ifaddr.Adapter:
    return ifaddr.Adapter(name, name, [ifaddr.IP(ip, 24, name) for ip in ips], index=index)


ADAPTERS = [
    adapter("lo", 1, "127.0.0.1", ("::1", 0, 0)),
    adapter("eth0", 2, "192.168.1.5", ("fe80::5", 0, 2), ("2001:db8::5", 0, 0)),
    adapter("wlan0", 3, "10.0.0.5"),
]


def test_all_interfaces_means_every_address_but_loopback() -> None:
    bind, advertised = plan_interfaces("all", ADAPTERS)
    assert bind == ["192.168.1.5", "10.0.0.5"]
    assert [str(ip) for ip in advertised] == ["192.168.1.5", "10.0.0.5", "2001:db8::5"]


def test_named_interfaces_are_used_alone() -> None:
    bind, advertised = plan_interfaces(["wlan0"], ADAPTERS)
    assert bind == ["10.0.0.5"]
    assert [str(ip) for ip in advertised] == ["10.0.0.5"]


def test_unknown_or_addressless_interfaces_are_a_clear_error() -> None:
    with pytest.raises(MdnsError, match="no network interface named eth9"):
        plan_interfaces(["eth0", "eth9"], ADAPTERS)
    with pytest.raises(MdnsError, match="no IPv4 address"):
        plan_interfaces(["lo"], ADAPTERS)
    with pytest.raises(MdnsError, match="no IPv4 address"):
        plan_interfaces("all", ADAPTERS[:1])


def test_advertised_addresses_are_capped() -> None:
    crowded = [adapter(f"veth{i}", 10 + i, f"10.8.{i}.1") for i in range(20)]
    bind, advertised = plan_interfaces("all", crowded)
    assert len(bind) == 20
    assert len(advertised) == MAX_ADDRESSES_PER_HINT


def test_our_record_passes_our_own_checks() -> None:
    node = new_id()
    discovery = MdnsDiscovery(node, 7707, [1, 2])
    info = discovery.service_info([ipaddress.ip_address("10.1.2.3")])
    assert hint_from_service_info(info) == DialHint(node, ("10.1.2.3:7707",), (1, 2))
    assert len(str(node).encode()) <= 63  # one DNS label


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0},
        {"port": 65536},
        {"versions": []},
        {"versions": [70000]},
        {"versions": list(range(17))},
        {"interfaces": "eth0"},
        {"interfaces": []},
        {"max_hints_per_minute": 0},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"port": 7707, "versions": [1], **kwargs}
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        MdnsDiscovery(new_id(), args.pop("port"), args.pop("versions"), **args)


# --- bounded cost under a flood (trio side, no network) ----------------------


async def test_hints_pass_a_token_bucket_and_a_full_channel_drops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    me = new_id()
    discovery = MdnsDiscovery(me, 7707, [1], max_hints_per_minute=6)
    send, receive = trio.open_memory_channel[DialHint](100)
    flood = [hint_from_service_info(good(new_id())) for _ in range(20)]
    for hint in flood:
        discovery._offer(hint, send)
    assert (discovery.hints_sent, discovery.hints_dropped) == (6, 14)

    await trio.sleep(10)  # one more token (6 a minute)
    discovery._offer(flood[-1], send)
    assert discovery.hints_sent == 7

    # Our own record looped back is no hint, and costs nothing.
    discovery._offer(hint_from_service_info(good(me)), send)
    assert (discovery.hints_sent, discovery.hints_dropped) == (7, 14)
    assert [h.node_id for h in receive_all(receive)] == [h.node_id for h in flood[:6]] + [
        flood[-1].node_id
    ]


async def test_a_full_hint_channel_drops_instead_of_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    discovery = MdnsDiscovery(new_id(), 7707, [1])
    send, _receive = trio.open_memory_channel[DialHint](2)
    for _ in range(5):
        discovery._offer(hint_from_service_info(good(new_id())), send)
    assert (discovery.hints_sent, discovery.hints_dropped) == (2, 3)


async def test_the_same_hint_again_soon_is_not_repeated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    discovery = MdnsDiscovery(new_id(), 7707, [1])
    send, receive = trio.open_memory_channel[DialHint](10)
    node = new_id()
    hint = hint_from_service_info(good(node))
    moved = hint_from_service_info(good(node, addresses=["10.1.2.4"]))
    for h in (hint, hint, moved, moved):
        discovery._offer(h, send)
    await trio.sleep(60)
    discovery._offer(moved, send)
    assert receive_all(receive) == [hint, moved, moved]
    # After a goodbye, the node's return is news even with the same record.
    discovery._forget(f"{node}.{SERVICE_TYPE}")
    discovery._offer(moved, send)
    assert receive_all(receive) == [moved]


def receive_all(receive: trio.MemoryReceiveChannel[DialHint]) -> list[DialHint]:
    out = []
    while True:
        try:
            out.append(receive.receive_nowait())
        except trio.WouldBlock:
            return out


# --- real mDNS between namespaces --------------------------------------------


class Probe:
    """tests/mdns_probe.py running in one lab host; its JSON lines, waited on with deadlines."""

    def __init__(self, lab: NetnsLab, host: int, *args: str) -> None:
        self.proc = lab.popen(
            host,
            [sys.executable, PROBE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # zeroconf's warnings land among the lines
            text=True,
        )
        assert self.proc.stdout is not None
        self.lines = LineReader(self.proc.stdout)

    def wait(
        self, event: str, check: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> dict[str, Any]:
        def matches(line: str) -> bool:
            try:
                doc = json.loads(line)
            except ValueError:
                return False
            return isinstance(doc, dict) and doc.get("event") == event and check(doc)

        return dict(json.loads(self.lines.wait_for(matches, DEADLINE)))

    def events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.lines.seen:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("event") == event:
                out.append(doc)
        return out

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then the probe's final counters once its goodbye is out."""
        self.proc.send_signal(signal.SIGTERM)
        stopped = self.wait("stopped")
        assert self.proc.wait(timeout=DEADLINE) == 0
        return stopped


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    with NetnsLab(3) as lab:
        yield lab


def discovery_probe(lab: NetnsLab, host: int, node: NodeId, port: int) -> Probe:
    return Probe(lab, host, "--id", str(node), "--port", str(port), "--interface", "eth0")


def test_two_hosts_find_each_other_and_say_goodbye(lab: NetnsLab) -> None:
    a, b = new_id(), new_id()
    # Host 2 watches with plain zeroconf: it shows what went on the link.
    watcher = Probe(lab, 2, "--raw", "--address", lab.host(2).address)
    watcher.wait("browsing")
    probe_a = discovery_probe(lab, 0, a, 7000)
    probe_b = discovery_probe(lab, 1, b, 7001)
    started = probe_a.wait("started")
    assert started == {
        "event": "started",
        "addresses": [f"{lab.host(0).address}:7000"],
        "advertising": True,
    }
    probe_b.wait("started")

    hint_b = probe_a.wait("hint", lambda h: h["id"] == str(b))
    assert hint_b["addresses"] == [f"{lab.host(1).address}:7001"]
    assert hint_b["versions"] == [1]
    hint_a = probe_b.wait("hint", lambda h: h["id"] == str(a))
    assert hint_a["addresses"] == [f"{lab.host(0).address}:7000"]

    name_b = f"{b}.{SERVICE_TYPE}"
    watcher.wait("added", lambda e: e["name"] == name_b)
    stopped = probe_b.stop()
    assert stopped["hints_sent"] >= 1
    assert stopped["announcements_rejected"] == 0
    # The goodbye reached the link: the watcher's zeroconf dropped b at once
    # (without it, b's records would live on for their TTL, minutes).
    watcher.wait("removed", lambda e: e["name"] == name_b)

    stopped = probe_a.stop()
    # Nobody else was on the link, and a never hinted itself.
    assert {h["id"] for h in probe_a.events("hint")} == {str(b)}
    assert stopped["hints_sent"] == 1  # repeats of the same hint are held back
    assert stopped["announcements_rejected"] == 0


def test_malformed_and_mismatched_announcements_are_rejected_and_counted(lab: NetnsLab) -> None:
    me, claimed, named = new_id(), new_id(), new_id()
    probe = discovery_probe(lab, 0, me, 7000)
    probe.wait("started")
    # Host 1: the id in TXT is not one (bad checksum, wrong length, anything).
    bad = Probe(
        lab, 1, "--raw", "--address", lab.host(1).address,
        "--instance", "not-a-node-id", "--port", "7001", "--txt", "id=not-a-node-id",
        "--txt", "v=1",
    )  # fmt: skip
    # Host 2: a well-formed id in TXT, under another id's instance name.
    mismatched = Probe(
        lab, 2, "--raw", "--address", lab.host(2).address,
        "--instance", str(named), "--port", "7002", "--txt", f"id={claimed}", "--txt", "v=1",
    )  # fmt: skip
    bad.wait("registered")
    mismatched.wait("registered")

    # Both rejections, in whichever order they come.
    waiting = {f"not-a-node-id.{SERVICE_TYPE}", f"{named}.{SERVICE_TYPE}"}

    def rejected(event: dict[str, Any]) -> bool:
        if "rejected announcement" in event["message"]:
            waiting.difference_update({n for n in waiting if repr(n) in event["message"]})
        return not waiting

    probe.wait("log", rejected)
    stopped = probe.stop()
    assert stopped["announcements_rejected"] >= 2
    assert stopped["hints_sent"] == 0
    assert probe.events("hint") == []


def test_mdns_that_cannot_run_says_why_before_starting(lab: NetnsLab) -> None:
    node = str(new_id())
    missing = Probe(lab, 0, "--id", node, "--interface", "nosuch0")
    error = missing.wait("error")
    assert "no network interface named nosuch0" in error["message"]
    assert missing.proc.wait(timeout=DEADLINE) == 2
    loopback_only = Probe(lab, 1, "--id", node, "--interface", "lo")
    assert "no IPv4 address" in loopback_only.wait("error")["message"]
    assert loopback_only.proc.wait(timeout=DEADLINE) == 2
    assert missing.events("started") == loopback_only.events("started") == []


def test_a_squatted_name_does_not_silence_the_real_node(lab: NetnsLab) -> None:
    a, b = new_id(), new_id()
    # Host 2 answers for a's name and id first, pointing at itself.
    squatter = Probe(
        lab, 2, "--raw", "--address", lab.host(2).address,
        "--instance", str(a), "--port", "7002", "--txt", f"id={a}", "--txt", "v=1",
    )  # fmt: skip
    squatter.wait("registered")
    # a announces anyway (no probing to lose), and still hears others.
    probe_a = discovery_probe(lab, 0, a, 7000)
    assert probe_a.wait("started")["advertising"] is True
    probe_b = discovery_probe(lab, 1, b, 7001)
    probe_b.wait("started")
    probe_a.wait("hint", lambda h: h["id"] == str(b))
    # b hears a claim for a: the real address or the squatter's (both answer
    # for one name, and zeroconf keeps one). Either is only a hint; a's
    # own dial to b, and peer exchange, reach b whichever it is.
    claim = probe_b.wait("hint", lambda h: h["id"] == str(a))
    assert claim["addresses"] in (
        [f"{lab.host(0).address}:7000"],
        [f"{lab.host(2).address}:7002"],
    )
    probe_a.stop()
    probe_b.stop()
