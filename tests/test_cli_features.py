"""The command-line contract for groups, files and message changes, against
real `p2pdm run` processes (other tools script against it)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from p2pdm.apiclient import ApiRequestError
from tests.nodeproc import NodeProcess, cli, json_lines, wait_event

if TYPE_CHECKING:
    from pathlib import Path


def ok(result: object) -> str:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return str(result.stdout)  # type: ignore[attr-defined]


def test_groups_from_the_command_line(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str],
) -> None:
    a, b, a_id, b_id = two_nodes
    created = ok(cli(a.home, "group", "create", "team", "--member", b_id))
    group_id = created.strip()
    assert len(group_id) == 32
    assert created == group_id + "\n"  # the id alone on one line
    [group] = json_lines(ok(cli(a.home, "group", "list", "--json")))
    assert (group["id"], group["name"]) == (group_id, "team")
    assert sorted(group["members"]) == sorted([a_id, b_id])
    with b.api.events("/v1/events") as events:
        shared = ok(cli(a.home, "send", "--group", group_id[:8], "hello team", "--wait", "30"))
        assert len(shared.split()) == 1
        wait_event(events, "message", lambda m: m.get("group") == group_id)
    [message] = [m for m in json_lines(ok(cli(b.home, "inbox", "--json"))) if m["group"]]
    assert (message["group"], message["text"], message["from"]) == (group_id, "hello team", a_id)
    assert f"[{group_id[:8]}]" in ok(cli(b.home, "inbox"))
    # b is a member, not an admin.
    refused = cli(b.home, "group", "remove", group_id, a_id)
    assert refused.returncode == 2
    assert "only a group admin" in refused.stderr
    ok(cli(a.home, "group", "remove", "team", b_id))
    [after] = json_lines(ok(cli(a.home, "group", "list", "--json")))
    assert after["members"] == [a_id]
    bad = cli(a.home, "group", "add", "no-such-group", b_id)
    assert (bad.returncode, "no group" in bad.stderr) == (2, True)


def test_a_file_from_the_command_line(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str], tmp_path: Path
) -> None:
    a, b, a_id, b_id = two_nodes
    ok(cli(b.home, "contacts", "add", a_id))  # files are fetched from contacts
    source = tmp_path / "slides.pdf"
    data = bytes(range(256)) * 4096 * 3  # 3 MiB
    source.write_bytes(data)
    sent = cli(a.home, "send", b_id, "--file", str(source), "--wait", "60")
    mid = ok(sent).strip()
    assert "slides.pdf [" in sent.stderr  # the progress bar
    assert "100%" in sent.stderr
    [m] = [m for m in json_lines(ok(cli(b.home, "inbox", "--json"))) if m["id"] == mid]
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()  # as `b2sum -l 256`
    assert m["file"]["name"] == "slides.pdf"
    assert (m["file"]["size"], m["file"]["blake2b"]) == (len(data), digest)
    assert m["file"]["path"] == str(b.home / "files" / "slides.pdf")
    assert (b.home / "files" / "slides.pdf").read_bytes() == data
    if shutil.which("b2sum"):  # the hash shown is the one people can check
        b2sum = subprocess.run(
            ["b2sum", "-l", "256", m["file"]["path"]], capture_output=True, text=True, check=True
        )
        assert b2sum.stdout.split()[0] == m["file"]["blake2b"]
    missing = cli(a.home, "send", b_id, "--file", str(tmp_path / "nope"))
    assert (missing.returncode, "no such file" in missing.stderr) == (2, True)
    too_many = cli(a.home, "send", b_id, "text", "--file", str(source))
    assert too_many.returncode == 2


def test_edit_react_unsend_and_timer_from_the_command_line(
    two_nodes: tuple[NodeProcess, NodeProcess, str, str],
) -> None:
    a, b, a_id, b_id = two_nodes
    mid = ok(cli(a.home, "send", b_id, "helo", "--wait", "30")).strip()
    with a.api.events("/v1/events") as a_events, b.api.events("/v1/events") as b_events:
        ok(cli(a.home, "edit", mid, "hello"))
        wait_event(b_events, "edited", lambda e: e["id"] == mid)
        ok(cli(b.home, "react", mid, "🎉"))
        wait_event(a_events, "reaction", lambda e: e["id"] == mid)
        ok(cli(a.home, "timer", b_id, "1h"))
        wait_event(b_events, "timer", lambda e: e["after"] == 3600)
    page = b.api.get(f"/v1/conversations/{a_id}")
    assert page["timer"] == 3600
    [row] = page["messages"]
    assert (row["text"], row["edited"], row["reactions"]) == ("hello", True, {b_id: "🎉"})
    with b.api.events("/v1/events") as b_events:
        ok(cli(a.home, "unsend", mid))
        wait_event(b_events, "deleted", lambda e: e["id"] == mid)
    [row] = b.api.get(f"/v1/conversations/{a_id}")["messages"]
    assert (row["text"], row["deleted"]) == (None, True)
    assert cli(b.home, "edit", mid, "x").returncode == 2
    assert cli(a.home, "timer", b_id, "soon").returncode == 2
    for path, body in (
        (f"/v1/messages/{mid}/edit", {"text": "a", "texts": ["b", "c"]}),
        (f"/v1/conversations/{a_id}/timer", {"seconds": 60}),  # a's own id
    ):
        with pytest.raises(ApiRequestError) as refused:
            a.api.post(path, body)
        assert refused.value.status == 400
