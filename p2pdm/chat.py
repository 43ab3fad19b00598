"""`p2pdm chat`: a full-screen terminal chat that talks to the running node
through its local API only (Textual).

Layout, made for 80x24 over SSH: conversations on the left (unread counts,
a dot for online, requests apart), the open conversation on the right with
its history (older pages load when scrolled to the top), a typing line and
the input. Lines starting with "/" are commands (/help lists them).

The API client is blocking, so every call runs in a worker thread; the
event stream is read by one thread that hands events to the app's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Input, Label, ListItem, ListView, Static

from p2pdm.apiclient import ApiClient, ApiClientError, ApiRequestError, ApiUnavailable
from p2pdm.config import API_SOCKET_NAME
from p2pdm.display import visible
from p2pdm.settings import parse_duration

# Messages per history page.
PAGE = 50
# A typing signal shows this long unless the peer says it stopped.
TYPING_SHOWN_S = 6.0
# While typing, repeat the signal this often; stop after this long idle.
TYPING_REPEAT_S = 3.0
TYPING_IDLE_S = 5.0
# Sidebar refreshes are gathered for this long (a burst refreshes once).
REFRESH_DELAY_S = 0.2
# States of our messages, in the order they move; a late event never moves back.
# "relayed": a relay holds a copy; "sent": the recipient's node stored it.
STATES = ("queued", "relayed", "sent", "delivered", "read")
# State events remembered for messages not on screen yet (a send's own events
# can come before its answer); older ones are forgotten past this many.
MAX_EARLY_STATES = 1000
STATE_MARK = {
    "queued": "· queued",
    "sent": "✓ sent",
    "relayed": "✓ relayed",
    "delivered": "✓✓ delivered",
    "read": "✓✓ read",
    "expired": "✗ expired",
}
HELP = """Commands:
  /add ID [NAME]    add a contact (NAME optional)
  /rename NAME      name the open conversation's peer
  /accept           accept this message request
  /block, /unblock  drop (or take again) this peer's messages
  /safety           the safety number to compare with this peer
  /search WORDS     search all messages (also Ctrl+F)
  /receipts on|off  send read receipts or not
  /react EMOJI      react to their last message (/react alone: take it back)
  /edit TEXT        change your last message;  /unsend  take it back
  /timer 1h|off     disappearing messages here, both ways
  /file PATH        send a file (up to 100 MiB)
  /group NAME PEER...   a new group;  /invite PEER, /kick PEER in a group
  /help             this list
Keys: Tab moves between the list and the input; Ctrl+Q quits."""
# Conversation keys of groups in the sidebar and `ChatApp.peer`.
GROUP_PREFIX = "g:"


def local_time(ts: float) -> str:
    """HH:MM today, else the date too (local time)."""
    when = time.localtime(ts)
    if time.strftime("%Y-%m-%d", when) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M", when)
    return time.strftime("%d %b %H:%M", when)


def short(peer: str) -> str:
    return peer[:10]


@dataclass
class Conversation:
    peer: str
    name: str | None
    online: bool
    unread: int
    request: bool
    last_text: str | None

    @property
    def title(self) -> str:
        return self.name or short(self.peer)


def _duration_text(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length and seconds % length == 0:
            return f"{seconds / length:.0f}{unit}"
    return f"{seconds:.0f}s"


def size_text(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1 << 20:
        return f"{size / 1024:.0f} KiB"
    return f"{size / (1 << 20):.1f} MiB"


class MessageView(Static):
    """One message; ours show their delivery state, which only moves forward.
    Edits, unsends, reactions and file progress change it in place."""

    def __init__(self, message: dict[str, Any], peer_name: str) -> None:
        super().__init__(classes="mine" if message["mine"] else "theirs")
        self.message_id: str = message["id"]
        self.mine: bool = message["mine"]
        self.text: str = message.get("text") or ""
        self.ts: float = message["ts"]
        self.peer_name = peer_name
        self.state: str | None = message.get("state")
        self.edited: bool = message.get("edited", False)
        self.deleted: bool = message.get("deleted", False)
        self.vanishes = message.get("vanish") is not None
        self.reactions: dict[str, str] = dict(message.get("reactions") or {})
        self.file: dict[str, Any] | None = message.get("file")
        self.members: dict[str, str] = {}
        """Our group message: each member's copy's state."""
        for member, copy in (message.get("members") or {}).items():
            self.members[member] = copy["state"]
        self.update(self.compose_line())

    def compose_line(self) -> Text:
        line = Text()
        line.append(local_time(self.ts) + " ", style="dim")
        if self.vanishes:
            line.append("⏱ ", style="dim")
        who = "me" if self.mine else self.peer_name
        line.append(who + ": ", style="bold green" if self.mine else "bold cyan")
        # A Text, never markup, and control characters made visible: a peer
        # can neither style our screen nor send the terminal escape codes.
        if self.deleted:
            line.append("message unsent", style="dim italic")
        elif self.file is not None:
            line.append(f"📎 {visible(str(self.file['name']))} ({size_text(self.file['size'])})")
            line.append(self._file_state(), style="dim")
        else:
            line.append(visible(self.text))
        if self.edited and not self.deleted:
            line.append(" (edited)", style="dim")
        if self.reactions:
            line.append("  " + " ".join(visible(e) for e in self.reactions.values()))
        if self.mine and self.members:
            done = sum(1 for st in self.members.values() if _rank(st) >= _rank("delivered"))
            line.append(f"  ✓✓ {done}/{len(self.members)} delivered", style="dim italic")
        elif self.mine and self.state:
            line.append("  " + STATE_MARK.get(self.state, self.state), style="dim italic")
        return line

    def _file_state(self) -> str:
        f = self.file
        assert f is not None
        if f.get("path"):  # the name only: the folder is the node's files/
            return f"  saved as {visible(Path(str(f['path'])).name)}"
        if f.get("state") == "failed":
            return f"  failed: {visible(str(f.get('reason')))}"
        if "received" in f and f["size"]:
            return f"  {f['received'] / f['size']:.0%}"
        if "sent" in f and f["size"]:
            return f"  sent {f['sent'] / f['size']:.0%}"
        return ""

    def redraw(self) -> None:
        self.update(self.compose_line())

    @property
    def plain(self) -> str:
        return self.compose_line().plain

    def advance(self, state: str, member: str | None = None) -> None:
        if member is not None:
            if _rank(state) > _rank(self.members.get(member)):
                self.members[member] = state
                self.redraw()
        elif state in STATES and (self.state not in STATES or _rank(state) > _rank(self.state)):
            self.state = state
            self.redraw()


def _rank(state: str | None) -> int:
    return STATES.index(state) if state in STATES else -1


class SidebarItem(ListItem):
    """A conversation (with its peer) or a heading in the sidebar."""

    def __init__(self, line: Text) -> None:
        super().__init__(Label(line))
        self.plain = line.plain
        self.peer: str | None = None


class MessageLog(VerticalScroll):
    """The open conversation; asks for older history when scrolled to the top."""

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        app = self.app
        if isinstance(app, ChatApp):
            if new_value <= 0 < old_value:
                app.load_older_soon()
            app.bump()


class InfoScreen(ModalScreen[None]):
    """A box of text; any of Escape, Enter or q closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "close", "Close"),
    ]

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with Vertical(id="info"):
            yield Label(Text(self.title_text, style="bold"))
            yield Static(Text(self.body), id="info-body")
            yield Label(Text("Esc to close", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


class SearchScreen(ModalScreen[str | None]):
    """Search every message; Enter on a result opens its conversation."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, client: ApiClient, query: str = "") -> None:
        super().__init__()
        self.client, self.query_text = client, query
        self.results: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="search"):
            yield Input(value=self.query_text, placeholder="Search words", id="search-input")
            yield ListView(id="search-results")
            yield Label(Text("Enter: search / open  ·  Esc: close", style="dim"))

    async def on_mount(self) -> None:
        if self.query_text:
            await self.run_search(self.query_text)
            if self.results:
                self.query_one("#search-results", ListView).focus()
        else:
            self.query_one("#search-input", Input).focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        await self.run_search(event.value)
        self.query_one("#search-results", ListView).focus()

    async def run_search(self, words: str) -> None:
        results = self.query_one("#search-results", ListView)
        await results.clear()
        try:
            answer = await asyncio.to_thread(self.client.get, "/v1/search", q=words, limit=100)
        except ApiClientError as exc:
            await results.append(ListItem(Label(Text(str(exc), style="red"))))
            self.results = []
        else:
            self.results = answer["results"]
            items = []
            for hit in self.results:
                who = hit["peer_name"] or short(hit["peer"])
                line = Text(local_time(hit["ts"]) + " ", style="dim")
                line.append(("to " if hit["mine"] else "from ") + who + ": ", style="bold")
                line.append(visible(hit["snippet"]))
                items.append(ListItem(Label(line)))
            if not items:
                items.append(ListItem(Label(Text("nothing found", style="dim"))))
            await results.extend(items)
            results.index = 0
        app = self.app
        if isinstance(app, ChatApp):
            app.bump()

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        index = event.list_view.index
        if index is not None and index < len(self.results):
            self.dismiss(self.results[index]["peer"])

    def action_close(self) -> None:
        self.dismiss(None)


class ChatApp(App[int]):
    """The chat window of one running node."""

    TITLE = "p2pdm chat"
    CSS = """
    #sidebar { width: 26; border-right: solid $primary-darken-2; }
    #sidebar > ListItem { padding: 0 1; }
    #main { width: 1fr; }
    #title { height: 1; background: $boost; padding: 0 1; text-style: bold; }
    #log { height: 1fr; padding: 0 1; }
    MessageView { width: 1fr; }
    MessageView.mine { color: $text; }
    #typing { height: 1; padding: 0 1; color: $text-muted; text-style: italic; }
    #input { dock: bottom; }
    InfoScreen, SearchScreen { align: center middle; }
    #info, #search {
        width: 72; height: auto; max-height: 20; border: round $primary;
        background: $surface; padding: 0 1;
    }
    #search-results { height: auto; max-height: 14; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+f", "search", "Search"),
        Binding("ctrl+n", "next_unread", "Next unread"),
        Binding("f1", "help", "Help"),
        # The input keeps the focus; these scroll the conversation from it.
        Binding("pageup", "scroll_log(-1)", "Older", show=False),
        Binding("pagedown", "scroll_log(1)", "Newer", show=False),
    ]

    def __init__(self, client: ApiClient, peer: str | None = None) -> None:
        super().__init__()
        self.client = client
        self.first_peer = peer
        self.me: str = ""
        self.peer: str | None = None
        self.conversations: dict[str, Conversation] = {}
        self.groups: dict[str, dict[str, Any]] = {}  # group id -> as the API shows it
        self.views: dict[str, MessageView] = {}
        # Our group messages' per-member copies: copy id -> (shared id, member).
        self.copy_of: dict[str, tuple[str, str]] = {}
        self.timer = 0.0  # the open conversation's disappearing timer, seconds
        self.early_states: dict[str, str] = {}  # events that came before their message
        self.older: str | None = None  # cursor of the next older page
        self.loading_older = False
        self.typing_until: dict[str, float] = {}
        self.typing_sent_at = 0.0
        self.typing_active = False
        self.node_lost = False
        self.away = False
        """The terminal window lost focus: what arrives is shown, not read."""
        self.changed = asyncio.Event()
        """Set after every change the app shows (tests wait on it)."""
        self._stop = threading.Event()
        self._refresh_timer: Any = None
        self._idle_timer: Any = None
        # What the screen shows, as plain text (tests and screenshots read it).
        self.sidebar_lines: list[str] = []
        self.title_line = ""
        self.typing_line = ""

    # --- layout ----------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield ListView(id="sidebar")
            with Vertical(id="main"):
                yield Static("Pick a conversation on the left, or /help", id="title")
                yield MessageLog(id="log")
                yield Static("", id="typing")
                yield Input(placeholder="Message, or /help", id="input")
        yield Footer()

    async def on_mount(self) -> None:
        status = await self.api("get", "/v1/status")
        if status is None:
            return
        self.me = status["id"]
        self.sub_title = f"{status.get('name') or short(self.me)} · {status['connected']} online"
        self.run_worker(self._read_events, thread=True, exit_on_error=False)
        await self.refresh_sidebar()
        if self.first_peer:
            found = await self.api("get", "/v1/resolve", {"peer": self.first_peer})
            if found is not None:
                await self.open_conversation(found["id"])
        self.query_one("#input", Input).focus()
        self.set_interval(1.0, self._expire_typing)
        self.bump()

    def on_unmount(self) -> None:
        self._stop.set()

    def bump(self) -> None:
        self.changed.set()

    # --- talking to the node ----------------------------------------------

    async def api(self, method: str, path: str, arg: dict[str, Any] | None = None) -> Any:
        """One API call in a worker thread; a failure is shown, and None returned."""
        try:
            if method == "get":
                return await asyncio.to_thread(self.client.get, path, **(arg or {}))
            if method == "delete":
                return await asyncio.to_thread(self.client.delete, path)
            return await asyncio.to_thread(self.client.post, path, arg or {})
        except ApiRequestError as exc:
            self.notify(str(exc), severity="error", timeout=8)
        except ApiUnavailable as exc:
            self.notify(str(exc), title="node unavailable", severity="error", timeout=8)
        return None

    def _read_events(self) -> None:
        """Worker thread: node events into the app; reconnects if the node restarts."""
        while not self._stop.is_set():
            try:
                with self.client.events("/v1/events") as stream:
                    while not self._stop.is_set():
                        event = stream.next(timeout=0.5)
                        if event is not None:
                            self._deliver(*event)
            except ApiClientError as exc:
                if self._stop.is_set():
                    return
                self.call_from_thread(self._lost, str(exc))
                self._stop.wait(2.0)

    def _deliver(self, name: str, data: Any) -> None:
        """One event into the app; a failure in handling it is shown, and the
        next event is handled as usual (live updates must not stop)."""
        try:
            self.call_from_thread(self.on_node_event, name, data)  # type: ignore[arg-type]
        except ApiClientError:
            raise
        except Exception as exc:  # an app bug must not end the event stream
            if self._stop.is_set():
                return
            with contextlib.suppress(Exception):
                self.call_from_thread(
                    self.notify, f"could not show a {name} event: {exc!r}", severity="error"
                )

    def _lost(self, reason: str) -> None:
        if not self.node_lost:
            self.node_lost = True
            self.notify(reason, title="lost the node; retrying", severity="error", timeout=8)
        self.bump()

    async def on_node_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "hello" and self.node_lost:
            # Events were missed while the stream was down: read it all again.
            self.node_lost = False
            self.notify("connected to the node again")
            await self.refresh_sidebar()
            if self.peer is not None:
                await self.open_conversation(self.peer)
        elif name == "message" and (data.get("text") is not None or "file" in data):
            sender = data["from"]
            self.typing_until.pop(sender, None)
            here = GROUP_PREFIX + data["group"] if data.get("group") else sender
            if here == self.peer:
                key = data.get("gm") or data["id"]  # a group message by its shared id
                shown = {"id": key, "mine": False, "ts": time.time(), "from": sender}
                shown.update(
                    text=data.get("text"), file=data.get("file"), vanish=data.get("vanish")
                )
                await self.show_messages([shown])
                if not self.away:
                    await self.api("post", "/v1/read", {"ids": [data["id"]]})
            self.refresh_sidebar_soon()
            self._show_typing()
        elif name in ("sent", "relayed", "delivered", "read") and data["id"] in self.copy_of:
            shared, member = self.copy_of[data["id"]]
            view = self.views.get(shared)
            if view is not None:
                view.advance(name, member)
        elif name in ("sent", "relayed", "delivered", "read"):
            view = self.views.get(data["id"])
            if view is not None:
                view.advance(name)
            else:
                early = self.early_states.get(data["id"])
                if _rank(name) > _rank(early):
                    self.early_states[data["id"]] = name
                    while len(self.early_states) > MAX_EARLY_STATES:
                        del self.early_states[next(iter(self.early_states))]
        elif name == "peer":
            conversation = self.conversations.get(data["id"])
            if conversation is not None:
                conversation.online = bool(data["connected"])
                self.refresh_sidebar_soon()
            self._show_title()
        elif name == "typing":
            if data["active"]:
                self.typing_until[data["from"]] = time.monotonic() + TYPING_SHOWN_S
            else:
                self.typing_until.pop(data["from"], None)
            self._show_typing()
        elif name in ("edited", "deleted", "reaction", "file", "file-sent", "vanished"):
            await self._changed_message(name, data)
        elif name == "timer" and data["peer"] == self.peer:
            self.timer = data["after"]
            self.notify(f"disappearing messages: {_duration_text(self.timer)}")
            self._show_title()
        elif name == "group":
            self.refresh_sidebar_soon()
        self.bump()

    async def _changed_message(self, name: str, data: dict[str, Any]) -> None:
        """A message on screen changed: edited, unsent, reacted to, a file's
        progress, or it disappeared."""
        view = self.views.get(data["id"])
        if view is None:
            return
        if name == "vanished":
            del self.views[data["id"]]
            await view.remove()
            return
        if name == "edited":
            view.text, view.edited = data["text"], True
        elif name == "deleted":
            view.deleted = True
            view.reactions.clear()  # they went with it
        elif name == "reaction":
            if data["emoji"]:
                view.reactions[data["by"]] = data["emoji"]
            else:
                view.reactions.pop(data["by"], None)
        elif view.file is not None:  # "file" (fetching) or "file-sent"
            view.file = {**view.file, **data}
        view.redraw()

    def on_app_blur(self) -> None:
        self.away = True
        self.bump()

    async def on_app_focus(self) -> None:
        # Back at the window: what the open conversation shows is now seen.
        was_away, self.away = self.away, False
        c = self.conversations.get(self.peer) if self.peer is not None else None
        if was_away and c is not None and c.unread:
            await self.api("post", "/v1/read", {"peer": c.peer})
            self.refresh_sidebar_soon()
        self.bump()

    # --- the sidebar -------------------------------------------------------

    def refresh_sidebar_soon(self) -> None:
        if self._refresh_timer is None:
            self._refresh_timer = self.set_timer(REFRESH_DELAY_S, self._refresh_due)

    async def _refresh_due(self) -> None:
        self._refresh_timer = None
        # A timer can fire while the app closes: its widgets are then gone
        # at any await of the refresh, which is not an error.
        with contextlib.suppress(NoMatches):
            await self.refresh_sidebar()

    async def refresh_sidebar(self) -> None:
        chats = await self.api("get", "/v1/conversations")
        requests = await self.api("get", "/v1/requests")
        groups = await self.api("get", "/v1/groups")
        if chats is None or requests is None or groups is None:
            return
        self.groups = {g["id"]: g for g in groups["groups"] if g["member"]}
        self.conversations = {}
        for row in chats["conversations"] + requests["requests"]:
            self.conversations[row["peer"]] = Conversation(
                row["peer"],
                row["name"],
                row["online"],
                0 if row["peer"] == self.peer and not self.away else row["unread"],
                row["request"],
                row["last_text"],
            )
        sidebar = self.query_one("#sidebar", ListView)
        await sidebar.clear()
        items: list[ListItem] = []
        people = [c for c in self.conversations.values() if not c.request]
        strangers = [c for c in self.conversations.values() if c.request]
        for c in people:
            items.append(self._sidebar_item(c))
        if strangers:
            items.append(self._label_item(f"Requests ({len(strangers)})", "bold"))
            items.extend(self._sidebar_item(c) for c in strangers)
        if self.groups:
            items.append(self._label_item("Groups", "bold"))
            for group in self.groups.values():
                item = SidebarItem(Text("# " + visible(group["name"])[:20]))
                item.peer = GROUP_PREFIX + group["id"]
                items.append(item)
        if not items:
            items.append(self._label_item("No conversations yet: /add ID", "dim"))
        self.sidebar_lines = [i.plain for i in items if isinstance(i, SidebarItem)]
        await sidebar.extend(items)
        # The cursor rests on the open conversation, else on the first one
        # (never on a heading, which cannot be opened).
        peers = [getattr(item, "peer", None) for item in items]
        if self.peer in peers:
            sidebar.index = peers.index(self.peer)
        elif any(peers):
            sidebar.index = next(i for i, p in enumerate(peers) if p)
        self._show_title()
        self.bump()

    def _sidebar_item(self, c: Conversation) -> ListItem:
        line = Text()
        line.append("● ", style="green" if c.online else "grey50")
        line.append(("? " if c.request else "") + c.title[:16], style="bold" if c.unread else "")
        if c.unread:
            line.append(f" ({c.unread})", style="bold yellow")
        item = SidebarItem(line)
        item.peer = c.peer
        return item

    def _label_item(self, text: str, style: str) -> ListItem:
        item = SidebarItem(Text(text, style=style))
        item.disabled = True
        return item

    async def on_list_view_selected(self, event: ListView.Selected) -> None:
        peer = getattr(event.item, "peer", None)
        if peer is not None and peer != self.peer:
            await self.open_conversation(peer)
            self.query_one("#input", Input).focus()

    # --- the open conversation -------------------------------------------

    def name_of(self, peer: str) -> str:
        if peer.startswith(GROUP_PREFIX):
            group = self.groups.get(peer[len(GROUP_PREFIX) :])
            return "# " + group["name"] if group is not None else "a group"
        c = self.conversations.get(peer)
        if c is not None:
            return c.title
        return "me" if peer == self.me else short(peer)

    @property
    def group(self) -> str | None:
        """The open conversation's group id, if it is a group."""
        if self.peer is not None and self.peer.startswith(GROUP_PREFIX):
            return self.peer[len(GROUP_PREFIX) :]
        return None

    def _show_title(self) -> None:
        title = self.query_one("#title", Static)
        if self.peer is None:
            return
        if self.group is not None:
            members = len(self.groups.get(self.group, {}).get("members", []))
            line = Text(f"{self.name_of(self.peer)}  {members} members", style="bold")
            title.update(line)
            self.title_line = line.plain
            return
        c = self.conversations.get(self.peer)
        line = Text()
        online = c is not None and c.online
        line.append("● ", style="green" if online else "grey50")
        line.append(self.name_of(self.peer), style="bold")
        line.append("  online" if online else "  offline", style="dim")
        if c is not None and c.request:
            line.append("  request: /accept or /block", style="bold yellow")
        if self.timer:
            line.append(f"  ⏱ {_duration_text(self.timer)}", style="dim")
        title.update(line)
        self.title_line = line.plain

    def _show_typing(self) -> None:
        now = time.monotonic()
        shown = self.peer is not None and self.typing_until.get(self.peer, 0) > now
        text = f"{self.name_of(self.peer)} is typing…" if shown and self.peer else ""
        self.typing_line = text
        self.query_one("#typing", Static).update(Text(text))  # a name is not markup

    def _expire_typing(self) -> None:
        now = time.monotonic()
        for peer in [p for p, until in self.typing_until.items() if until <= now]:
            del self.typing_until[peer]
            self._show_typing()
            self.bump()

    async def open_conversation(self, peer: str) -> None:
        await self._stop_typing()
        self.peer = peer
        self.views.clear()
        log = self.query_one("#log", MessageLog)
        await log.remove_children()
        log.anchor()  # stays at the newest line while the user has not scrolled up
        self.timer = 0.0
        self.older = None
        self._show_title()
        self._show_typing()
        if self.group is not None:
            await self._open_group(self.group)
            return
        page = await self.api("get", f"/v1/conversations/{peer}", {"limit": PAGE})
        if page is None:
            return
        self.older = page["before"]
        self.timer = page["timer"]
        self._show_title()
        await self.show_messages(page["messages"])
        if any(not m["mine"] and not m["read"] for m in page["messages"]):
            await self.api("post", "/v1/read", {"peer": peer})
        c = self.conversations.get(peer)
        if c is not None and c.unread:
            c.unread = 0
            self.refresh_sidebar_soon()
        self.bump()

    async def _open_group(self, group_id: str) -> None:
        page = await self.api("get", f"/v1/groups/{group_id}/messages", {"limit": PAGE})
        if page is None:
            return
        shown = []
        for m in page["messages"]:
            # Keyed by the shared id, as reactions and edits name them.
            shown.append({**m, "id": m["gm"]})
            for member, copy in m.get("members", {}).items():
                self.copy_of[copy["id"]] = (m["gm"], member)
        await self.show_messages(shown)
        unread = [m["id"] for m in page["messages"] if not m["mine"] and not m["read"]]
        if unread:
            await self.api("post", "/v1/read", {"ids": unread})
        self.bump()

    async def show_messages(self, messages: list[dict[str, Any]], *, older: bool = False) -> None:
        if self.peer is None:
            return
        log = self.query_one("#log", MessageLog)
        views = []
        for m in messages:
            if m["id"] in self.views:
                continue
            view = MessageView(m, self.name_of(m.get("from") or self.peer))
            early = self.early_states.pop(m["id"], None)
            if early is not None:
                view.advance(early)
            self.views[m["id"]] = view
            views.append(view)
        if not views:
            return
        if older and log.children:
            # Keep what the user was looking at in place, older lines above it.
            first = log.children[0]
            await log.mount_all(views, before=first)
            self.call_after_refresh(log.scroll_to_widget, first, top=True, animate=False)
        else:
            await log.mount_all(views)
            if any(m["mine"] for m in messages):
                log.anchor()  # what we send is shown, wherever we had scrolled
        self.bump()

    def load_older_soon(self) -> None:
        if self.older is not None and not self.loading_older and self.peer is not None:
            self.loading_older = True
            self.run_worker(self._load_older(self.peer, self.older), exclusive=False)

    async def _load_older(self, peer: str, before: str) -> None:
        try:
            page = await self.api(
                "get", f"/v1/conversations/{peer}", {"limit": PAGE, "before": before}
            )
            if page is not None and peer == self.peer:
                self.older = page["before"]
                await self.show_messages(page["messages"], older=True)
        finally:
            self.loading_older = False
            self.bump()

    # --- the input line ------------------------------------------------------

    async def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "input" or self.peer is None or self.group is not None:
            return
        text = event.value
        if not text or text.startswith("/"):
            await self._stop_typing()
            return
        now = time.monotonic()
        if not self.typing_active or now - self.typing_sent_at >= TYPING_REPEAT_S:
            self.typing_active, self.typing_sent_at = True, now
            # In the background: typing must never slow the keyboard down.
            self.run_worker(self._typing(self.peer, True), group="typing")
        if self._idle_timer is not None:
            self._idle_timer.stop()
        self._idle_timer = self.set_timer(TYPING_IDLE_S, self._stop_typing)

    async def _typing(self, peer: str, active: bool) -> None:
        # Best effort and never an error on screen: typing is a courtesy.
        with contextlib.suppress(ApiClientError):
            await asyncio.to_thread(self.client.post, "/v1/typing", {"to": peer, "active": active})

    async def _stop_typing(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.stop()
            self._idle_timer = None
        if self.typing_active and self.peer is not None and self.group is None:
            self.typing_active = False
            await self._typing(self.peer, False)

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "input":
            return
        text = event.value.strip()
        if not text:
            return
        event.input.value = ""
        if text.startswith("/"):
            await self.run_command(text)
        elif self.peer is None:
            self.notify("Pick a conversation first (or /add ID NAME)", severity="warning")
        elif self.group is not None:
            await self._send_group(self.group, text)
        else:
            await self._stop_typing()
            sent = await self.api("post", "/v1/messages", {"to": self.peer, "text": text})
            if sent is not None:
                now = time.time()
                await self.show_messages(
                    [
                        {
                            "id": mid,
                            "mine": True,
                            "ts": now,
                            "text": text,
                            "state": "queued",
                            "vanish": now + self.timer if self.timer else None,
                        }
                        for mid in sent["ids"]
                    ]
                )
                self.refresh_sidebar_soon()
        self.bump()

    async def _send_group(self, group_id: str, text: str) -> None:
        sent = await self.api("post", f"/v1/groups/{group_id}/messages", {"text": text})
        if sent is None:
            return
        [shared] = sent["ids"]
        members = {}
        for member, [copy] in sent["copies"].items():
            self.copy_of[copy] = (shared, member)
            members[member] = {"state": "queued"}
        mine = {"id": shared, "mine": True, "ts": time.time(), "text": text, "members": members}
        await self.show_messages([mine])

    def _last(self, *, mine: bool) -> MessageView | None:
        """The newest live message on screen, ours or theirs."""
        for view in reversed(list(self.views.values())):
            if view.mine == mine and not view.deleted:
                return view
        return None

    # --- commands ---------------------------------------------------------

    async def run_command(self, line: str) -> None:
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        peer = self.peer
        needs_peer = {"rename", "accept", "block", "unblock", "safety", "timer", "file"}
        if name in needs_peer and (peer is None or self.group is not None):
            self.notify(f"/{name} works on an open conversation with one person: pick one first")
            return
        if name in ("react", "edit", "unsend") and peer is None:
            self.notify(f"/{name} works on an open conversation: pick one first")
            return
        if name in ("invite", "kick") and self.group is None:
            self.notify(f"/{name} works on an open group: pick one first")
            return
        if name == "help":
            self.push_screen(InfoScreen("p2pdm chat", HELP))
        elif name == "add":
            node_id, _, contact_name = rest.partition(" ")
            body: dict[str, Any] = {"id": node_id}
            if contact_name.strip():
                body["name"] = contact_name.strip()
            added = await self.api("post", "/v1/contacts", body)
            if added is not None:
                await self.refresh_sidebar()
                await self.open_conversation(added["id"])  # the id as the node spells it
        elif name == "rename" and peer is not None:
            if await self.api("post", "/v1/contacts", {"id": peer, "name": rest or None}):
                await self.refresh_sidebar()
        elif name == "accept" and peer is not None:
            if await self.api("post", f"/v1/requests/{peer}/accept"):
                self.notify(f"accepted {self.name_of(peer)}")
                await self.refresh_sidebar()
        elif name in ("block", "unblock") and peer is not None:
            if await self.api("post", f"/v1/contacts/{peer}/{name}"):
                self.notify(f"{name}ed {self.name_of(peer)}")
                await self.refresh_sidebar()
        elif name == "safety" and peer is not None:
            answer = await self.api("get", f"/v1/safety-number/{peer}")
            if answer is not None:
                groups = answer["safety_number"].split()
                rows = "\n".join(" ".join(groups[i : i + 4]) for i in range(0, len(groups), 4))
                self.push_screen(
                    InfoScreen(
                        f"Safety number with {self.name_of(peer)}",
                        f"{rows}\n\nCompare it with theirs in person or on a call: if it "
                        "is the same, nobody sits between you.",
                    )
                )
        elif name == "search":
            self.action_search(rest)
        elif name == "receipts" and rest in ("on", "off"):
            if await self.api("post", "/v1/settings", {"read_receipts": rest == "on"}):
                self.notify(f"read receipts {rest}")
        elif name in ("react", "edit", "unsend", "timer", "file") and peer is not None:
            await self._message_command(name, rest, peer)
        elif name == "group":
            group_name, *members = rest.split()
            created = await self.api("post", "/v1/groups", {"name": group_name, "members": members})
            if created is not None:
                await self.refresh_sidebar()
                await self.open_conversation(GROUP_PREFIX + created["id"])
        elif name in ("invite", "kick") and self.group is not None and rest:
            change = {"add" if name == "invite" else "remove": [rest]}
            if await self.api("post", f"/v1/groups/{self.group}", change) is not None:
                self.notify(f"{'added' if name == 'invite' else 'removed'} {rest}")
                await self.refresh_sidebar()
                self._show_title()
        else:
            self.notify(f"unknown command {line.split()[0]!r}: try /help", severity="warning")
        self.bump()

    async def _message_command(self, name: str, rest: str, peer: str) -> None:
        """/react, /edit and /unsend (in any conversation, a group's too),
        /timer and /file (with one person)."""
        if name == "timer":
            try:
                seconds = 0.0 if rest == "off" else parse_duration(rest)
            except ValueError as exc:
                self.notify(str(exc), severity="warning")
                return
            await self.api("post", f"/v1/conversations/{peer}/timer", {"seconds": seconds})
            return
        if name == "file":
            path = await asyncio.to_thread(lambda: str(Path(rest).expanduser().resolve()))
            sent = await self.api("post", "/v1/files", {"to": peer, "path": path})
            if sent is not None:
                view = {"id": sent["id"], "mine": True, "ts": time.time(), "file": sent["file"]}
                await self.show_messages([{**view, "state": "queued"}])
            return
        target = self._last(mine=name != "react")
        if target is None:
            self.notify(f"no message to {name} here", severity="warning")
        elif name == "react":
            await self.api("post", f"/v1/messages/{target.message_id}/reaction", {"emoji": rest})
        elif name == "edit" and rest:
            await self.api("post", f"/v1/messages/{target.message_id}/edit", {"text": rest})
        elif name == "unsend":
            await self.api("delete", f"/v1/messages/{target.message_id}")

    # --- actions ------------------------------------------------------------

    def action_search(self, query: str = "") -> None:
        async def opened(peer: str | None) -> None:
            if peer is not None:
                await self.refresh_sidebar()
                await self.open_conversation(peer)
            self.bump()

        self.push_screen(SearchScreen(self.client, query), opened)

    def action_scroll_log(self, direction: int) -> None:
        log = self.query_one("#log", MessageLog)
        if direction < 0:
            log.scroll_page_up(animate=False)
            if log.scroll_y <= 0:
                self.load_older_soon()
        else:
            log.scroll_page_down(animate=False)

    def action_help(self) -> None:
        self.push_screen(InfoScreen("p2pdm chat", HELP))

    async def action_next_unread(self) -> None:
        for c in self.conversations.values():
            if c.unread and c.peer != self.peer:
                await self.open_conversation(c.peer)
                return

    # --- what tests and screenshots look at -------------------------------

    def shown_messages(self) -> list[str]:
        """The open conversation's lines as the screen shows them."""
        return [v.plain for v in self.query(MessageView)]


def run_chat(home: Path, peer: str | None) -> int:
    """Run the app against the node of `home`; without one, say how to start it."""
    client = ApiClient(home / API_SOCKET_NAME, timeout=30.0)
    try:
        client.get("/v1/status")
    except ApiClientError as exc:
        print(f"p2pdm: {exc}")
        return 1
    result = ChatApp(client, peer).run()
    return 0 if result is None else result
