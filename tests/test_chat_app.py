"""The chat app driven as a user would (Textual's pilot, 80x24), against two
real `p2pdm run` processes on 127.0.0.1.

The apps run on asyncio (Textual's loop), so these tests are plain functions
that run their scenario with asyncio.run. Set P2PDM_SCREENSHOT_DIR to save
the screens shown in the README (scripts/chat_screenshots.sh does).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from textual import events
from textual.widgets import Input

from p2pdm import chat
from p2pdm.chat import ChatApp
from tests.nodeproc import NodeProcess, cli, init_home, json_lines

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest
    from textual.pilot import Pilot

DEADLINE = 30.0
SIZE = (80, 24)


async def until(app: ChatApp, check: Callable[[], bool], what: str) -> None:
    """Wait until `check()` holds, rechecking after each change the app shows."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not check():
                app.changed.clear()
                await app.changed.wait()
    except TimeoutError:
        raise AssertionError(
            f"timed out waiting for {what}; screen: {app.sidebar_lines} {app.title_line!r}"
            f" {app.shown_messages()} {app.typing_line!r}"
        ) from None


async def type_text(pilot: Pilot[int], text: str) -> None:
    await pilot.press(*("space" if ch == " " else ch for ch in text))


def screenshot(app: ChatApp, name: str) -> None:
    folder = os.environ.get("P2PDM_SCREENSHOT_DIR")
    if folder:
        app.save_screenshot(f"{name}.svg", folder)


def test_a_conversation_from_request_to_read_receipt(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Typing shows until the peer says it stopped (not until a timer runs out).
    monkeypatch.setattr(chat, "TYPING_SHOWN_S", 600.0)
    a, b, a_id, b_id = two_nodes
    asyncio.run(conversation(a, b, a_id, b_id))


async def conversation(a: NodeProcess, b: NodeProcess, a_id: str, b_id: str) -> None:
    app_a, app_b = ChatApp(a.api, b_id), ChatApp(b.api)
    async with app_a.run_test(size=SIZE) as pa, app_b.run_test(size=SIZE) as pb:
        await until(app_a, lambda: app_a.peer == b_id, "a's conversation with b")

        # a writes first: a stranger's message is a request on b's side.
        await type_text(pa, "hello bob, it is alice")
        await pa.press("enter")
        await until(app_a, lambda: "✓✓ delivered" in "".join(app_a.shown_messages()), "delivered")
        await until(app_b, lambda: any("Requests (1)" in s for s in app_b.sidebar_lines), "request")
        assert [s for s in app_b.sidebar_lines if a_id[:10] in s] == [f"● ? {a_id[:10]} (1)"]
        inbox = json_lines(cli(b.home, "inbox", "--json").stdout)
        assert [(m["text"], m["request"]) for m in inbox] == [("hello bob, it is alice", True)]
        screenshot(app_b, "chat-request")

        # b opens the request from the list: it reads it, but sends no read receipt.
        app_b.query_one("#sidebar").focus()
        await pb.press("down", "enter")
        await until(app_b, lambda: app_b.peer == a_id, "b opens a's request")
        await until(app_b, lambda: len(app_b.shown_messages()) == 1, "a's message on b's screen")
        assert app_b.shown_messages()[0].endswith(f"{a_id[:10]}: hello bob, it is alice")
        assert "request: /accept or /block" in app_b.title_line

        # b accepts; a types: b sees the typing line, then the message.
        app_b.query_one("#input").focus()
        await type_text(pb, "/accept")
        await pb.press("enter")
        await until(app_b, lambda: "request" not in app_b.title_line, "accepted")
        await type_text(pa, "are you there")
        await until(app_b, lambda: app_b.typing_line.endswith("is typing…"), "typing shown")
        screenshot(app_b, "chat-typing")
        await pa.press("enter")
        await until(app_b, lambda: app_b.typing_line == "", "typing cleared")
        await until(app_b, lambda: len(app_b.shown_messages()) == 2, "the second message")

        # b has the conversation open: the second message is read, the first
        # (read while it was a request) stays delivered.
        await until(app_a, lambda: app_a.shown_messages()[-1].endswith("✓✓ read"), "read")
        assert app_a.shown_messages()[0].endswith("✓✓ delivered")

        # b answers; a long line wraps inside 80 columns.
        await type_text(pb, "yes! " + "this is a long answer that has to wrap " * 3)
        await pb.press("enter")
        await until(app_a, lambda: len(app_a.shown_messages()) == 3, "b's answer on a's screen")
        screenshot(app_a, "chat-conversation")

        # search finds a message and opens its conversation.
        await type_text(pb, "/search alice")
        await pb.press("enter")
        await until(app_b, lambda: bool(getattr(app_b.screen, "results", None)), "search results")
        results = app_b.screen.results  # type: ignore[attr-defined]
        assert [r["text"] for r in results] == ["hello bob, it is alice"]
        screenshot(app_b, "chat-search")
        await pb.press("enter")
        await until(app_b, lambda: app_b.screen is app_b.screen_stack[0], "search closed")
        assert app_b.peer == a_id

        # While b's terminal is not focused, a message is shown but not read;
        # it is read (and a sees it) once b's window has the focus again.
        app_b.post_message(events.AppBlur())
        await until(app_b, lambda: app_b.away, "b away")
        await type_text(pa, "still there?")
        await pa.press("enter")
        await until(app_b, lambda: app_b.shown_messages()[-1].endswith("still there?"), "shown")
        await until(app_a, lambda: app_a.shown_messages()[-1].endswith("delivered"), "delivered")
        await until(app_b, lambda: app_b.sidebar_lines == [f"● {a_id[:10]} (1)"], "unread")
        app_b.post_message(events.AppFocus())
        await until(app_a, lambda: app_a.shown_messages()[-1].endswith("✓✓ read"), "read")


def test_edits_reactions_files_timers_and_groups_in_the_chat(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str], tmp_path: Path
) -> None:
    a, b, a_id, b_id = two_nodes
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"minutes of the meeting\n" * 500)
    asyncio.run(changes(a, b, a_id, b_id, notes))


async def submit(pilot: Pilot[int], app: ChatApp, line: str) -> None:
    """Type a line into the input (emoji too) and press Enter."""
    app.query_one("#input", Input).value = line
    await pilot.press("enter")


async def changes(a: NodeProcess, b: NodeProcess, a_id: str, b_id: str, notes: Path) -> None:
    app_a, app_b = ChatApp(a.api, b_id), ChatApp(b.api, a_id)
    async with app_a.run_test(size=SIZE) as pa, app_b.run_test(size=SIZE) as pb:
        await until(app_a, lambda: app_a.peer == b_id, "a's conversation with b")
        await until(app_b, lambda: app_b.peer == a_id, "b's conversation with a")
        last_b = lambda: app_b.shown_messages()[-1] if app_b.shown_messages() else ""  # noqa: E731
        last_a = lambda: app_a.shown_messages()[-1] if app_a.shown_messages() else ""  # noqa: E731

        await submit(pa, app_a, "helo")
        await until(app_b, lambda: last_b().endswith(": helo"), "the text on b's screen")
        await submit(pa, app_a, "/edit hello")
        await until(app_b, lambda: last_b().endswith(": hello (edited)"), "the edit")
        await submit(pb, app_b, "/react 👍")
        await until(app_a, lambda: "hello (edited)  👍" in last_a(), "the reaction")
        await submit(pa, app_a, "/unsend")
        await until(app_b, lambda: last_b().endswith(": message unsent"), "the unsend")
        await until(app_a, lambda: ": message unsent" in last_a(), "unsent on a's side")

        await submit(pa, app_a, "/timer 1h")
        await until(app_b, lambda: "⏱ 1h" in app_b.title_line, "the timer on b's side")
        await submit(pb, app_b, "this one disappears")
        await until(app_a, lambda: last_a().endswith("this one disappears"), "arrived")
        assert "⏱" in last_a()

        await submit(pa, app_a, f"/file {notes}")
        saved = "saved as notes.txt"
        await until(app_b, lambda: "📎 notes.txt (11 KiB)" in last_b(), "the file offer")
        await until(app_b, lambda: saved in last_b(), "the file saved")
        await until(app_a, lambda: "✓✓" in last_a(), "the file delivered (or read)")
        screenshot(app_b, "chat-changes")

        await submit(pa, app_a, f"/group team {b_id}")
        await until(app_a, lambda: app_a.title_line.startswith("# team"), "a's group open")
        await submit(pa, app_a, "hi team")
        await until(app_a, lambda: last_a().endswith("✓✓ 1/1 delivered"), "delivered to b")
        await until(app_b, lambda: "# team" in app_b.sidebar_lines, "the group in b's list")
        # A group message is not shown in the 1:1 conversation.
        assert not any("hi team" in line for line in app_b.shown_messages())
        group_id = next(iter(app_b.groups))
        await app_b.open_conversation(chat.GROUP_PREFIX + group_id)
        await until(app_b, lambda: last_b().endswith("hi team"), "the group message on b's screen")
        assert a_id[:10] in last_b()
        await submit(pb, app_b, "/react 🎉")
        await until(app_a, lambda: "hi team  🎉" in last_a(), "b's reaction on a's screen")
        await submit(pa, app_a, "/edit hi team, lunch?")
        await until(app_b, lambda: last_b().endswith("hi team, lunch? (edited)  🎉"), "the edit")
        screenshot(app_b, "chat-group")


def test_history_loads_older_pages_when_scrolled_to_the_top(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str],
) -> None:
    a, b, a_id, b_id = two_nodes
    lines = "\n".join(f"line {i}" for i in range(120)) + "\nclear \x1b[2J\x1b]2;title\x07"
    sent = cli(a.home, "send", b_id, "--stdin", "--wait", "30", stdin=lines)
    assert sent.returncode == 0, sent.stderr
    asyncio.run(history(b, a_id))


async def history(b: NodeProcess, a_id: str) -> None:
    app = ChatApp(b.api, a_id)
    async with app.run_test(size=SIZE):
        await until(app, lambda: len(app.shown_messages()) == 50, "the latest page")
        # Escape sequences from a peer are shown, never sent to the terminal.
        assert app.shown_messages()[-1].endswith(": clear ␛[2J␛]2;title␇")
        assert app.shown_messages()[-2].endswith(": line 119")
        log = app.query_one("#log")
        for pages in (100, 121):
            # The view rests on the newest lines, or where the last page left it.
            await until(app, lambda: log.scroll_y > 0, "a view away from the top")
            log.scroll_home(animate=False)
            await until(app, lambda n=pages: len(app.shown_messages()) == n, f"{pages} lines")
        assert [m.rsplit(": ", 1)[1] for m in app.shown_messages()[:-1]] == [
            f"line {i}" for i in range(120)
        ]


def test_chat_without_a_node_says_how_to_start_one(tmp_path: Path) -> None:
    init_home(tmp_path / "n")
    result = cli(tmp_path / "n", "chat")
    assert result.returncode == 1
    assert "start one with `p2pdm run`" in result.stdout


def test_requests_accept_search_and_settings_from_the_command_line(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str],
) -> None:
    a, b, a_id, b_id = two_nodes
    sent = cli(a.home, "send", b_id, "knock knock from the cli", "--wait", "30")
    assert sent.returncode == 0, sent.stderr
    [request] = json_lines(cli(b.home, "requests", "--json").stdout)
    assert (request["peer"], request["received"], request["unread"]) == (a_id, 1, 1)
    assert "knock knock" in cli(b.home, "requests").stdout

    assert cli(b.home, "read", a_id).stdout.strip() == "1 message(s) marked read"
    accepted = cli(b.home, "accept", a_id[:12])
    assert (accepted.returncode, accepted.stdout.strip()) == (0, a_id)
    assert json_lines(cli(b.home, "requests", "--json").stdout) == []
    [message] = json_lines(cli(b.home, "inbox", "--json").stdout)
    assert (message["request"], message["read"]) == (False, True)

    [hit] = json_lines(cli(b.home, "search", "KNOCK", "--json").stdout)
    assert (hit["text"], hit["mine"], hit["peer"]) == ("knock knock from the cli", False, a_id)
    assert "[knock] [knock]" in cli(b.home, "search", "knock").stdout
    [mine] = json_lines(cli(a.home, "search", "from cli", "--json").stdout)
    assert mine["mine"] is True
    refused = cli(b.home, "search", "???")
    assert (refused.returncode, "at least one word" in refused.stderr) == (2, True)

    changed = cli(b.home, "settings", "--read-receipts", "off", "--accept", "contacts", "--json")
    assert json_lines(changed.stdout) == [{"read_receipts": False, "accept": "contacts"}]
    assert "accept: contacts" in cli(b.home, "settings").stdout
    bad = cli(b.home, "settings", "--accept", "friends")
    assert bad.returncode == 2
