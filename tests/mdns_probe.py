"""Run mDNS inside one host of a NetnsLab and report what happens as JSON lines.

    python tests/mdns_probe.py --id ID --port N [--interface eth0] [--seconds S]
        MdnsDiscovery as a node runs it. Prints {"event": "started", ...} once
        advertised and browsing, {"event": "hint", ...} per DialHint, the
        module's log records as {"event": "log", ...}, and on SIGTERM or after
        S seconds, once the goodbye has been sent, {"event": "stopped", ...}
        with the counters. {"event": "error", ...} and exit 2 if mDNS cannot run.

    python tests/mdns_probe.py --raw --address IP [--instance NAME --port N --txt K=V ...
                               [--no-probe]]
    python tests/mdns_probe.py --raw --address IP --flood N [--port P]
        Announces N well-formed records, each a new made-up node id at IP:P,
        then prints {"event": "flooded", ...}.
        Plain python-zeroconf, no checks: optionally registers a record made
        of exactly what is given (to play a malformed or hostile peer), and
        prints every browse event ({"event": "added" | "updated" | "removed",
        "name": ...}) for the p2pdm service type.

Only for tests: never run it outside a namespace the test made.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import sys
import threading
from typing import Any

import trio
import zeroconf

from p2pdm.discovery.mdns import SERVICE_TYPE, DialHint, MdnsDiscovery, MdnsError
from p2pdm.identity import Identity, NodeId

_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _print_lock:
        print(json.dumps({"event": event, **fields}), flush=True)


class _JsonLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        emit("log", level=record.levelname, message=record.getMessage())


def _counters(discovery: MdnsDiscovery) -> dict[str, int]:
    return {
        "hints_sent": discovery.hints_sent,
        "hints_dropped": discovery.hints_dropped,
        "announcements_rejected": discovery.announcements_rejected,
        "announcements_dropped": discovery.announcements_dropped,
    }


async def run_discovery(args: argparse.Namespace) -> int:
    interfaces = args.interface or "all"
    versions = [int(v) for v in args.versions.split(",")]
    discovery = MdnsDiscovery(NodeId.parse(args.id), args.port, versions, interfaces=interfaces)
    send, receive = trio.open_memory_channel[DialHint](64)
    # Listen for SIGTERM before saying "started", so a prompt one is not lost.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.cancel_scope.deadline = trio.current_time() + args.seconds
            try:
                await nursery.start(discovery.run, send)
            except MdnsError as exc:
                emit("error", message=str(exc))
                nursery.cancel_scope.cancel()
                return 2
            emit("started", addresses=list(discovery.addresses), advertising=discovery.advertising)
            async for hint in receive:
                emit(
                    "hint",
                    id=str(hint.node_id),
                    addresses=list(hint.addresses),
                    versions=list(hint.versions),
                )
    # Here discovery.run has returned: the goodbye went out and zeroconf is closed.
    emit("stopped", **_counters(discovery))
    return 0


class _RawListener(zeroconf.ServiceListener):
    def add_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        emit("added", name=name)

    def update_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        emit("updated", name=name)

    def remove_service(self, zc: zeroconf.Zeroconf, type_: str, name: str) -> None:
        emit("removed", name=name)


def flood(zc: zeroconf.Zeroconf, address: str, port: int, count: int) -> None:
    """Announce `count` well-formed records, each a new made-up node id, all at `address`."""
    infos = []
    for _ in range(count):
        text = str(Identity.generate().node_id)
        infos.append(
            zeroconf.ServiceInfo(
                SERVICE_TYPE,
                f"{text}.{SERVICE_TYPE}",
                port=port,
                properties={b"id": text.encode(), b"v": b"1"},
                server=f"{text}.local.",
                addresses=[ipaddress.ip_address(address).packed],
            )
        )

    async def register_all() -> None:
        # All at once on zeroconf's loop: one by one, each waits out its announcements.
        announcing = [
            await zc.async_register_service(info, cooperating_responders=True) for info in infos
        ]
        await asyncio.gather(*announcing)

    assert zc.loop is not None
    asyncio.run_coroutine_threadsafe(register_all(), zc.loop).result(timeout=60)


def run_raw(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    zc = zeroconf.Zeroconf(interfaces=[args.address], ip_version=zeroconf.IPVersion.V4Only)
    try:
        info = None
        if args.instance is not None:
            properties: dict[bytes, bytes | None] = {}
            for item in args.txt:
                key, sep, value = item.encode().partition(b"=")
                properties[key] = value if sep else None
            info = zeroconf.ServiceInfo(
                SERVICE_TYPE,
                f"{args.instance}.{SERVICE_TYPE}",
                port=args.port,
                properties=properties,
                server=f"raw-{args.address.replace('.', '-')}.local.",
                addresses=[ipaddress.ip_address(args.address).packed],
            )
            # --no-probe skips the conflict check and announces at once, as a
            # forger that talks over an existing record would.
            zc.register_service(info, cooperating_responders=args.no_probe)
            emit("registered", name=info.name)
        if args.flood:
            flood(zc, args.address, args.port, args.flood)
            emit("flooded", count=args.flood)
        browser = zeroconf.ServiceBrowser(zc, SERVICE_TYPE, listener=_RawListener())
        emit("browsing")
        stop.wait(args.seconds)
        browser.cancel()
        if info is not None:
            zc.unregister_service(info)
    finally:
        zc.close()
    emit("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", help="node id to advertise (discovery mode)")
    parser.add_argument("--port", type=int, default=7707)
    parser.add_argument("--versions", default="1")
    parser.add_argument("--interface", action="append", default=[])
    parser.add_argument("--seconds", type=float, default=30.0, help="exit after this long")
    parser.add_argument("--raw", action="store_true", help="plain zeroconf, no checks")
    parser.add_argument("--address", help="raw mode: the IPv4 address to use and announce")
    parser.add_argument("--instance", help="raw mode: register this instance name")
    parser.add_argument(
        "--flood", type=int, default=0, help="raw mode: announce this many made-up node ids"
    )
    parser.add_argument(
        "--no-probe", action="store_true", help="raw mode: announce without probing first"
    )
    parser.add_argument("--txt", action="append", default=[], help="raw mode: a TXT entry K=V")
    args = parser.parse_args(argv)

    handler = _JsonLogHandler()
    logger = logging.getLogger("p2pdm.discovery.mdns")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # once, as JSON, is enough
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # zeroconf's own warnings

    if args.raw:
        if not args.address:
            parser.error("--raw needs --address")
        return run_raw(args)
    if not args.id:
        parser.error("discovery mode needs --id")
    return trio.run(run_discovery, args)


if __name__ == "__main__":
    sys.exit(main())
