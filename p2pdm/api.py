"""The local API of a running node: routes over `httpapi`, answering from `Node`.

Every route and its JSON shapes are in `OPENAPI` below, served at
`/openapi.json`. Errors are `{"error": ..., "hint": ...}` with a 4xx status
for the caller's mistakes and 5xx for the node's.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from p2pdm import __version__, files, groups, wire
from p2pdm.envelope import (
    CHANGE_KINDS,
    GROUP_MESSAGE_ID_LEN,
    MAX_DISAPPEAR_MS,
    MAX_TEXT_LEN,
    MESSAGE_ID_LEN,
    MIN_DISAPPEAR_MS,
    RECEIPT_KINDS,
    MessageKind,
)
from p2pdm.httpapi import ApiError, Request, Response, Router, StreamResponse, json_response
from p2pdm.identity import safety_number
from p2pdm.node import MAX_TTL_MS, group_json
from p2pdm.settings import AcceptPolicy
from p2pdm.store import OutboxState, StoreError, text_of_body

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable

    from p2pdm.identity import NodeId
    from p2pdm.node import Node
    from p2pdm.store import ChatRow, ConversationRow, FileIn, InboxRow, OutboxRow, SearchHit

# One request may send this many messages (the CLI chunks --stdin by it).
MAX_TEXTS_PER_REQUEST = 1000
MAX_LIST = 100_000
# Without ?limit= a list holds the latest this many (an answer stays a few MB).
DEFAULT_LIST = 10_000
# Comment lines on the event stream, so a dead client is noticed.
EVENT_KEEPALIVE = 15.0
# A conversation page and a search answer hold at most this many messages.
MAX_PAGE = 500
DEFAULT_PAGE = 50
# Ids one read request may mark.
MAX_READ_IDS = 10_000
# Kinds the inbox does not list: they report on, or change, other things.
NOT_LISTED_KINDS = (
    RECEIPT_KINDS
    | CHANGE_KINDS
    | {
        MessageKind.GROUP,
        MessageKind.TIMER,
        MessageKind.FILE_PART,
    }
)


def _ms_to_s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def inbox_json(row: InboxRow, names: dict[NodeId, str], request: bool) -> dict[str, Any]:
    return {
        "id": row.message_id.hex(),
        "from": str(row.sender),
        "from_name": names.get(row.sender),
        "to": str(row.recipient),
        "ts": row.timestamp_ms / 1000,
        "received": row.received_ms / 1000,
        "kind": row.kind,
        "text": text_of_body(row.body),
        "group": row.group.hex() if row.group is not None else None,
        "read": row.read,
        "request": request,
        "seq": row.seq,
    }


def chat_json(
    row: ChatRow,
    reactions: list[tuple[NodeId, str]] | None = None,
    received_file: FileIn | None = None,
) -> dict[str, Any]:
    out = {
        "id": row.message_id.hex(),
        "mine": row.mine,
        "ts": row.ms / 1000,
        "sent": row.timestamp_ms / 1000,
        "text": None if row.deleted else row.text,
        "read": row.read,
        "state": None if row.state is None else _state_of(row.state, row.relayed_to),
        "cursor": row.cursor,
        "edited": row.edited_ms is not None,
        "deleted": row.deleted,
        "vanish": _ms_to_s(row.vanish_ms),
        "reactions": {str(who): emoji for who, emoji in reactions or ()},
    }
    if received_file is not None:
        out["file"] = file_json(received_file)
    elif row.kind == MessageKind.FILE:
        offer = files.parse_offer(row.body)
        out["file"] = offer.summary()
    return out


def conversation_json(row: ConversationRow, online: bool, requests: bool) -> dict[str, Any]:
    return {
        "peer": str(row.peer),
        "name": row.name,
        "contact": row.contact,
        "blocked": row.blocked,
        "request": requests and not row.contact,
        "online": online,
        "unread": row.unread,
        "received": row.received,
        "last": _ms_to_s(row.last_ms),
        "last_text": row.last_text,
        "last_mine": row.last_mine,
    }


def hit_json(hit: SearchHit, names: dict[NodeId, str]) -> dict[str, Any]:
    return {
        "id": hit.message_id.hex(),
        "peer": str(hit.peer),
        "peer_name": names.get(hit.peer),
        "mine": hit.mine,
        "ts": hit.ms / 1000,
        "text": hit.text,
        "snippet": hit.snippet,
    }


def outbox_json(row: OutboxRow) -> dict[str, Any]:
    return {
        "id": row.message_id.hex(),
        "to": str(row.recipient),
        "ts": row.created_ms / 1000,
        "expires": row.expires_ms / 1000,
        "kind": row.kind,
        "text": row.body if isinstance(row.body, str) else None,
        "state": _state(row),
        "attempts": row.attempts,
        "relayed_to": row.relayed_to,
        "delivered": _ms_to_s(row.delivered_ms),
    }


def _state(row: OutboxRow) -> str:
    return _state_of(row.state, row.relayed_to)


def _state_of(state: OutboxState, relayed_to: int) -> str:
    """The outbox state as users see it: a message only relays hold is "relayed"."""
    if state is OutboxState.SENT and relayed_to > 0:
        return "relayed"
    return state.value


def _message_ids(value: object, most: int) -> list[bytes]:
    problem = f"ids must be a list of 1 to {most} hex message ids"
    if not isinstance(value, list) or not 0 < len(value) <= most:
        raise ApiError(400, problem)
    out = []
    for item in value:
        try:
            mid = bytes.fromhex(item) if isinstance(item, str) else b""
        except ValueError:
            mid = b""
        if len(mid) != MESSAGE_ID_LEN:
            raise ApiError(400, f"{problem}; {str(item)[:80]!r} is not one")
        out.append(mid)
    return out


def _changed_id(text: str) -> bytes:
    """A message to react to or change: a message id, or a group message's
    shared id (hex)."""
    try:
        found = bytes.fromhex(text)
    except ValueError:
        found = b""
    if len(found) not in (MESSAGE_ID_LEN, GROUP_MESSAGE_ID_LEN):
        raise ApiError(400, "give a message id, or a group message's shared id (gm), in hex")
    return found


def file_json(entry: FileIn) -> dict[str, Any]:
    """A file offered to us: what it is, and how far its fetch is."""
    offer = files.parse_offer(entry.offer)
    received = (
        offer.size
        if entry.state == "done"
        else min(offer.size, entry.next_chunk * files.CHUNK_SIZE)
    )
    out: dict[str, Any] = {**offer.summary(), "state": entry.state, "received": received}
    if entry.path is not None:
        out["path"] = entry.path
    if entry.reason is not None:
        out["reason"] = entry.reason
    return out


def _texts(body: dict[str, Any]) -> list[str]:
    """The texts of a send request: "text", or "texts" (a list)."""
    if "texts" in body:
        texts = body["texts"]
        if not isinstance(texts, list) or not 0 < len(texts) <= MAX_TEXTS_PER_REQUEST:
            raise ApiError(400, f"texts must be a list of 1 to {MAX_TEXTS_PER_REQUEST} texts")
    else:
        texts = [body.get("text")]
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "empty text: nothing to send")
        if len(text) > MAX_TEXT_LEN:
            raise ApiError(400, f"text is {len(text)} characters; the limit is {MAX_TEXT_LEN}")
    return texts


def group_message_json(
    m: dict[str, Any], names: dict[NodeId, str], reactions: list[tuple[NodeId, str]]
) -> dict[str, Any]:
    """One group message, either way; ours with each member's copy's state.
    `gm` (the shared id) is what reactions, edits and unsends name."""
    body = m["body"]
    out: dict[str, Any] = {
        "mine": m["mine"],
        "ts": m["ts_ms"] / 1000,
        "text": body.get("t") if isinstance(body, dict) and not m["deleted"] else None,
        "gm": m["gm"].hex(),
        "edited": m["edited"],
        "deleted": m["deleted"],
        "reactions": {str(who): emoji for who, emoji in reactions},
    }
    if m["mine"]:
        out["members"] = {
            str(peer): {"id": mid.hex(), "state": _state_of(state, relayed)}
            for peer, mid, state, relayed in m["copies"]
        }
    else:
        out.update(id=m["id"].hex(), from_=str(m["from"]), read=m["read"])
        out["from"] = out.pop("from_")
        out["from_name"] = names.get(m["from"])
    return out


def _int_query(request: Request, name: str, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    # ASCII digits only (str.isdigit takes "²"), and short enough to convert cheaply.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not lo <= int(raw) <= hi:
        raise ApiError(400, f"{name} must be an integer in {lo}..{hi}")
    return int(raw)


def _ttl_ms(value: object) -> int | None:
    """A message lifetime in ms from the API's `ttl_s` (seconds), checked."""
    if value is None:
        return None
    problem = f"ttl_s must be a number of seconds, more than 0 and at most {MAX_TTL_MS // 1000}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, problem)
    try:
        seconds = float(value)
    except OverflowError:  # an integer too large for a float
        raise ApiError(400, problem) from None
    if not math.isfinite(seconds) or not 0 < seconds * 1000 <= MAX_TTL_MS:
        raise ApiError(400, problem)
    return max(1, int(seconds * 1000))


class Api:
    def __init__(self, node: Node) -> None:
        self.node = node

    def router(self) -> Router:
        r = Router()
        r.route("GET", "/openapi.json")(self.openapi)
        r.route("GET", "/v1/status")(self.status)
        r.route("POST", "/v1/messages")(self.send)
        r.route("GET", "/v1/inbox")(self.inbox)
        r.route("GET", "/v1/outbox")(self.outbox)
        r.route("GET", "/v1/peers")(self.peers)
        r.route("GET", "/v1/resolve")(self.resolve)
        r.route("GET", "/v1/contacts")(self.contacts)
        r.route("POST", "/v1/contacts")(self.add_contact)
        r.route("DELETE", "/v1/contacts/{peer}")(self.remove_contact)
        r.route("POST", "/v1/contacts/{peer}/block")(self.block)
        r.route("POST", "/v1/contacts/{peer}/unblock")(self.unblock)
        r.route("GET", "/v1/events")(self.event_stream)
        r.route("GET", "/v1/conversations")(self.conversations)
        r.route("GET", "/v1/conversations/{peer}")(self.conversation)
        r.route("GET", "/v1/requests")(self.requests)
        r.route("POST", "/v1/requests/{peer}/accept")(self.accept)
        r.route("POST", "/v1/read")(self.read)
        r.route("POST", "/v1/typing")(self.typing)
        r.route("GET", "/v1/search")(self.search)
        r.route("GET", "/v1/settings")(self.get_settings)
        r.route("POST", "/v1/settings")(self.change_settings)
        r.route("GET", "/v1/safety-number/{peer}")(self.safety)
        r.route("POST", "/v1/files")(self.send_file)
        r.route("POST", "/v1/messages/{id}/reaction")(self.react)
        r.route("POST", "/v1/messages/{id}/edit")(self.edit)
        r.route("DELETE", "/v1/messages/{id}")(self.unsend)
        r.route("POST", "/v1/conversations/{peer}/timer")(self.set_timer)
        r.route("GET", "/v1/groups")(self.groups)
        r.route("POST", "/v1/groups")(self.create_group)
        r.route("POST", "/v1/groups/{group}")(self.change_group)
        r.route("GET", "/v1/groups/{group}/messages")(self.group_messages)
        r.route("POST", "/v1/groups/{group}/messages")(self.send_group)
        return r

    # --- reactions, edits, unsend, disappearing ---------------------------------

    async def _changed(self, change: Awaitable[None]) -> Response:
        try:
            await change
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, f"not stored: {exc}", "nothing was sent; try again") from None
        return json_response({"ok": True})

    async def react(self, request: Request) -> Response:
        message_id = _changed_id(request.params["id"])
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("emoji"), str):
            raise ApiError(400, 'body must be {"emoji": EMOJI} ("" takes it back)')
        return await self._changed(self.node.react(message_id, body["emoji"]))

    async def edit(self, request: Request) -> Response:
        message_id = _changed_id(request.params["id"])
        body = request.json()
        if not isinstance(body, dict) or set(body) != {"text"}:
            raise ApiError(400, 'body must be {"text": NEW_TEXT}')
        [text] = _texts(body)
        return await self._changed(self.node.change_own_text(message_id, text))

    async def unsend(self, request: Request) -> Response:
        message_id = _changed_id(request.params["id"])
        return await self._changed(self.node.change_own_text(message_id, None))

    async def set_timer(self, request: Request) -> Response:
        peer = await self._resolve(request.params["peer"])
        body = request.json()
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ApiError(400, 'body must be {"seconds": N} (0 turns it off)')
        # Checked before scaling: 1e308 s in ms is infinity, which round() refuses.
        if seconds > MAX_DISAPPEAR_MS / 1000:
            raise ApiError(
                400,
                f"the timer is off (0) or {MIN_DISAPPEAR_MS // 1000} s to "
                f"{MAX_DISAPPEAR_MS // 86_400_000} days",
            )
        return await self._changed(self.node.set_timer(peer, round(seconds * 1000)))

    # --- files ----------------------------------------------------------------

    async def send_file(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise ApiError(400, 'body must be {"to": PEER, "path": FILE_PATH}')
        path = PurePath(body["path"])
        if not path.is_absolute():
            raise ApiError(400, "path must be absolute (the node may run in another folder)")
        to = await self._resolve(body.get("to"))
        if to == self.node.identity.node_id:
            raise ApiError(400, "that is this node's own id")
        try:
            message_id, offer = await self.node.send_file(to, Path(path))
        except (ValueError, OSError) as exc:  # FileError is a ValueError
            raise ApiError(400, f"cannot send {path.name}: {exc}") from None
        except StoreError as exc:
            raise ApiError(507, f"not stored: {exc}", "nothing was sent; try again") from None
        return json_response(
            {
                "id": message_id.hex(),
                "to": str(to),
                "file": {**offer.summary(), "inline": offer.inline is not None},
            },
            status=201,
        )

    # --- groups ---------------------------------------------------------------

    async def _groups(self) -> list[groups.GroupState]:
        held = await self._store(self.node.store.groups)
        return [groups.parse_state(wire.decode(state)) for _, state, _ in held]

    async def _group(self, text: str) -> groups.GroupState:
        """A group by its id (hex), a unique prefix of it, or its exact name."""
        text = text.strip().lower()
        found = await self._groups()
        exact = [g for g in found if g.group_id.hex() == text]
        if not exact and len(text) >= 4:
            exact = [g for g in found if g.group_id.hex().startswith(text)]
        if not exact:
            exact = [g for g in found if g.name.lower() == text]
        if not exact:
            raise ApiError(404, f"no group {text!r}", "see `p2pdm group list`")
        if len(exact) > 1:
            raise ApiError(400, f"{text!r} names {len(exact)} groups; use the id")
        return exact[0]

    async def _peers(self, value: object, what: str) -> list[NodeId]:
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > groups.MAX_MEMBERS:
            raise ApiError(400, f"{what} must be a list of at most {groups.MAX_MEMBERS} peers")
        return [await self._resolve(v) for v in value]

    async def groups(self, request: Request) -> Response:
        me = self.node.identity.node_id
        return json_response({"groups": [group_json(g, me) for g in await self._groups()]})

    async def create_group(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ApiError(400, 'body must be {"name": NAME, "members": [PEER, ...]}')
        members = await self._peers(body.get("members", []), "members")
        try:
            state = await self.node.create_group(body["name"], members)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, f"not stored: {exc}") from None
        return json_response(group_json(state, self.node.identity.node_id), status=201)

    async def change_group(self, request: Request) -> Response:
        group = await self._group(request.params["group"])
        body = request.json()
        if not isinstance(body, dict) or not set(body) <= {"name", "add", "remove", "admins"}:
            raise ApiError(400, 'body may hold "name", "add", "remove" and "admins"')
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "name must be text")
        try:
            state = await self.node.change_group(
                group.group_id,
                name=name,
                add=await self._peers(body.get("add"), "add"),
                remove=await self._peers(body.get("remove"), "remove"),
                admins=await self._peers(body.get("admins"), "admins"),
            )
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, f"not stored: {exc}") from None
        return json_response(group_json(state, self.node.identity.node_id))

    async def group_messages(self, request: Request) -> Response:
        group = await self._group(request.params["group"])
        limit = _int_query(request, "limit", 1, MAX_PAGE) or DEFAULT_PAGE
        rows = await self._store(self.node.store.group_messages, group.group_id, limit)
        names = await self._names()
        shared = [m["gm"] for m in rows]
        reactions = await self._store(self.node.store.reactions, shared)
        return json_response(
            {
                "group": group_json(group, self.node.identity.node_id),
                "messages": [
                    group_message_json(m, names, reactions.get(gm, []))
                    for m, gm in zip(rows, shared, strict=True)
                ],
            }
        )

    async def send_group(self, request: Request) -> Response:
        group = await self._group(request.params["group"])
        body = request.json()
        if not isinstance(body, dict):
            raise ApiError(400, 'body must be {"text": TEXT} or {"texts": [...]}')
        texts = _texts(body)
        try:
            shared, copies = await self.node.send_group_texts(group.group_id, texts)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, f"not stored: {exc}", "nothing was sent; try again") from None
        return json_response(
            {
                "group": group.group_id.hex(),
                "ids": [gm.hex() for gm in shared],
                "copies": {str(p): [i.hex() for i in ids] for p, ids in copies.items()},
            },
            status=201,
        )

    async def _store(self, fn: Any, *args: Any) -> Any:
        try:
            return await self.node.store_call(fn, *args)
        except StoreError as exc:
            raise ApiError(400, str(exc)) from None

    async def _resolve(self, text: object) -> NodeId:
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "peer must be a node id, a unique prefix of one, or a contact name")
        try:
            peer: NodeId = await self.node.store_call(self.node.store.resolve_peer, text.strip())
        except StoreError as exc:
            raise ApiError(400, str(exc), "see `p2pdm contacts list` and `p2pdm peers`") from None
        return peer

    async def openapi(self, request: Request) -> Response:
        return json_response(OPENAPI)

    async def status(self, request: Request) -> Response:
        node = self.node
        pending = await self._store(node.store.outbox_pending_count, node.now_ms())
        relay_count, relay_bytes = await self._store(node.store.relay_usage)
        bytes_sent, bytes_received = node.traffic()
        return json_response(
            {
                "id": str(node.identity.node_id),
                "version": __version__,
                "name": node.config.name,
                "listen": [f"{h}:{p}" for h, p in node.bound],
                "connected": len(node.connected()),
                "outbox_pending": pending,
                "relay_stored": relay_count,
                "relay_bytes": relay_bytes,
                "relay": node.config.relay,
                "mdns": node.config.mdns,
                "uptime": round(time.time() - node.started_at, 3),
                "discovery": {
                    "mdns_running": node.mdns is not None,
                    "mdns_hints": node.mdns_hints,
                    "dials": node.peer_table.dials_started,
                    "discovery_dials": node.peer_table.discovery_dials,
                },
                "since_start": {
                    "received": node.messages_received,
                    "delivered": node.messages_delivered,
                    "duplicates": node.duplicates_received,
                    "relay_received": node.relay_received,
                    "notices_taken": node.notices_taken,
                    "reconciliations": node.reconciliations,
                    "reconcile_rounds": node.recon_rounds,
                    "reconcile_bytes": node.recon_bytes,
                    "bytes_sent": bytes_sent,
                    "bytes_received": bytes_received,
                    "frame_bytes_sent": node.frame_bytes(),
                },
            }
        )

    async def send(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise ApiError(400, 'body must be {"to": PEER, "text": TEXT} or {"to", "texts": [...]}')
        texts = _texts(body)
        ttl_ms = _ttl_ms(body.get("ttl_s"))
        to = await self._resolve(body.get("to"))
        if to == self.node.identity.node_id:
            raise ApiError(400, "that is this node's own id")
        try:
            ids = await self.node.send_texts(to, texts, ttl_ms)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, f"not stored: {exc}", "nothing was sent; try again") from None
        return json_response({"ids": [i.hex() for i in ids], "to": str(to)}, status=201)

    async def inbox(self, request: Request) -> Response:
        node = self.node
        peer = await self._resolve(request.query["peer"]) if "peer" in request.query else None
        limit = _int_query(request, "limit", 1, MAX_LIST) or DEFAULT_LIST
        after = _int_query(request, "after", 0, 1 << 62)
        kinds = sorted(int(k) for k in NOT_LISTED_KINDS)
        rows = await self._store(node.store.inbox, peer, limit, after, kinds)
        contacts = await self._store(self.node.store.contacts)
        names = {c.node_id: c.name for c in contacts if c.name}
        known = {c.node_id for c in contacts}
        requests = self.node.settings.accept is not AcceptPolicy.EVERYONE
        by_message = await self._files_in(
            [r.message_id for r in rows if r.kind == MessageKind.FILE]
        )
        messages = []
        for r in rows:
            m = inbox_json(r, names, requests and r.sender not in known)
            if r.message_id in by_message:
                m["file"] = file_json(by_message[r.message_id])
            messages.append(m)
        return json_response({"messages": messages})

    async def _files_in(self, message_ids: list[bytes]) -> dict[bytes, FileIn]:
        """Files offered to us in these messages, by message id."""
        if not message_ids:
            return {}
        found = functools.partial(self.node.store.files_in, message_ids=message_ids)
        return {f.message_id: f for f in await self._store(found)}

    async def _names(self) -> dict[NodeId, str]:
        contacts = await self._store(self.node.store.contacts)
        return {c.node_id: c.name for c in contacts if c.name}

    async def outbox(self, request: Request) -> Response:
        node = self.node
        wanted = request.query.get("ids")
        # Checked even with ?ids= (which it does not bound): a bad one is never ignored.
        limit = _int_query(request, "limit", 1, MAX_LIST) or DEFAULT_LIST
        if wanted is not None:
            try:
                ids = [bytes.fromhex(i) for i in wanted.split(",") if i]
            except ValueError:
                raise ApiError(400, "ids must be comma-separated hex message ids") from None
            rows = [await self._store(node.store.outbox_message, i) for i in ids]
            found = [r for r in rows if r is not None]
        else:
            found = await self._store(node.store.outbox, limit)
        return json_response(
            {"messages": [outbox_json(r) for r in found if r.kind not in RECEIPT_KINDS]}
        )

    async def peers(self, request: Request) -> Response:
        rows = await self._store(self.node.store.peers)
        connected = self.node.connected()
        out = []
        for row in rows:
            sources = sorted({a.source.value for a in row.addresses})
            # A signed record outranks an mDNS claim for the same address in
            # the store, but "heard by mDNS" is still how the peer was found.
            if self.node.peer_table.was_discovered(row.node_id):
                sources.insert(0, "mdns")
            if row.node_id in connected:
                link = self.node.links[row.node_id]
                sources.append("inbound" if not link.conn.initiator else "outbound")
            out.append(
                {
                    "id": str(row.node_id),
                    "addresses": [f"{a.host}:{a.port}" for a in row.addresses],
                    "source": ",".join(dict.fromkeys(sources)) or "connection",
                    "connected": row.node_id in connected,
                    "last_seen": _ms_to_s(row.last_seen_ms),
                }
            )
        return json_response({"peers": out})

    async def resolve(self, request: Request) -> Response:
        return json_response({"id": str(await self._resolve(request.query.get("peer")))})

    async def contacts(self, request: Request) -> Response:
        rows = await self._store(self.node.store.contacts)
        return json_response(
            {
                "contacts": [
                    {
                        "id": str(c.node_id),
                        "name": c.name,
                        "blocked": c.blocked,
                        "added": c.added_ms / 1000,
                    }
                    for c in rows
                ]
            }
        )

    async def add_contact(self, request: Request) -> Response:
        from p2pdm.identity import InvalidNodeId, NodeId

        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ApiError(400, 'body must be {"id": NODE_ID, "name": optional name}')
        try:
            node_id = NodeId.parse(body["id"])
        except InvalidNodeId as exc:
            raise ApiError(400, f"bad node id: {exc}") from None
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "name must be text")
        row = await self._store(self.node.store.add_contact, node_id, name, self.node.now_ms())
        self.node.files_offered({node_id})  # files from a new contact are fetched now
        return json_response({"id": str(row.node_id), "name": row.name}, status=201)

    async def remove_contact(self, request: Request) -> Response:
        peer = await self._resolve(request.params["peer"])
        removed = await self._store(self.node.store.remove_contact, peer)
        if not removed:
            raise ApiError(404, f"{peer} is not a contact")
        return json_response({"id": str(peer), "removed": True})

    async def _set_blocked(self, request: Request, blocked: bool) -> Response:
        peer = await self._resolve(request.params["peer"])
        await self.node.set_blocked(peer, blocked)
        return json_response({"id": str(peer), "blocked": blocked})

    async def block(self, request: Request) -> Response:
        return await self._set_blocked(request, True)

    async def unblock(self, request: Request) -> Response:
        return await self._set_blocked(request, False)

    # --- chat ---------------------------------------------------------------

    async def _conversation_rows(self) -> list[dict[str, Any]]:
        rows = await self._store(self.node.store.conversations)
        online = self.node.connected()
        requests = self.node.settings.accept is not AcceptPolicy.EVERYONE
        return [conversation_json(r, r.peer in online, requests) for r in rows]

    async def conversations(self, request: Request) -> Response:
        rows = [c for c in await self._conversation_rows() if not c["request"]]
        return json_response({"conversations": [c for c in rows if not c["blocked"]]})

    async def requests(self, request: Request) -> Response:
        rows = await self._conversation_rows()
        return json_response({"requests": [c for c in rows if c["request"]]})

    async def conversation(self, request: Request) -> Response:
        peer = await self._resolve(request.params["peer"])
        limit = _int_query(request, "limit", 1, MAX_PAGE) or DEFAULT_PAGE
        rows = await self._store(
            self.node.store.conversation, peer, limit, request.query.get("before")
        )
        store = self.node.store
        reactions = await self._store(store.reactions, [r.message_id for r in rows])
        timer = await self._store(store.timer, peer)
        offered = [r.message_id for r in rows if r.kind == MessageKind.FILE and not r.mine]
        received = await self._files_in(offered)
        return json_response(
            {
                "peer": str(peer),
                "timer": timer / 1000,
                "messages": [
                    chat_json(r, reactions.get(r.message_id), received.get(r.message_id))
                    for r in rows
                ],
                # Older history continues before the first row of a full page.
                "before": rows[0].cursor if len(rows) == limit else None,
            }
        )

    async def accept(self, request: Request) -> Response:
        peer = await self._resolve(request.params["peer"])
        if await self._store(self.node.store.is_blocked, peer):
            raise ApiError(
                409, f"{peer} is blocked", f"unblock it first: p2pdm contacts unblock {peer}"
            )
        added = await self.node.accept_peer(peer)
        return json_response({"id": str(peer), "accepted": True, "was_request": added})

    async def read(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or ("ids" in body) == ("peer" in body):
            raise ApiError(400, 'body must be {"ids": [hex ids]} or {"peer": PEER}')
        if "ids" in body:
            ids, peer = _message_ids(body["ids"], MAX_READ_IDS), None
        else:
            ids, peer = [], await self._resolve(body["peer"])
        try:
            changed = await self.node.mark_read(ids, peer)
        except StoreError as exc:
            raise ApiError(507, f"not stored: {exc}") from None
        return json_response({"read": [i.hex() for i in changed]})

    async def typing(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise ApiError(400, 'body must be {"to": PEER, "active": true or false}')
        to = await self._resolve(body.get("to"))
        why_not = await self.node.send_typing(to, body["active"])
        return json_response({"sent": why_not is None, "reason": why_not})

    async def search(self, request: Request) -> Response:
        text = request.query.get("q", "")
        limit = _int_query(request, "limit", 1, MAX_PAGE) or DEFAULT_PAGE
        peer = await self._resolve(request.query["peer"]) if "peer" in request.query else None
        hits = await self._store(self.node.store.search, text, limit, peer)
        names = await self._names()
        return json_response({"results": [hit_json(h, names) for h in hits]})

    async def get_settings(self, request: Request) -> Response:
        return json_response(self.node.settings.to_json())

    async def change_settings(self, request: Request) -> Response:
        try:
            new = await self.node.change_settings(request.json())
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except StoreError as exc:
            raise ApiError(507, f"not stored: {exc}") from None
        return json_response(new.to_json())

    async def safety(self, request: Request) -> Response:
        peer = await self._resolve(request.params["peer"])
        number = safety_number(self.node.identity.node_id, peer)
        return json_response({"id": str(peer), "safety_number": number})

    async def event_stream(self, request: Request) -> Response:
        channel = self.node.events.subscribe()

        async def events() -> AsyncIterator[tuple[str, Any]]:
            async with channel:
                yield "hello", {"id": str(self.node.identity.node_id)}
                async for name, data in channel:
                    yield name, data

        # Subscribed before the headers go out (a client that got them has
        # missed nothing); on_close releases it even if `events` never starts.
        return StreamResponse(events(), keepalive=EVENT_KEEPALIVE, on_close=channel.close)


# --- the OpenAPI document ---------------------------------------------------------
# Every request and answer shape, so a client (or a fuzzer) can be generated
# from it and answers checked against it. Schemas are OpenAPI 3.0 (JSON Schema
# with `nullable`); objects the node answers with list every field they have.

_ERRORS = {
    400: "The request is wrong (bad JSON, a missing or mistyped field, an unknown peer)",
    404: "No such path, or nothing by that name",
    409: "The peer is blocked",
    413: "The request body is over 1 MiB",
    503: "Too many event streams are open",
    507: "Not stored (the disk is full or failing); nothing was sent",
}
# Any request may be malformed or too large.
_ALWAYS = (400, 413)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """A closed object of these fields (the node adds none the document lacks)."""
    out: dict[str, Any] = {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "additionalProperties": False,
    }
    if required:
        out["required"] = list(required)
    return out


def _list_of(field: str, item: dict[str, Any]) -> dict[str, Any]:
    return _obj({field: {"type": "array", "items": item}})


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(
    summary: str,
    answer: dict[str, Any],
    *,
    status: int = 200,
    errors: tuple[int, ...] = (),
    body: dict[str, Any] | None = None,
    params: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    responses: dict[str, Any] = {str(status): {"description": "OK", "content": _json(answer)}}
    for code in sorted({*_ALWAYS, *errors}):
        responses[str(code)] = {"description": _ERRORS[code], "content": _json(_ref("Error"))}
    out: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        out["parameters"] = list(params)
    if body is not None:
        out["requestBody"] = {"required": True, "content": _json(body)}
    return out


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string", "minLength": 1},
    }


def _query(
    name: str, description: str, schema: dict[str, Any], *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _limit(most: int) -> dict[str, Any]:
    return _query("limit", f"At most this many (1 to {most})", _int(1, most))


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


_PEER = _path("peer", "A node id, a unique prefix of one (8+ characters), or a contact name")
_GROUP = _path("group", "A group id, a unique prefix of one (4+ characters), or its exact name")
_CHANGED = _path(
    "id",
    "A message id (64 hex digits), or a group message's shared id (gm, 32 hex digits)",
    {
        "type": "string",
        "pattern": f"^([0-9a-fA-F]{{{2 * MESSAGE_ID_LEN}}}|"
        f"[0-9a-fA-F]{{{2 * GROUP_MESSAGE_ID_LEN}}})$",
    },
)
_HEX_ID = {"type": "string", "pattern": "^[0-9a-f]+$"}
_MESSAGE_ID_IN = {"type": "string", "pattern": f"^[0-9a-fA-F]{{{2 * MESSAGE_ID_LEN}}}$"}
_NODE_ID = {"type": "string", "description": "A node id (base32)"}
_PEER_IN = {"type": "string", "description": "A node id, a unique prefix of one, or a contact name"}
_TIME = {"type": "number", "description": "Unix seconds"}
_COUNT = {"type": "integer", "minimum": 0}
_TEXT_IN = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_LEN}
_STATE = {"type": "string", "enum": [*(s.value for s in OutboxState), "relayed"]}
_PEERS_IN = _nullable(
    {"type": "array", "maxItems": groups.MAX_MEMBERS, "items": {"type": "string"}}
)
_TEXT_FIELDS: dict[str, Any] = {
    "text": _TEXT_IN,
    "texts": {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_TEXTS_PER_REQUEST,
        "items": _TEXT_IN,
    },
}
_TEXTS_IN = {
    "type": "object",
    "description": 'One text ("text") or several ("texts"; it wins if both are given)',
    "properties": _TEXT_FIELDS,
    "anyOf": [{"required": ["text"]}, {"required": ["texts"]}],
}
_OK = _obj({"ok": {"type": "boolean", "enum": [True]}})

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {"type": "string", "minLength": 1},
            "hint": _nullable({"type": "string"}),
            "allow": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["error", "hint"],
    },
    "File": _obj(
        {"name": {"type": "string"}, "size": _COUNT, "blake2b": _HEX_ID},
        {
            "state": {"type": "string", "enum": ["fetching", "done", "failed"]},
            "received": _COUNT,
            "path": {"type": "string"},
            "reason": {"type": "string"},
            "inline": {"type": "boolean"},
        },
    ),
    "InboxMessage": _obj(
        {
            "id": _HEX_ID,
            "from": _NODE_ID,
            "from_name": _nullable({"type": "string"}),
            "to": _NODE_ID,
            "ts": _TIME,
            "received": _TIME,
            "kind": _COUNT,
            "text": _nullable({"type": "string"}),
            "group": _nullable(_HEX_ID),
            "read": {"type": "boolean"},
            "request": {"type": "boolean"},
            "seq": _COUNT,
        },
        {"file": _ref("File")},
    ),
    "OutboxMessage": _obj(
        {
            "id": _HEX_ID,
            "to": _NODE_ID,
            "ts": _TIME,
            "expires": _TIME,
            "kind": _COUNT,
            "text": _nullable({"type": "string"}),
            "state": _STATE,
            "attempts": _COUNT,
            "relayed_to": _COUNT,
            "delivered": _nullable(_TIME),
        }
    ),
    "ChatMessage": _obj(
        {
            "id": _HEX_ID,
            "mine": {"type": "boolean"},
            "ts": _TIME,
            "sent": _TIME,
            "text": _nullable({"type": "string"}),
            "read": {"type": "boolean"},
            "state": _nullable(_STATE),
            "cursor": {"type": "string"},
            "edited": {"type": "boolean"},
            "deleted": {"type": "boolean"},
            "vanish": _nullable({"type": "number"}),
            "reactions": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        {"file": _ref("File")},
    ),
    "Conversation": _obj(
        {
            "peer": _NODE_ID,
            "name": _nullable({"type": "string"}),
            "contact": {"type": "boolean"},
            "blocked": {"type": "boolean"},
            "request": {"type": "boolean"},
            "online": {"type": "boolean"},
            "unread": _COUNT,
            "received": _COUNT,
            "last": _nullable(_TIME),
            "last_text": _nullable({"type": "string"}),
            "last_mine": {"type": "boolean"},
        }
    ),
    "Group": _obj(
        {
            "id": _HEX_ID,
            "name": {"type": "string"},
            "version": _COUNT,
            "members": {"type": "array", "items": _NODE_ID},
            "admins": {"type": "array", "items": _NODE_ID},
            "member": {"type": "boolean"},
        }
    ),
    "GroupMessage": _obj(
        {
            "mine": {"type": "boolean"},
            "ts": _TIME,
            "text": _nullable({"type": "string"}),
            "gm": _HEX_ID,
            "edited": {"type": "boolean"},
            "deleted": {"type": "boolean"},
            "reactions": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        {
            "members": {
                "type": "object",
                "description": "Ours: each member's copy",
                "additionalProperties": _obj({"id": _HEX_ID, "state": _STATE}),
            },
            "id": _HEX_ID,
            "from": _NODE_ID,
            "from_name": _nullable({"type": "string"}),
            "read": {"type": "boolean"},
        },
    ),
    "Settings": _obj(
        {
            "read_receipts": {"type": "boolean"},
            "accept": {"type": "string", "enum": [p.value for p in AcceptPolicy]},
        }
    ),
}

_STATUS = _obj(
    {
        "id": _NODE_ID,
        "version": {"type": "string"},
        "name": _nullable({"type": "string"}),
        "listen": {"type": "array", "items": {"type": "string"}},
        "connected": _COUNT,
        "outbox_pending": _COUNT,
        "relay_stored": _COUNT,
        "relay_bytes": _COUNT,
        "relay": {"type": "boolean"},
        "mdns": {"type": "boolean"},
        "uptime": {"type": "number"},
        "discovery": _obj(
            {
                "mdns_running": {"type": "boolean"},
                "mdns_hints": _COUNT,
                "dials": _COUNT,
                "discovery_dials": _COUNT,
            }
        ),
        "since_start": _obj(
            dict.fromkeys(
                (
                    "received",
                    "delivered",
                    "duplicates",
                    "relay_received",
                    "notices_taken",
                    "reconciliations",
                    "reconcile_rounds",
                    "reconcile_bytes",
                    "bytes_sent",
                    "bytes_received",
                ),
                _COUNT,
            )
            | {
                "frame_bytes_sent": {
                    "type": "object",
                    "description": "By frame type",
                    "additionalProperties": _COUNT,
                }
            }
        ),
    }
)
_PEER_ANSWER = _obj(
    {
        "id": _NODE_ID,
        "addresses": {"type": "array", "items": {"type": "string"}},
        "source": {"type": "string"},
        "connected": {"type": "boolean"},
        "last_seen": _nullable(_TIME),
    }
)
_CONTACT = _obj(
    {
        "id": _NODE_ID,
        "name": _nullable({"type": "string"}),
        "blocked": {"type": "boolean"},
        "added": _TIME,
    }
)
_HIT = _obj(
    {
        "id": _HEX_ID,
        "peer": _NODE_ID,
        "peer_name": _nullable({"type": "string"}),
        "mine": {"type": "boolean"},
        "ts": _TIME,
        "text": {"type": "string"},
        "snippet": {"type": "string"},
    }
)
_STORES = (507,)

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "p2pdm local API",
        "version": __version__,
        "description": "Served on the Unix socket api.sock in the node's home folder (mode "
        "0600). Errors are JSON {error, hint}. Times are Unix seconds (float); ids are hex.",
    },
    "paths": {
        "/openapi.json": {
            "get": _op("This document", {"type": "object"}),
        },
        "/v1/status": {
            "get": _op("Node id, bound addresses, connection and queue counts", _STATUS)
        },
        "/v1/messages/{id}/reaction": {
            "post": _op(
                'React to a text of a conversation: {"emoji": EMOJI}; "" takes it back',
                _OK,
                params=(_CHANGED,),
                errors=(404, *_STORES),
                body={
                    "type": "object",
                    "properties": {"emoji": {"type": "string"}},
                    "required": ["emoji"],
                },
            )
        },
        "/v1/messages/{id}/edit": {
            "post": _op(
                'Edit one of your texts on both sides: {"text": NEW_TEXT}',
                _OK,
                params=(_CHANGED,),
                errors=(404, *_STORES),
                body=_obj({"text": _TEXT_IN}),
            )
        },
        "/v1/messages/{id}": {
            "delete": _op(
                "Unsend one of your texts, on both sides",
                _OK,
                params=(_CHANGED,),
                errors=(404, *_STORES),
            )
        },
        "/v1/conversations/{peer}/timer": {
            "post": _op(
                'Disappearing messages: {"seconds": N} (0 off, else 5 s to 28 days); new '
                "texts both ways are deleted on both sides N seconds after they arrive",
                _OK,
                params=(_PEER,),
                errors=(404, *_STORES),
                body={
                    "type": "object",
                    "properties": {
                        "seconds": {
                            "anyOf": [
                                {"type": "number", "enum": [0]},
                                {
                                    "type": "number",
                                    "minimum": MIN_DISAPPEAR_MS / 1000,
                                    "maximum": MAX_DISAPPEAR_MS / 1000,
                                },
                            ]
                        }
                    },
                    "required": ["seconds"],
                },
            )
        },
        "/v1/files": {
            "post": _op(
                'Send a file: {"to": PEER, "path": ABSOLUTE_PATH}; answers 201 {"id", "file": '
                "{name, size, blake2b, inline}} once the offer is stored. Up to 100 MiB; small "
                "files travel in the message, larger ones are fetched from this node. Its "
                '"delivered" event means the recipient has the whole file, checked',
                _obj({"id": _HEX_ID, "to": _NODE_ID, "file": _ref("File")}),
                status=201,
                errors=_STORES,
                body={
                    "type": "object",
                    "properties": {"to": _PEER_IN, "path": {"type": "string", "pattern": "^/"}},
                    "required": ["to", "path"],
                },
            )
        },
        "/v1/groups": {
            "get": _op(
                "Groups this node is or was in: {id, name, version, members, admins}",
                _list_of("groups", _ref("Group")),
            ),
            "post": _op(
                'Create a group with this node as admin: {"name": NAME, "members": [PEER]}; '
                "answers 201 with the group once stored (members are told)",
                _ref("Group"),
                status=201,
                errors=_STORES,
                body={
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "members": _PEERS_IN},
                    "required": ["name"],
                },
            ),
        },
        "/v1/groups/{group}": {
            "post": _op(
                'Change a group (admins only): {"name"?, "add"?: [PEER], "remove"?: [PEER], '
                '"admins"?: [PEER]}; {group} is an id, a unique id prefix or the exact name',
                _ref("Group"),
                params=(_GROUP,),
                errors=(404, *_STORES),
                body=_obj(
                    {},
                    {
                        "name": _nullable({"type": "string"}),
                        "add": _PEERS_IN,
                        "remove": _PEERS_IN,
                        "admins": _PEERS_IN,
                    },
                ),
            )
        },
        "/v1/groups/{group}/messages": {
            "get": _op(
                f"A group's messages both ways, oldest first; ?limit= (default {DEFAULT_PAGE}). "
                "Ours carry each member's copy's state",
                _obj(
                    {
                        "group": _ref("Group"),
                        "messages": {"type": "array", "items": _ref("GroupMessage")},
                    }
                ),
                params=(_GROUP, _limit(MAX_PAGE)),
                errors=(404,),
            ),
            "post": _op(
                'Send to every other member: {"text": TEXT} or {"texts": [...]}; answers 201 '
                '{"ids": [shared id], "copies": {member: [envelope id]}} once stored',
                _obj(
                    {
                        "group": _HEX_ID,
                        "ids": {"type": "array", "items": _HEX_ID},
                        "copies": {
                            "type": "object",
                            "additionalProperties": {"type": "array", "items": _HEX_ID},
                        },
                    }
                ),
                status=201,
                params=(_GROUP,),
                errors=(404, *_STORES),
                body=_TEXTS_IN,
            ),
        },
        "/v1/messages": {
            "post": _op(
                'Send: {"to": PEER, "text": TEXT} or {"to", "texts": [...]}, optional '
                '"ttl_s". Answers 201 {"ids": [...]} only after the messages are committed.',
                _obj({"ids": {"type": "array", "items": _HEX_ID}, "to": _NODE_ID}),
                status=201,
                errors=_STORES,
                body={
                    **_TEXTS_IN,
                    "properties": {
                        **_TEXT_FIELDS,
                        "to": _PEER_IN,
                        "ttl_s": _nullable(
                            {
                                "type": "number",
                                "minimum": 0,
                                "exclusiveMinimum": True,
                                "maximum": MAX_TTL_MS // 1000,
                            }
                        ),
                    },
                    "required": ["to"],
                },
            )
        },
        "/v1/inbox": {
            "get": _op(
                "Received messages, oldest first; ?peer=&limit=&after=SEQ. limit is at most "
                f"{MAX_LIST:,} and {DEFAULT_LIST:,} when absent (the latest, or the first "
                "after SEQ)",
                _list_of("messages", _ref("InboxMessage")),
                params=(
                    _query("peer", "Only from this peer", _PEER_IN),
                    _limit(MAX_LIST),
                    _query("after", "Only after this seq", _int(0, 1 << 62)),
                ),
            )
        },
        "/v1/outbox": {
            "get": _op(
                f"Sent messages and their state; ?limit= (default {DEFAULT_LIST:,}, the "
                "latest) or ?ids=a,b",
                _list_of("messages", _ref("OutboxMessage")),
                params=(
                    _limit(MAX_LIST),
                    _query("ids", "Only these (comma-separated hex ids)", {"type": "string"}),
                ),
            )
        },
        "/v1/peers": {
            "get": _op(
                "Known peers, their addresses, and whether connected",
                _list_of("peers", _PEER_ANSWER),
            )
        },
        "/v1/resolve": {
            "get": _op(
                "Resolve ?peer= (id, unique prefix, contact name) to an id",
                _obj({"id": _NODE_ID}),
                params=(_query("peer", "What to resolve", _PEER_IN, required=True),),
            )
        },
        "/v1/contacts": {
            "get": _op("Contacts", _list_of("contacts", _CONTACT)),
            "post": _op(
                'Add a contact: {"id": NODE_ID, "name": optional}',
                _obj({"id": _NODE_ID, "name": _nullable({"type": "string"})}),
                status=201,
                body={
                    "type": "object",
                    "properties": {
                        "id": _NODE_ID,
                        "name": _nullable({"type": "string"}),
                    },
                    "required": ["id"],
                },
            ),
        },
        "/v1/contacts/{peer}": {
            "delete": _op(
                "Forget a contact",
                _obj({"id": _NODE_ID, "removed": {"type": "boolean"}}),
                params=(_PEER,),
                errors=(404,),
            )
        },
        "/v1/contacts/{peer}/block": {
            "post": _op(
                "Drop every message from this peer",
                _obj({"id": _NODE_ID, "blocked": {"type": "boolean"}}),
                params=(_PEER,),
                errors=(404,),
            )
        },
        "/v1/contacts/{peer}/unblock": {
            "post": _op(
                "Accept messages from this peer again",
                _obj({"id": _NODE_ID, "blocked": {"type": "boolean"}}),
                params=(_PEER,),
                errors=(404,),
            )
        },
        "/v1/conversations": {
            "get": _op(
                "Accepted conversations (contacts and everyone we wrote to), latest first: "
                "{peer, name, contact, blocked, request, online, unread, received, last, "
                "last_text, last_mine}",
                _list_of("conversations", _ref("Conversation")),
            )
        },
        "/v1/conversations/{peer}": {
            "get": _op(
                f"Text messages with a peer, both ways, oldest first; ?limit= (default "
                f"{DEFAULT_PAGE}, at most {MAX_PAGE}) &before=CURSOR for older history. Each "
                "has {id, mine, ts, sent, text, read, state, cursor, edited, deleted, vanish, "
                "reactions: {node id: emoji}}; `before` in the answer is the cursor for the "
                "next older page, null at the start; `timer` is the disappearing timer (s)",
                _obj(
                    {
                        "peer": _NODE_ID,
                        "timer": {"type": "number", "minimum": 0},
                        "messages": {"type": "array", "items": _ref("ChatMessage")},
                        "before": _nullable({"type": "string"}),
                    }
                ),
                params=(
                    _PEER,
                    _limit(MAX_PAGE),
                    _query(
                        "before",
                        "A message's cursor: the page ends just before it",
                        {"type": "string", "pattern": "^[0-9]+[.][0-9]+[.][0-9]+$"},
                    ),
                ),
                errors=(404,),
            )
        },
        "/v1/requests": {
            "get": _op(
                "Message requests: strangers who wrote to us (unless accept = everyone), in "
                "the shape of /v1/conversations",
                _list_of("requests", _ref("Conversation")),
            )
        },
        "/v1/requests/{peer}/accept": {
            "post": _op(
                "Accept a request: the peer becomes a contact (409 if blocked)",
                _obj(
                    {
                        "id": _NODE_ID,
                        "accepted": {"type": "boolean"},
                        "was_request": {"type": "boolean"},
                    }
                ),
                params=(_PEER,),
                errors=(404, 409),
            )
        },
        "/v1/read": {
            "post": _op(
                'Mark messages read: {"ids": [hex]} or {"peer": PEER} (all of theirs). Read '
                "receipts go to accepted senders if the read_receipts setting is on. "
                "Answers {read: [ids that were unread]}",
                _list_of("read", _HEX_ID),
                errors=_STORES,
                body={
                    "type": "object",
                    "properties": {
                        "ids": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_READ_IDS,
                            "items": _MESSAGE_ID_IN,
                        },
                        "peer": _PEER_IN,
                    },
                    "oneOf": [{"required": ["ids"]}, {"required": ["peer"]}],
                },
            )
        },
        "/v1/typing": {
            "post": _op(
                'Tell a connected, accepted peer we are typing: {"to": PEER, "active": bool}. '
                "Never stored or relayed; answers {sent, reason}",
                _obj({"sent": {"type": "boolean"}, "reason": _nullable({"type": "string"})}),
                body={
                    "type": "object",
                    "properties": {"to": _PEER_IN, "active": {"type": "boolean"}},
                    "required": ["to", "active"],
                },
            )
        },
        "/v1/search": {
            "get": _op(
                "Full-text search of text messages both ways, newest first: ?q=WORDS "
                "(each a word prefix) &peer= &limit=. Results {id, peer, peer_name, mine, "
                "ts, text, snippet}",
                _list_of("results", _HIT),
                params=(
                    _query("q", "Words to find", {"type": "string"}),
                    _query("peer", "Only with this peer", _PEER_IN),
                    _limit(MAX_PAGE),
                ),
            )
        },
        "/v1/settings": {
            "get": _op(
                "Chat settings: {read_receipts, accept: everyone|contacts|requests}",
                _ref("Settings"),
            ),
            "post": _op(
                "Change chat settings (the fields given); answers the new settings",
                _ref("Settings"),
                errors=_STORES,
                body={
                    **_SCHEMAS["Settings"],
                    "required": [],
                    "minProperties": 1,
                },
            ),
        },
        "/v1/safety-number/{peer}": {
            "get": _op(
                "The safety number to compare with a peer out of band",
                _obj({"id": _NODE_ID, "safety_number": {"type": "string"}}),
                params=(_PEER,),
                errors=(404,),
            )
        },
        "/v1/events": {
            "get": {
                "summary": "Server-sent events: hello, message (a new inbox message, with "
                "request: true from a stranger), sent ({id, to}: the recipient's node stored "
                "it), delivered ({id, by}), peer ({id, connected}), relayed ({id, to}: a relay "
                "holds a copy of our message), refused ({id, by, reason}: a hop refused it), "
                "held ({id, for}: we hold an envelope for someone else), released ({id, to}: "
                "our copy is done, its recipient has it), read ({id, by}: the recipient saw "
                "our message), typing ({from, active, ts}: an accepted peer is typing; shown "
                "until active is false or for a few seconds)",
                "responses": {
                    "200": {
                        "description": "An endless event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **{
                        str(code): {
                            "description": _ERRORS[code],
                            "content": _json(_ref("Error")),
                        }
                        for code in (*_ALWAYS, 503)
                    },
                },
            }
        },
    },
    "components": {"schemas": _SCHEMAS},
}
