"""mDNS / DNS-SD: advertise this node on the local link and hear of others.

The service is `_p2pdm._tcp.local.`; the instance name is the node id text
(56 characters, within DNS's 63-byte label limit) and the TXT record holds
`id=<node id>` and `v=<protocol versions, comma separated>`.

Nothing heard here is trusted. Anyone on the link can answer for any name,
and rewrite another instance's port, addresses or TXT. So an announcement
is checked strictly (`hint_from_service_info`) and becomes a `DialHint`: an
id *claimed* by the record, and where it says that id listens. The node only
ever adds those addresses and dials them; the handshake decides who answers.

python-zeroconf runs its own asyncio loop in its own thread, and calls its
ServiceListener from yet another thread (the ServiceBrowser). Here:
- every blocking zeroconf call (start, register, resolve, goodbye, close)
  runs in a trio worker thread, so the trio loop never blocks;
- a browser callback does one thing: `trio.from_thread.run_sync` hands the
  service name to the trio thread, which owns every piece of state;
- a flood of fake announcements costs bounded work: names waiting for a
  resolution are deduplicated and capped, at most a few resolve at once,
  hints pass a token bucket, and a full hint channel drops rather than waits.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import ifaddr
import trio
import zeroconf

from p2pdm.identity import InvalidNodeId, NodeId
from p2pdm.transport import TokenBucket, format_address

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2pdm._tcp.local."
# Addresses in one hint: a node on a laptop has a few (Wi-Fi, Ethernet, a
# VPN, an IPv6 address or two); more only add dials to addresses that fail.
MAX_ADDRESSES_PER_HINT = 8
# As many versions as a handshake may offer (handshake.MAX_OFFERED_VERSIONS).
MAX_VERSIONS = 16
# Versions are 16-bit in the handshake; five digits is the longest we read.
MAX_VERSION = 0xFFFF
# An announcement carries SRV, TXT and A records with its PTR, so most
# resolutions come straight from zeroconf's cache; one that must ask the
# network gets an answer in well under a second on a LAN. Shutdown may wait
# this long for a resolution in flight.
RESOLVE_TIMEOUT_MS = 1000
# Resolutions running at once (each holds a worker thread while it waits).
MAX_CONCURRENT_RESOLUTIONS = 4
# Distinct names waiting for a resolution; more are dropped and counted.
MAX_QUEUED_RESOLUTIONS = 64
# Goodbye (three packets 125 ms apart) and close take well under a second;
# past this, shutdown goes on without them.
CLOSE_TIMEOUT = 3.0
# The same hint again within this many seconds is not sent again: a
# registration is announced three times, and address updates re-fire.
HINT_REPEAT_INTERVAL = 30.0
# Hints remembered for that suppression, most recent kept.
MAX_REMEMBERED_HINTS = 256

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class MdnsError(Exception):
    """mDNS cannot run here (no usable interface, sockets refused); the message says why."""


class InvalidAnnouncement(ValueError):
    """An announcement heard on the link that is not a well-formed p2pdm record."""


@dataclass(frozen=True)
class DialHint:
    """Someone on the link says `node_id` listens at `addresses`: a reason to dial, no more."""

    node_id: NodeId
    """As claimed by the TXT record: untrusted until a handshake proves it."""
    addresses: tuple[str, ...]
    """`ip:port`, or `[ipv6]:port`; at most MAX_ADDRESSES_PER_HINT."""
    versions: tuple[int, ...]
    """Protocol versions the record claims, in its order."""


# --- checking what we hear (pure functions) --------------------------------


def usable_address(ip: _Address) -> bool:
    """An address a hint may carry, or we advertise: one a peer could dial.

    Loopback would make us dial ourselves; unspecified, multicast and
    broadcast addresses are not hosts; an IPv6 link-local address needs a
    scope that only means something on the host that wrote it. (IPv4
    link-local, 169.254/16, is kept: it is what a network with no DHCP uses.)
    """
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return not ip.is_link_local and ip.ipv4_mapped is None
    return ip != ipaddress.IPv4Address("255.255.255.255")


def parse_versions(raw: bytes) -> tuple[int, ...]:
    """`1,2,3` -> (1, 2, 3); canonical decimal only, 1 to MAX_VERSIONS of them."""
    parts = raw.split(b",")
    if len(parts) > MAX_VERSIONS:
        raise InvalidAnnouncement(f"more than {MAX_VERSIONS} versions")
    versions: list[int] = []
    for part in parts:
        # isdigit() on bytes is ASCII only; the length check bounds int().
        if not part.isdigit() or len(part) > 5:
            raise InvalidAnnouncement(f"version {part[:8]!r} is not a number")
        value = int(part)
        if value > MAX_VERSION or part != str(value).encode():
            raise InvalidAnnouncement(f"version {part!r} is not a canonical 16-bit number")
        if value not in versions:
            versions.append(value)
    return tuple(versions)


def hint_from_service_info(info: zeroconf.ServiceInfo) -> DialHint:
    """Check a resolved announcement and turn it into a hint; InvalidAnnouncement if bad."""
    if info.type != SERVICE_TYPE:
        raise InvalidAnnouncement(f"service type {info.type!r} is not {SERVICE_TYPE!r}")
    suffix = "." + SERVICE_TYPE
    if not info.name.endswith(suffix):
        raise InvalidAnnouncement("instance name is not under the service type")
    instance = info.name[: -len(suffix)]
    properties = info.properties
    raw_id = properties.get(b"id")
    if raw_id is None:
        raise InvalidAnnouncement("TXT record has no id")
    try:
        text = raw_id.decode("ascii")
        node_id = NodeId.parse(text)
    except (UnicodeDecodeError, InvalidNodeId) as exc:
        raise InvalidAnnouncement(f"TXT id is not a node id: {exc}") from exc
    if text != str(node_id):
        raise InvalidAnnouncement("TXT id is not in canonical form")
    if instance != text:
        raise InvalidAnnouncement("instance name differs from the TXT id")
    raw_versions = properties.get(b"v")
    if raw_versions is None:
        raise InvalidAnnouncement("TXT record has no v (protocol versions)")
    versions = parse_versions(raw_versions)
    port = info.port
    if port is None or not 0 < port <= 0xFFFF:
        raise InvalidAnnouncement(f"port {port!r} is not 1..65535")
    addresses: list[str] = []
    for ip in info.ip_addresses_by_version(zeroconf.IPVersion.All):
        # Rebuilt from the packed form: drops any scope zeroconf attached.
        plain = ipaddress.ip_address(ip.packed)
        if not usable_address(plain):
            continue
        text_address = format_address(str(plain), port)
        if text_address not in addresses:
            addresses.append(text_address)
        if len(addresses) == MAX_ADDRESSES_PER_HINT:
            break
    if not addresses:
        raise InvalidAnnouncement("no usable address")
    return DialHint(node_id, tuple(addresses), versions)


# --- which interfaces, which addresses -------------------------------------


def _adapter_addresses(adapter: ifaddr.Adapter) -> list[_Address]:
    out: list[_Address] = []
    for entry in adapter.ips:
        host = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
        try:
            out.append(ipaddress.ip_address(host))
        except ValueError:
            continue
    return out


def plan_interfaces(
    choice: Literal["all"] | Sequence[str], adapters: Iterable[ifaddr.Adapter]
) -> tuple[list[str], list[_Address]]:
    """(IPv4 addresses zeroconf binds to, addresses we advertise), or MdnsError.

    mDNS itself runs over IPv4 multicast on the chosen interfaces; the
    records we send still carry those interfaces' global IPv6 addresses.
    "all" means every interface with a usable address (never loopback).
    """
    adapters = list(adapters)
    if choice != "all":
        by_name = {a.name: a for a in adapters} | {a.nice_name: a for a in adapters}
        missing = [name for name in choice if name not in by_name]
        if missing:
            known = ", ".join(sorted({a.nice_name for a in adapters}))
            raise MdnsError(f"no network interface named {', '.join(missing)} (have: {known})")
        adapters = [by_name[name] for name in dict.fromkeys(choice)]
    addresses = [ip for a in adapters for ip in _adapter_addresses(a) if usable_address(ip)]
    addresses = list(dict.fromkeys(addresses))
    bind = [str(ip) for ip in addresses if isinstance(ip, ipaddress.IPv4Address)]
    if not bind:
        where = "any interface" if choice == "all" else ", ".join(choice)
        raise MdnsError(f"no IPv4 address (other than loopback) on {where} to run mDNS on")
    # IPv4 first: every peer on the link can dial those.
    addresses.sort(key=lambda ip: ip.version)
    return bind, addresses[:MAX_ADDRESSES_PER_HINT]


# --- the trio side ----------------------------------------------------------


class _Listener(zeroconf.ServiceListener):
    """Runs on zeroconf's browser thread: hands names to trio and does nothing else."""

    def __init__(
        self,
        token: trio.lowlevel.TrioToken,
        heard: Callable[[str], None],
        gone: Callable[[str], None],
    ) -> None:
        self._token = token
        self._heard = heard
        self._gone = gone

    def _forward(self, fn: Callable[[str], None], name: str) -> None:
        # RunFinishedError: trio has ended and the browser is being torn down.
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(fn, name, trio_token=self._token)

    def add_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        self._forward(self._heard, name)

    def update_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        self._forward(self._heard, name)

    def remove_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        self._forward(self._gone, name)


def _resolve(zc: zeroconf.Zeroconf, name: str) -> DialHint | InvalidAnnouncement | None:
    """Worker thread: look `name` up (cache first, else ask) and check it; None if no answer."""
    try:
        info = zeroconf.ServiceInfo(SERVICE_TYPE, name)
        if not info.request(zc, RESOLVE_TIMEOUT_MS):
            return None
    except (zeroconf.Error, RuntimeError, concurrent.futures.CancelledError) as exc:
        log.debug("mDNS: could not resolve %r: %s", name, exc)
        return None
    try:
        return hint_from_service_info(info)
    except InvalidAnnouncement as exc:
        return exc


class MdnsDiscovery:
    """Advertise `node_id` at `port` by mDNS and send a DialHint for every other node heard.

    `interfaces` is "all" (every interface with an address other than
    loopback) or a list of interface names. `run` may be called once at a time.
    Counters: `hints_sent`; `hints_dropped` (rate limit or full channel);
    `announcements_rejected` (malformed, failed the checks);
    `announcements_dropped` (too many names already waiting to be resolved).
    """

    def __init__(
        self,
        node_id: NodeId,
        port: int,
        versions: Sequence[int],
        *,
        interfaces: Literal["all"] | Sequence[str] = "all",
        max_hints_per_minute: int = 120,
    ) -> None:
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"port must be 1..65535, not {port}")
        if not 0 < len(versions) <= MAX_VERSIONS or not all(
            0 <= v <= MAX_VERSION for v in versions
        ):
            raise ValueError(f"versions must be 1 to {MAX_VERSIONS} numbers in 0..{MAX_VERSION}")
        if isinstance(interfaces, str) and interfaces != "all":
            raise ValueError('interfaces is "all" or a list of interface names')
        if not isinstance(interfaces, str) and not interfaces:
            raise ValueError('an empty list of interfaces: pass "all" or some names')
        if max_hints_per_minute < 1:
            raise ValueError("max_hints_per_minute must be at least 1")
        self.node_id = node_id
        self.port = port
        self.versions = tuple(versions)
        self.interfaces: Literal["all"] | tuple[str, ...] = (
            "all" if isinstance(interfaces, str) else tuple(interfaces)
        )
        self.max_hints_per_minute = max_hints_per_minute
        self.hints_sent = 0
        self.hints_dropped = 0
        self.announcements_rejected = 0
        self.announcements_dropped = 0
        self.advertising = False
        """True while our record is registered (a name conflict leaves it False)."""
        self.addresses: tuple[str, ...] = ()
        """The addresses we advertise, once `run` has started."""
        self._running = False
        self._bucket: TokenBucket | None = None  # made in run: its clock is trio's
        self._recent: OrderedDict[str, tuple[DialHint, float]] = OrderedDict()

    def service_info(self, addresses: Sequence[_Address]) -> zeroconf.ServiceInfo:
        """Our own record, with these addresses."""
        text = str(self.node_id)
        return zeroconf.ServiceInfo(
            SERVICE_TYPE,
            f"{text}.{SERVICE_TYPE}",
            port=self.port,
            properties={b"id": text.encode(), b"v": ",".join(map(str, self.versions)).encode()},
            # Our own host name, so two nodes on one machine never share one.
            server=f"{text}.local.",
            addresses=[ip.packed for ip in addresses],
        )

    async def run(
        self,
        hints: trio.MemorySendChannel[DialHint],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Advertise and browse until cancelled; MdnsError before `started` if mDNS cannot run.

        On the way out, unregisters (peers see a goodbye) and closes zeroconf,
        shielded and bounded by CLOSE_TIMEOUT; then closes `hints`.
        """
        if self._running:
            raise RuntimeError("MdnsDiscovery.run is already running")
        self._running = True
        try:
            # The producer closes its end (trio's convention), so a consumer's
            # `async for` ends when discovery does; pass a clone to keep yours.
            async with hints:
                await self._run(hints, task_status)
        finally:
            self._running = False

    async def _run(
        self, hints: trio.MemorySendChannel[DialHint], task_status: trio.TaskStatus[None]
    ) -> None:
        token = trio.lowlevel.current_trio_token()
        zc, addresses = await trio.to_thread.run_sync(self._open)
        # From here to `try` nothing can raise or checkpoint, so zc is always closed.
        queue_send, queue_receive = trio.open_memory_channel[str](MAX_QUEUED_RESOLUTIONS)
        queued: set[str] = set()

        def heard(name: str) -> None:
            # On the trio thread (via from_thread): the only door in from zeroconf.
            if name in queued:
                return  # already waiting: one resolution will see the newest records
            try:
                queue_send.send_nowait(name)
            except trio.WouldBlock:
                self.announcements_dropped += 1
                log.debug("mDNS: resolution queue full, dropped %r", name)
                return
            queued.add(name)

        browser: zeroconf.ServiceBrowser | None = None
        info: zeroconf.ServiceInfo | None = None
        try:
            self.addresses = tuple(format_address(str(ip), self.port) for ip in addresses)
            info = self.service_info(addresses)
            async with trio.open_nursery() as nursery:
                for _ in range(MAX_CONCURRENT_RESOLUTIONS):
                    nursery.start_soon(self._resolver, zc, queue_receive, queued, hints)
                # Browse first: others' answers arrive while we announce.
                browser = await trio.to_thread.run_sync(
                    functools.partial(
                        zeroconf.ServiceBrowser,
                        zc,
                        SERVICE_TYPE,
                        listener=_Listener(token, heard, self._forget),
                    )
                )
                self.advertising = await trio.to_thread.run_sync(self._register, zc, info)
                log.info(
                    "mDNS: %s %s on %s",
                    "advertising" if self.advertising else "browsing (not advertising)",
                    self.node_id.short(),
                    ", ".join(self.addresses),
                )
                task_status.started()
                await trio.sleep_forever()
        finally:
            # Resolvers have finished (the nursery waited), so nothing uses zc now.
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
                await trio.to_thread.run_sync(
                    self._close, zc, browser, info if self.advertising else None,
                    abandon_on_cancel=True,
                )  # fmt: skip
            self.advertising = False
            if scope.cancelled_caught:
                log.warning("mDNS: shutdown took over %s s; left it behind", CLOSE_TIMEOUT)

    def _open(self) -> tuple[zeroconf.Zeroconf, list[_Address]]:
        """Worker thread: choose interfaces and start zeroconf (its own thread and loop)."""
        try:
            bind, addresses = plan_interfaces(self.interfaces, ifaddr.get_adapters())
            zc = zeroconf.Zeroconf(interfaces=list(bind), ip_version=zeroconf.IPVersion.V4Only)
        except MdnsError:
            raise
        except (OSError, RuntimeError, zeroconf.Error) as exc:
            raise MdnsError(f"cannot start mDNS: {exc}") from exc
        return zc, addresses

    def _register(self, zc: zeroconf.Zeroconf, info: zeroconf.ServiceInfo) -> bool:
        """Worker thread: announce our record at once; False if we cannot.

        No probing first (docs/DECISIONS.md, "mDNS without probing"): our
        names are our node id, which no honest node shares, and deferring to
        whoever claims it first would let anyone on the link silence us.
        """
        try:
            zc.register_service(info, allow_name_change=False, cooperating_responders=True)
        except zeroconf.Error as exc:
            log.warning("mDNS: could not advertise %s: %r", self.node_id.short(), exc)
            return False
        return True

    @staticmethod
    def _close(
        zc: zeroconf.Zeroconf,
        browser: zeroconf.ServiceBrowser | None,
        info: zeroconf.ServiceInfo | None,
    ) -> None:
        """Worker thread: stop browsing, say goodbye, close."""
        try:
            if browser is not None:
                browser.cancel()
            if info is not None:
                zc.unregister_service(info)
        except (zeroconf.Error, RuntimeError) as exc:
            log.warning("mDNS: goodbye failed: %r", exc)
        finally:
            zc.close()

    async def _resolver(
        self,
        zc: zeroconf.Zeroconf,
        names: trio.MemoryReceiveChannel[str],
        queued: set[str],
        hints: trio.MemorySendChannel[DialHint],
    ) -> None:
        async for name in names:
            # Out of the queue before resolving: an update heard meanwhile
            # queues the name again, so no change is missed.
            queued.discard(name)
            outcome = await trio.to_thread.run_sync(_resolve, zc, name)
            if outcome is None:
                continue
            if isinstance(outcome, InvalidAnnouncement):
                self.announcements_rejected += 1
                log.debug("mDNS: rejected announcement %r: %s", name, outcome)
                continue
            self._offer(outcome, hints)

    def _offer(self, hint: DialHint, hints: trio.MemorySendChannel[DialHint]) -> None:
        if hint.node_id == self.node_id:
            return  # our own record, looped back (or someone claiming to be us)
        now = trio.current_time()
        key = str(hint.node_id)
        last = self._recent.get(key)
        if last is not None and last[0] == hint and now - last[1] < HINT_REPEAT_INTERVAL:
            return
        if not self._bucket_take(now):
            self.hints_dropped += 1
            log.debug("mDNS: over %d hints a minute, dropped one", self.max_hints_per_minute)
            return
        try:
            hints.send_nowait(hint)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.hints_dropped += 1
            log.debug("mDNS: hint channel full or closed, dropped a hint")
            return
        self.hints_sent += 1
        self._recent[key] = (hint, now)
        self._recent.move_to_end(key)
        while len(self._recent) > MAX_REMEMBERED_HINTS:
            self._recent.popitem(last=False)

    def _forget(self, name: str) -> None:
        """A goodbye for `name` (true or forged): its next hint is sent, even if the same.

        It removes nothing else: a goodbye never takes an address away
        (docs/DECISIONS.md, "mDNS hints only add"). A node that restarts
        within HINT_REPEAT_INTERVAL is hinted again at once.
        """
        log.debug("mDNS: goodbye for %r", name)
        self._recent.pop(name.removesuffix("." + SERVICE_TYPE), None)

    def _bucket_take(self, now: float) -> bool:
        if self._bucket is None:
            rate = self.max_hints_per_minute / 60.0
            # A full minute's worth at once: a node joining a busy LAN hears
            # everyone within seconds.
            self._bucket = TokenBucket(rate, self.max_hints_per_minute, now)
        return self._bucket.take(now)
