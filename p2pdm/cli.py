"""The `p2pdm` command.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from p2pdm import __version__
from p2pdm.apierrors import ApiRequestError, ApiUnavailable, EventStreamEnded
from p2pdm.config import (
    API_SOCKET_NAME,
    KEY_FILE_NAME,
    ConfigError,
    check_name,
    ensure_home,
    load_config,
    resolve_home,
    write_initial_config,
)
from p2pdm.display import visible
from p2pdm.identity import (
    Identity,
    IdentityError,
    NodeId,
    key_file_is_locked,
    key_file_node_id,
    load_key_file,
    safety_number,
    write_key_file,
)
from p2pdm.settings import parse_duration

if TYPE_CHECKING:
    from collections.abc import Sequence

    from p2pdm.apiclient import ApiClient

PASSPHRASE_ENV = "P2PDM_PASSPHRASE"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
# Messages per API request when sending many from --stdin.
SEND_CHUNK = 500
# `--clock-offset` is for trying a node with a wrong clock; a week covers
# any clock a user could live with.
MAX_CLOCK_OFFSET_S = 7 * 86_400
# Ids per outbox query: 200 hex ids make a 13 KB URL, under the API's 16 KB.
OUTBOX_QUERY_CHUNK = 200


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _read_new_passphrase() -> str:
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        raise CliError(f"--passphrase needs a terminal or ${PASSPHRASE_ENV}", EXIT_USAGE)
    first = getpass.getpass("New passphrase: ")
    if first != getpass.getpass("Repeat it: "):
        raise CliError("the passphrases differ; nothing was written", EXIT_USAGE)
    return first


def cmd_init(home: Path, args: argparse.Namespace) -> int:
    name = check_name(args.name) if args.name is not None else None
    key_path = home / KEY_FILE_NAME
    if key_path.exists():
        raise CliError(f"{key_path} already exists; refusing to overwrite an identity")
    passphrase = _read_new_passphrase() if args.passphrase else None
    ensure_home(home)
    identity = Identity.generate()
    write_key_file(key_path, identity, passphrase)
    write_initial_config(home, name)
    print(identity.node_id)
    return EXIT_OK


def cmd_id(home: Path, args: argparse.Namespace) -> int:
    print(key_file_node_id(home / KEY_FILE_NAME))
    return EXIT_OK


def cmd_safety_number(home: Path, args: argparse.Namespace) -> int:
    mine = key_file_node_id(home / KEY_FILE_NAME)
    print(safety_number(mine, NodeId.parse(args.peer)))
    return EXIT_OK


# --- the daemon -------------------------------------------------------------


def _unlock(home: Path) -> Identity:
    path = home / KEY_FILE_NAME
    passphrase = None
    if key_file_is_locked(path):
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase is None:
            if not sys.stdin.isatty():
                raise CliError(f"the key is locked: set ${PASSPHRASE_ENV} or run on a terminal")
            passphrase = getpass.getpass("Passphrase: ")
    return load_key_file(path, passphrase)


def _addresses(
    values: list[str], what: str, default_port: int | None
) -> tuple[tuple[str, int], ...]:
    from p2pdm.transport import parse_address  # see cmd_run

    out = []
    for value in values:
        try:
            out.append(parse_address(value, default_port))
        except ValueError as exc:
            raise CliError(f"{what}: {exc}", EXIT_USAGE) from None
    return tuple(out)


def _clock_offset_ms(seconds: object) -> int:
    if seconds is None:
        return 0
    if not isinstance(seconds, int) or abs(seconds) > MAX_CLOCK_OFFSET_S:
        raise CliError(
            f"--clock-offset (clock_offset_s) is whole seconds, at most {MAX_CLOCK_OFFSET_S}"
            " either way",
            EXIT_USAGE,
        )
    return seconds * 1000


def cmd_run(home: Path, args: argparse.Namespace) -> int:
    # Imported here, not at the top: the other commands start faster without
    # trio and the node.
    from p2pdm.daemon import DaemonError, run_daemon
    from p2pdm.files import DEFAULT_RELAYED_SIZE, MAX_RELAYED_SIZE
    from p2pdm.node import DEFAULT_PORT, DEFAULT_TTL_MS, MAX_TTL_MS, NodeConfig
    from p2pdm.transport import limits_with

    conf = load_config(home)
    level = (args.log_level or str(conf.get("log_level", "info"))).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise CliError(f"log level must be debug, info, warning or error, not {level!r}", 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    listen = args.listen or list(conf.get("listen", [f"0.0.0.0:{DEFAULT_PORT}"]))  # type: ignore[call-overload]
    bootstrap = args.bootstrap or list(conf.get("bootstrap", []))  # type: ignore[call-overload]
    mdns = bool(conf.get("mdns", True)) if args.mdns is None else args.mdns
    mdns_interfaces = args.mdns_interface or list(conf.get("mdns_interfaces", []))  # type: ignore[call-overload]
    relay = bool(conf.get("relay", True)) if args.relay is None else args.relay
    ttl_days = args.ttl_days if args.ttl_days is not None else conf.get("ttl_days")
    max_days = MAX_TTL_MS // 86_400_000
    if ttl_days is not None and not (isinstance(ttl_days, int) and 1 <= ttl_days <= max_days):
        raise CliError(f"ttl_days must be a whole number of days, 1 to {max_days}", EXIT_USAGE)
    name = check_name(args.name) if args.name is not None else conf.get("name")
    relay_kib = (
        args.relay_file_kib if args.relay_file_kib is not None else conf.get("relay_file_kib")
    )
    max_kib = MAX_RELAYED_SIZE // 1024
    if relay_kib is not None and not (isinstance(relay_kib, int) and 0 <= relay_kib <= max_kib):
        raise CliError(f"relay_file_kib must be a whole number, 0 to {max_kib}", EXIT_USAGE)
    limit_overrides: dict[str, object] = dict(conf.get("limits", {}))  # type: ignore[call-overload]
    for item in args.limit or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--limit takes NAME=VALUE, not {item!r}", EXIT_USAGE)
        limit_overrides[name.strip()] = value.strip()
    try:
        limits = limits_with(limit_overrides)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    config = NodeConfig(
        home=home,
        listen=_addresses(listen, "--listen", DEFAULT_PORT),
        bootstrap=_addresses(bootstrap, "--bootstrap", DEFAULT_PORT),
        mdns=mdns,
        mdns_interfaces=tuple(mdns_interfaces),
        relay=relay,
        ttl_ms=DEFAULT_TTL_MS if ttl_days is None else ttl_days * 86_400_000,
        name=name if isinstance(name, str) else None,
        limits=limits,
        relay_file_max=DEFAULT_RELAYED_SIZE if relay_kib is None else relay_kib * 1024,
        clock_offset_ms=_clock_offset_ms(
            args.clock_offset if args.clock_offset is not None else conf.get("clock_offset_s")
        ),
    )
    identity = _unlock(home)
    try:
        return run_daemon(config, identity)
    except DaemonError as exc:
        raise CliError(str(exc)) from None


# --- commands that talk to the running node ---------------------------------


def _client(home: Path, timeout: float = 30.0) -> ApiClient:
    from p2pdm.apiclient import ApiClient

    return ApiClient(home / API_SOCKET_NAME, timeout=timeout)


def _print_json_lines(items: list[dict[str, object]]) -> None:
    for item in items:
        print(json.dumps(item, ensure_ascii=False))


def _texts_from(args: argparse.Namespace) -> list[str]:
    if args.stdin:
        if args.text is not None:
            raise CliError("give TEXT or --stdin, not both", EXIT_USAGE)
        texts = [line.rstrip("\n") for line in sys.stdin]
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise CliError("no text on standard input", EXIT_USAGE)
        return texts
    if args.text is None or not args.text.strip():
        raise CliError("empty text: nothing to send", EXIT_USAGE)
    return [args.text]


def cmd_send(home: Path, args: argparse.Namespace) -> int:
    if args.group is not None:
        return _send_group(home, args)
    if args.peer is None:
        raise CliError("give PEER (or --group GROUP)", EXIT_USAGE)
    if args.file is not None:
        return _send_file(home, args)
    texts = _texts_from(args)
    client = _client(home)
    ids: list[str] = []
    # Big inputs go in chunks so each request stays small.
    for start in range(0, len(texts), SEND_CHUNK):
        answer = client.post(
            "/v1/messages", {"to": args.peer, "texts": texts[start : start + SEND_CHUNK]}
        )
        for mid in answer["ids"]:
            print(mid, flush=True)
            ids.append(mid)
    if args.wait is None:
        return EXIT_OK
    return _wait_delivered(client, ids, args.wait)


def _send_file(home: Path, args: argparse.Namespace) -> int:
    """`send PEER --file PATH`: prints the message id once the offer is
    stored; with --wait, a progress bar until the peer has the whole file."""
    if args.text is not None or args.stdin:
        raise CliError("with --file give no TEXT", EXIT_USAGE)
    path = Path(args.file).expanduser().resolve()
    if not path.is_file():
        raise CliError(f"{args.file}: no such file", EXIT_USAGE)
    client = _client(home)
    with client.events("/v1/events") as events:
        answer = client.post("/v1/files", {"to": args.peer, "path": str(path)})
        print(answer["id"], flush=True)
        if args.wait is None:
            return EXIT_OK
        bar = ProgressBar(answer["file"]["name"], answer["file"]["size"])
        deadline = time.monotonic() + args.wait
        while True:
            left = deadline - time.monotonic()
            event = events.next(timeout=left) if left > 0 else None
            if event is None:
                bar.end()
                print("p2pdm: the file is not delivered yet; it stays offered", file=sys.stderr)
                return EXIT_TIMEOUT
            name, data = event
            if name == "file-sent" and data.get("id") == answer["id"]:
                bar.show(int(data["sent"]))
            elif name == "delivered" and data.get("id") == answer["id"]:
                bar.show(answer["file"]["size"])
                bar.end()
                return EXIT_OK


class ProgressBar:
    """A one-line progress bar on stderr: redrawn on a terminal, a line per
    10 % otherwise (logs stay short)."""

    WIDTH = 30

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = visible(name), size
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_tenth = -1

    def show(self, done: int) -> None:
        share = done / self.size if self.size else 1.0
        rate = done / max(time.monotonic() - self.started, 1e-3) / (1 << 20)
        filled = int(share * self.WIDTH)
        line = (
            f"{self.name} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{share:4.0%} {done / (1 << 20):.1f}/{self.size / (1 << 20):.1f} MiB {rate:.1f} MiB/s"
        )
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif int(share * 10) > self.last_tenth:
            self.last_tenth = int(share * 10)
            print(line, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def _send_group(home: Path, args: argparse.Namespace) -> int:
    """`send --group GROUP TEXT`: the one positional is the text."""
    if args.peer is not None and args.text is not None:
        raise CliError("with --group give only TEXT, no PEER", EXIT_USAGE)
    args.text = args.text if args.text is not None else args.peer
    texts = _texts_from(args)
    client = _client(home)
    copies: list[str] = []
    for start in range(0, len(texts), SEND_CHUNK):
        answer = client.post(
            f"/v1/groups/{_path_part(args.group)}/messages",
            {"texts": texts[start : start + SEND_CHUNK]},
        )
        for gm in answer["ids"]:
            print(gm, flush=True)
        copies += [mid for ids in answer["copies"].values() for mid in ids]
    if args.wait is None:
        return EXIT_OK
    return _wait_delivered(client, copies, args.wait)


def cmd_react(home: Path, args: argparse.Namespace) -> int:
    _client(home).post(f"/v1/messages/{_path_part(args.id)}/reaction", {"emoji": args.emoji})
    return EXIT_OK


def cmd_edit(home: Path, args: argparse.Namespace) -> int:
    if not args.text.strip():
        raise CliError("empty text: use `p2pdm unsend` to take a message back", EXIT_USAGE)
    _client(home).post(f"/v1/messages/{_path_part(args.id)}/edit", {"text": args.text})
    return EXIT_OK


def cmd_unsend(home: Path, args: argparse.Namespace) -> int:
    _client(home).delete(f"/v1/messages/{_path_part(args.id)}")
    return EXIT_OK


def cmd_timer(home: Path, args: argparse.Namespace) -> int:
    try:
        seconds = 0.0 if args.seconds == "off" else parse_duration(args.seconds)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    _client(home).post(f"/v1/conversations/{_path_part(args.peer)}/timer", {"seconds": seconds})
    return EXIT_OK


def cmd_group(home: Path, args: argparse.Namespace) -> int:
    client = _client(home)
    if args.action == "create":
        group = client.post("/v1/groups", {"name": args.name, "members": args.member or []})
        print(group["id"])
        return EXIT_OK
    if args.action == "list":
        found = client.get("/v1/groups")["groups"]
        if args.json:
            _print_json_lines(found)
            return EXIT_OK
        for g in found:
            left = "" if g["member"] else " (left)"
            print(f"{g['id']} {visible(g['name'])} ({len(g['members'])} members){left}")
        return EXIT_OK
    change = {"add": [args.peer]} if args.action == "add" else {"remove": [args.peer]}
    client.post(f"/v1/groups/{_path_part(args.group)}", change)
    return EXIT_OK


def _wait_delivered(client: ApiClient, ids: list[str], seconds: float) -> int:
    """Exit 0 once every message is delivered, 3 if `seconds` pass first."""
    deadline = time.monotonic() + seconds
    waiting = set(ids)
    while waiting:
        # Subscribe first, then look at the states: a receipt lands in one
        # or the other. A node drops a subscriber that falls 1,024 events
        # behind; then subscribe and look again.
        with client.events("/v1/events") as events:
            waiting = _undelivered(client, waiting)
            try:
                while waiting:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        print(
                            f"p2pdm: {len(waiting)} of {len(ids)} not yet delivered;"
                            " they stay queued",
                            file=sys.stderr,
                        )
                        return EXIT_TIMEOUT
                    event = events.next(timeout=left)
                    if event is not None and event[0] == "delivered":
                        waiting.discard(event[1].get("id"))
            except EventStreamEnded:
                continue
    return EXIT_OK


def _undelivered(client: ApiClient, ids: set[str]) -> set[str]:
    """Those of `ids` not yet delivered (asked in chunks: ids travel in the URL)."""
    ordered = sorted(ids)
    out: set[str] = set()
    for start in range(0, len(ordered), OUTBOX_QUERY_CHUNK):
        chunk = ordered[start : start + OUTBOX_QUERY_CHUNK]
        states = client.get("/v1/outbox", ids=",".join(chunk))["messages"]
        out |= {m["id"] for m in states if m["state"] not in ("delivered", "read")}
    return out


def _inbox_line(m: dict[str, object], as_json: bool) -> str:
    if as_json:
        return json.dumps(m, ensure_ascii=False)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(m["ts"])))  # type: ignore[arg-type]
    sender = m.get("from_name") or str(m["from"])[:12]
    group = f" [{str(m['group'])[:8]}]" if m.get("group") else ""
    file = m.get("file")
    if isinstance(file, dict):
        where = file.get("path") or f"{file.get('state')} {file.get('received')}/{file.get('size')}"
        return f"{when} {sender}{group}: file {visible(str(file.get('name')))} ({where})"
    return f"{when} {sender}{group}: {visible(str(m.get('text')))}"


def cmd_inbox(home: Path, args: argparse.Namespace) -> int:
    client = _client(home)
    query: dict[str, object] = {}
    if args.peer:
        query["peer"] = args.peer
    if args.limit is not None:
        query["limit"] = args.limit
    only_from = client.get("/v1/resolve", peer=args.peer)["id"] if args.peer else None
    events = client.events("/v1/events") if args.follow else None
    try:
        shown: set[str] = set()
        for m in client.get("/v1/inbox", **query)["messages"]:
            shown.add(m["id"])
            print(_inbox_line(m, args.json), flush=True)
        if events is None:
            return EXIT_OK
        while True:
            event = events.next(timeout=None)
            if event is None or event[0] != "message":
                continue
            m = event[1]
            if m["id"] in shown or (only_from is not None and m["from"] != only_from):
                continue
            shown.add(m["id"])
            print(_inbox_line(m, args.json), flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if events is not None:
            events.close()


def cmd_outbox(home: Path, args: argparse.Namespace) -> int:
    for m in _client(home).get("/v1/outbox")["messages"]:
        if args.json:
            print(json.dumps(m, ensure_ascii=False))
        else:
            text = visible(str(m.get("text")))
            print(f"{m['id'][:16]} {m['state']:<9} to {str(m['to'])[:12]}: {text}")
    return EXIT_OK


def cmd_status(home: Path, args: argparse.Namespace) -> int:
    status = _client(home).get("/v1/status")
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
    else:
        for key, value in status.items():
            print(f"{key}: {value}")
    return EXIT_OK


def cmd_peers(home: Path, args: argparse.Namespace) -> int:
    for p in _client(home).get("/v1/peers")["peers"]:
        if args.json:
            print(json.dumps(p, ensure_ascii=False))
        else:
            state = "connected" if p["connected"] else "offline"
            print(f"{p['id']} {state:<9} {' '.join(p['addresses'])}")
    return EXIT_OK


def cmd_contacts(home: Path, args: argparse.Namespace) -> int:
    client = _client(home)
    if args.action == "list":
        for c in client.get("/v1/contacts")["contacts"]:
            if args.json:
                print(json.dumps(c, ensure_ascii=False))
            else:
                flag = " (blocked)" if c["blocked"] else ""
                print(f"{c['id']} {c.get('name') or ''}{flag}")
        return EXIT_OK
    if args.action == "add":
        body: dict[str, object] = {"id": args.target}
        if args.name:
            body["name"] = args.name
        client.post("/v1/contacts", body)
    elif args.action == "remove":
        client.delete(f"/v1/contacts/{_path_part(args.target)}")
    else:
        client.post(f"/v1/contacts/{_path_part(args.target)}/{args.action}", {})
    return EXIT_OK


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def cmd_requests(home: Path, args: argparse.Namespace) -> int:
    for r in _client(home).get("/v1/requests")["requests"]:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            last = _when(r["last"]) if r["last"] is not None else "-"
            text = visible(str(r["last_text"]))
            print(f"{r['peer']} {r['received']} message(s), last {last}: {text}")
    return EXIT_OK


def cmd_accept(home: Path, args: argparse.Namespace) -> int:
    answer = _client(home).post(f"/v1/requests/{_path_part(args.peer)}/accept", {})
    print(answer["id"])
    return EXIT_OK


def cmd_read(home: Path, args: argparse.Namespace) -> int:
    answer = _client(home).post("/v1/read", {"peer": args.peer})
    print(f"{len(answer['read'])} message(s) marked read")
    return EXIT_OK


def cmd_search(home: Path, args: argparse.Namespace) -> int:
    query: dict[str, object] = {"q": args.text}
    if args.peer:
        query["peer"] = args.peer
    if args.limit is not None:
        query["limit"] = args.limit
    for hit in _client(home).get("/v1/search", **query)["results"]:
        if args.json:
            print(json.dumps(hit, ensure_ascii=False))
        else:
            who = hit["peer_name"] or hit["peer"][:12]
            arrow = f"to {who}" if hit["mine"] else f"from {who}"
            print(f"{_when(hit['ts'])} {arrow}: {visible(hit['snippet'])}")
    return EXIT_OK


def cmd_settings(home: Path, args: argparse.Namespace) -> int:
    client = _client(home)
    changes: dict[str, object] = {}
    if args.read_receipts is not None:
        changes["read_receipts"] = args.read_receipts == "on"
    if args.accept is not None:
        changes["accept"] = args.accept
    settings = client.post("/v1/settings", changes) if changes else client.get("/v1/settings")
    if args.json:
        print(json.dumps(settings))
    else:
        print(f"read_receipts: {'on' if settings['read_receipts'] else 'off'}")
        print(f"accept: {settings['accept']}")
    return EXIT_OK


def cmd_chat(home: Path, args: argparse.Namespace) -> int:
    from p2pdm.chat import run_chat

    return run_chat(home, args.peer)


def _path_part(text: str) -> str:
    """`text` as one path segment: a name with "/" or "?" must not change the path."""
    return urllib.parse.quote(text, safe="")


def _seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pdm", description="Peer-to-peer direct messaging.")
    parser.add_argument("--version", action="version", version=f"p2pdm {__version__}")
    parser.add_argument(
        "--home", help="node home folder (default: $P2PDM_HOME, else the user data folder)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create this node's identity")
    p.add_argument("--name", help="a display name for this node")
    p.add_argument(
        "--passphrase",
        action="store_true",
        help=f"lock the key with a passphrase (asked for, or ${PASSPHRASE_ENV})",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("id", help="print this node's id")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("safety-number", help="the number to compare with a peer out of band")
    p.add_argument("peer", help="the peer's node id")
    p.set_defaults(func=cmd_safety_number)

    p = sub.add_parser("run", help="run the node daemon in the foreground")
    p.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on (repeatable; default 0.0.0.0:7707, port 0 picks one)",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        metavar="HOST:PORT",
        help="peer address to keep connected (repeatable)",
    )
    p.add_argument(
        "--no-mdns",
        dest="mdns",
        action="store_false",
        default=None,
        help="do not use mDNS on the local network",
    )
    p.add_argument(
        "--mdns-interface",
        action="append",
        metavar="NAME",
        help="use mDNS on this interface only (repeatable; default: every interface)",
    )
    relay = p.add_mutually_exclusive_group()
    relay.add_argument(
        "--relay",
        dest="relay",
        action="store_true",
        default=None,
        help="hold mail for other peers (default)",
    )
    relay.add_argument(
        "--no-relay", dest="relay", action="store_false", help="do not hold mail for other peers"
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--name", help="display name of this node (shown in status)")
    p.add_argument(
        "--ttl-days", type=int, metavar="DAYS", help="how long sent messages live (default 7)"
    )
    p.add_argument(
        "--relay-file-kib",
        type=int,
        metavar="KIB",
        help="send files up to this size in parts that relays carry (default 1024)",
    )
    p.add_argument(
        "--clock-offset",
        type=int,
        metavar="SECONDS",
        help="run as if the clock were off by this much (for testing; default 0)",
    )
    p.add_argument(
        "--limit",
        action="append",
        metavar="NAME=VALUE",
        help="change a transport limit, e.g. handshake_timeout=5 (repeatable)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("send", help="send a message (prints its id once stored)")
    p.add_argument("peer", nargs="?", help="node id, unique prefix of one, or contact name")
    p.add_argument("text", nargs="?", help="the message")
    p.add_argument("--group", help="send to this group (id, id prefix or name) instead")
    p.add_argument("--file", metavar="PATH", help="send this file (up to 100 MiB)")
    p.add_argument("--stdin", action="store_true", help="one message per line of input")
    p.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="wait for delivery receipts: exit 0 when all came, 3 on timeout",
    )
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("react", help="react to a message (an empty EMOJI takes it back)")
    p.add_argument("id", help="the message id (hex)")
    p.add_argument("emoji")
    p.set_defaults(func=cmd_react)
    p = sub.add_parser("edit", help="change the text of a message you sent, on both sides")
    p.add_argument("id", help="the message id (hex)")
    p.add_argument("text")
    p.set_defaults(func=cmd_edit)
    p = sub.add_parser("unsend", help="delete a message you sent, on both sides")
    p.add_argument("id", help="the message id (hex)")
    p.set_defaults(func=cmd_unsend)
    p = sub.add_parser("timer", help="disappearing messages in a conversation, both ways")
    p.add_argument("peer", help="node id, unique prefix of one, or contact name")
    p.add_argument("seconds", help="e.g. 30, 10m, 1h, 7d; or off")
    p.set_defaults(func=cmd_timer)

    p = sub.add_parser("group", help="group conversations")
    gsub = p.add_subparsers(dest="action", required=True)
    g = gsub.add_parser("create", help="create a group (prints its id)")
    g.add_argument("name")
    g.add_argument("--member", action="append", metavar="PEER", help="a member (repeatable)")
    for action, text in (("add", "add a member"), ("remove", "remove a member")):
        g = gsub.add_parser(action, help=text + " (admins only)")
        g.add_argument("group", help="group id, id prefix or name")
        g.add_argument("peer")
    g = gsub.add_parser("list", help="groups this node is or was in")
    g.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_group)

    p = sub.add_parser("inbox", help="received messages, oldest first")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--follow", action="store_true", help="keep printing new messages")
    p.add_argument("--peer", help="only messages from this peer")
    p.add_argument("--limit", type=int, help="only the last N messages")
    p.set_defaults(func=cmd_inbox)

    p = sub.add_parser("outbox", help="sent messages and their state")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_outbox)

    p = sub.add_parser("status", help="the running node's state")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("peers", help="known peers and whether they are connected")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_peers)

    p = sub.add_parser("contacts", help="manage contacts")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("add", help="add a contact")
    c.add_argument("target", metavar="ID")
    c.add_argument("--name")
    c = csub.add_parser("list", help="list contacts")
    c.add_argument("--json", action="store_true")
    for action, text in (
        ("remove", "forget a contact"),
        ("block", "drop all messages from a peer"),
        ("unblock", "accept messages from a peer again"),
    ):
        c = csub.add_parser(action, help=text)
        c.add_argument("target", metavar="PEER")
    p.set_defaults(func=cmd_contacts)

    p = sub.add_parser("chat", help="full-screen chat with the running node")
    p.add_argument("peer", nargs="?", help="open this conversation first")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("requests", help="message requests from people who are not contacts")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_requests)

    p = sub.add_parser("accept", help="accept a message request (the peer becomes a contact)")
    p.add_argument("peer", help="node id, unique prefix of one, or contact name")
    p.set_defaults(func=cmd_accept)

    p = sub.add_parser("read", help="mark a peer's messages read (sends read receipts if on)")
    p.add_argument("peer", help="node id, unique prefix of one, or contact name")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("search", help="search messages both ways, newest first")
    p.add_argument("text", help="words to find (each matches the start of a word)")
    p.add_argument("--peer", help="only the conversation with this peer")
    p.add_argument("--limit", type=int, help="at most N results (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("settings", help="show or change chat settings")
    p.add_argument("--read-receipts", choices=("on", "off"), help="send read receipts")
    p.add_argument(
        "--accept",
        choices=("everyone", "contacts", "requests"),
        help="whose messages reach the inbox (requests: strangers' wait for `accept`)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    home = resolve_home(args.home)
    try:
        code: int = args.func(home, args)
    except CliError as exc:
        print(f"p2pdm: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:  # a bad config file or name: bad input
        print(f"p2pdm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except IdentityError as exc:
        print(f"p2pdm: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command == "safety-number" else EXIT_FAILED
    except ApiUnavailable as exc:
        print(f"p2pdm: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ApiRequestError as exc:
        print(f"p2pdm: {exc}", file=sys.stderr)
        return EXIT_USAGE if 400 <= exc.status < 500 else EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
