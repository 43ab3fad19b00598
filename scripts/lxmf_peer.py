"""One LXMF node for scripts/compare_lxmf.py; runs with the LXMF virtualenv's python.

    .venv-lxmf/bin/python scripts/lxmf_peer.py --config DIR --role sender|receiver|propagation

It is not part of p2pdm and p2pdm never imports it: it only drives the
separately installed `RNS` (Reticulum) and `LXMF` packages through their
public API. Reticulum reads DIR/config, which compare_lxmf.py writes
(loopback TCP only, no shared instance).

Protocol: JSON lines. Commands arrive on stdin, events leave on stdout; every
event has "ev" and a wall-clock "t" (time.time(): all peers share one host).
Anything RNS or LXMF print goes to stderr, never into the protocol.

Commands:
    {"cmd": "path", "dest": HEX, "timeout": S}      -> {"ev": "path", "ok": bool}
    {"cmd": "send", "dest": HEX, "count": N, "rate": R (0: all at once),
     "tag": STR, "method": "direct" | "propagated"}  -> "path" once the recipient
                                                        is known, then "sent" (just
                                                        before handle_outbound),
                                                        "ok" and "fail" per message,
                                                        and "submitted" at the end
    {"cmd": "set_pn", "dest": HEX}                    -> "set_pn": outbound
                                                        propagation node set
    {"cmd": "sync"}                                   -> "sync" on each state change
    {"cmd": "quit"}                                   (or close stdin)
Events without a command: "ready" once the router is up (with "dest", the
delivery or propagation destination hash, and the settings in force), "rx" for
each message delivered to this node (its "tag" and "seq" come from the text),
"error". --propagation-cost sets a propagation node's stamp cost (LXMF's
default otherwise); --sync-from HEX makes a recipient fetch from that node as
soon as it is up.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import threading
import time
import traceback
from typing import IO, Any

import LXMF
import RNS

APP_NAME = "lxmf"
PATH_RETRY_S = 2.0
SYNC_WATCH_S = 120.0


class Emitter:
    """Writes protocol events; delivery callbacks run on many threads at once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"ev": ev, "t": fields.pop("t", None) or time.time(), **fields})
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def load_identity(path: str) -> Any:
    """The same identity on every start, so a restarted recipient keeps its address."""
    if os.path.isfile(path):
        return RNS.Identity.from_file(path)
    identity = RNS.Identity()
    identity.to_file(path)
    return identity


def wait_known(dest: bytes, timeout: float, need_path: bool) -> bool:
    """Until Reticulum can recall `dest`'s identity (and has a path, if asked)."""
    deadline = time.monotonic() + timeout
    asked = 0.0
    while True:
        known = RNS.Identity.recall(dest) is not None
        if known and (not need_path or RNS.Transport.has_path(dest)):
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - asked >= PATH_RETRY_S:
            RNS.Transport.request_path(dest)
            asked = now
        time.sleep(0.01)  # polling Reticulum's path table: it has no wait call


class Peer:
    def __init__(self, args: argparse.Namespace, emit: Emitter) -> None:
        self.args = args
        self.emit = emit
        self.reticulum = RNS.Reticulum(configdir=args.config)
        self.identity = load_identity(os.path.join(args.config, "peer_identity"))
        router_args: dict[str, Any] = {}
        if args.propagation_cost is not None:
            router_args["propagation_cost"] = args.propagation_cost
        self.router = LXMF.LXMRouter(
            identity=self.identity, storagepath=os.path.join(args.config, "lxmf"), **router_args
        )
        self.outbound: dict[bytes, Any] = {}
        self.source: Any = None
        settings: dict[str, Any] = {
            "rns": importlib.metadata.version("rns"),
            "lxmf": importlib.metadata.version("lxmf"),
            "transport": RNS.Reticulum.transport_enabled(),
            "interfaces": [str(i) for i in RNS.Transport.interfaces],
        }
        if args.role == "propagation":
            self.router.enable_propagation()
            dest = self.router.propagation_destination.hash
            settings["propagation_stamp_cost"] = self.router.propagation_stamp_cost
            settings["propagation_stamp_flexibility"] = (
                self.router.propagation_stamp_cost_flexibility
            )
        else:
            # No stamp_cost: direct messages to this node need no proof of work.
            self.source = self.router.register_delivery_identity(
                self.identity, display_name=f"bench {args.role}"
            )
            self.router.register_delivery_callback(self.delivered)
            dest = self.source.hash
            settings["delivery_stamp_cost"] = self.source.stamp_cost
            # Announce on start, as LXMF clients do, so peers can find this node.
            self.router.announce(dest)
        self.emit("ready", dest=dest.hex(), pid=os.getpid(), settings=settings)
        if args.sync_from:
            self.router.set_outbound_propagation_node(bytes.fromhex(args.sync_from))
            self.sync()

    def delivered(self, message: Any) -> None:
        now = time.time()
        tag, _, rest = message.content_as_string().partition(":")
        seq = int(rest.split(".", 1)[0]) if rest[:1].isdigit() else -1
        self.emit("rx", t=now, tag=tag, seq=seq, method=message.method)

    def destination(self, dest: bytes) -> Any:
        if dest not in self.outbound:
            identity = RNS.Identity.recall(dest)
            self.outbound[dest] = RNS.Destination(
                identity, RNS.Destination.OUT, RNS.Destination.SINGLE, APP_NAME, "delivery"
            )
        return self.outbound[dest]

    def send(self, cmd: dict[str, Any]) -> None:
        dest = bytes.fromhex(cmd["dest"])
        tag, count, rate = str(cmd["tag"]), int(cmd["count"]), float(cmd.get("rate", 0))
        propagated = cmd.get("method") == "propagated"
        # A propagated message only needs the recipient's identity (it may be
        # offline); a direct one needs a path for its link.
        if not wait_known(dest, float(cmd.get("timeout", 60)), need_path=not propagated):
            self.emit("error", tag=tag, what="no path to the recipient")
            return
        self.emit("path", dest=cmd["dest"], ok=True, tag=tag)
        method = LXMF.LXMessage.PROPAGATED if propagated else LXMF.LXMessage.DIRECT
        destination = self.destination(dest)
        start = time.monotonic()
        for seq in range(count):
            if rate > 0:
                delay = start + seq / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load
            lxm = LXMF.LXMessage(
                destination,
                self.source,
                f"{tag}:{seq:06d}".ljust(30, "."),
                title="",
                desired_method=method,
            )
            lxm.bench = (tag, seq)
            lxm.register_delivery_callback(self.confirmed)
            lxm.register_failed_callback(self.failed)
            self.emit("sent", tag=tag, seq=seq)
            self.router.handle_outbound(lxm)
        self.emit("submitted", tag=tag, count=count)

    def confirmed(self, lxm: Any) -> None:
        # Direct: the recipient proved the packet. Propagated: the node took it.
        now = time.time()
        tag, seq = lxm.bench
        self.emit("ok", t=now, tag=tag, seq=seq, attempts=lxm.delivery_attempts)

    def failed(self, lxm: Any) -> None:
        tag, seq = lxm.bench
        self.emit("fail", tag=tag, seq=seq, state=lxm.state)

    def sync(self) -> None:
        self.router.request_messages_from_propagation_node(self.identity)
        threading.Thread(target=self.watch_sync, daemon=True).start()

    def watch_sync(self) -> None:
        last = None
        deadline = time.monotonic() + SYNC_WATCH_S
        while time.monotonic() < deadline:
            state = self.router.propagation_transfer_state
            if state != last:
                last = state
                result = self.router.propagation_transfer_last_result
                self.emit("sync", state=state, result=result)
                if state >= LXMF.LXMRouter.PR_COMPLETE:
                    return
            time.sleep(0.02)  # polling the router's transfer state: it has no callback

    def serve(self, commands: IO[str]) -> None:
        for line in commands:
            if not line.strip():
                continue
            cmd = json.loads(line)
            name = cmd.get("cmd")
            if name == "quit":
                break
            if name == "path":
                ok = wait_known(bytes.fromhex(cmd["dest"]), float(cmd["timeout"]), need_path=True)
                self.emit("path", dest=cmd["dest"], ok=ok)
            elif name == "send":
                threading.Thread(target=self.send, args=(cmd,), daemon=True).start()
            elif name == "set_pn":
                self.router.set_outbound_propagation_node(bytes.fromhex(cmd["dest"]))
                self.emit("set_pn", dest=cmd["dest"])
            elif name == "sync":
                self.sync()
            else:
                self.emit("error", what=f"unknown command {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="Reticulum config directory")
    parser.add_argument("--role", required=True, choices=["sender", "receiver", "propagation"])
    parser.add_argument(
        "--propagation-cost", type=int, help="propagation node's stamp cost (LXMF default if unset)"
    )
    parser.add_argument("--sync-from", metavar="HEX", help="fetch from this propagation node")
    args = parser.parse_args()

    # The protocol keeps the real stdout; RNS logs with print(), so stdout
    # becomes stderr for everything else (forked stamp workers included).
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # A forked stamp worker closes sys.stdin first thing; if that were the
    # stream the main thread is blocked reading, its lock would be held for
    # ever in the child. So commands come from a private copy of fd 0.
    commands = os.fdopen(os.dup(0), "r")
    sys.stdin = open(os.devnull)  # noqa: SIM115 (lives as long as the process)
    emit = Emitter(protocol)
    code = 0
    try:
        Peer(args, emit).serve(commands)
    except Exception as exc:
        traceback.print_exc()
        emit("error", what=repr(exc))
        code = 1
    # Quit, or the driver went away (stdin closed): leave at once, without
    # Reticulum's exit handlers persisting state nobody will read.
    protocol.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
