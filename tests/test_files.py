"""Attachments: offers, chunk checks, and transfers between nodes over real TCP."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from p2pdm import files, wire
from p2pdm.files import CHUNK_SIZE, FileError
from tests.nodeproc import NodeProcess, cli, init_home, json_lines, wait_event
from tests.nodes import next_event
from tests.test_relay import Home, run_until_cancelled, until

if TYPE_CHECKING:
    from p2pdm.node import Node

DEADLINE = 60


def file_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()  # as `b2sum -l 256`


def write(path: Path, size: int, seed: int = 1) -> bytes:
    data = (seed.to_bytes(4, "big") * (size // 4 + 1))[:size]
    data = bytes(b ^ (i * 131 % 251) for i, b in enumerate(data[:4096])) + data[4096:]
    path.write_bytes(data)
    return data


def test_an_offer_round_trips_and_a_bad_one_says_why() -> None:
    data = os.urandom(CHUNK_SIZE + 10)
    chunks = (files.chunk_hash(data[:CHUNK_SIZE]), files.chunk_hash(data[CHUNK_SIZE:]))
    offer = files.new_offer("photo.jpg", len(data), files.file_hash(data), chunks, None)
    assert files.parse_offer(wire.decode(wire.encode(offer.body()))) == offer
    body = offer.body()
    body["ch"] = [chunks[0]]
    with pytest.raises(wire.WireError, match="must list 2 chunk hashes"):
        files.parse_offer(body)
    body = offer.body()
    body["name"] = "../../.bashrc"
    with pytest.raises(wire.WireError, match="plain file name"):
        files.parse_offer(body)
    inline = files.new_offer("a.txt", 3, files.file_hash(b"abc"), (), b"abc")
    body = inline.body()
    body["d"] = b"abd"
    with pytest.raises(wire.WireError, match="does not match"):
        files.parse_offer(body)


def test_a_chunk_is_checked_against_its_hash_and_key() -> None:
    plain = b"x" * 1000
    offer = files.Offer(
        b"o" * 16, "f", 1000, files.file_hash(plain), (files.chunk_hash(plain),), b"k" * 32
    )
    sealed = files.seal_chunk(offer.key, 0, plain)
    assert files.open_chunk(offer, 0, sealed) == plain
    with pytest.raises(FileError, match="does not decrypt"):
        files.open_chunk(offer, 0, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    lying = files.seal_chunk(offer.key, 0, b"y" * 1000)  # right key, wrong bytes
    with pytest.raises(FileError, match="does not match its hash"):
        files.open_chunk(offer, 0, lying)


def test_names_are_made_plain() -> None:
    assert files.safe_name("../etc/passwd") == "_etc_passwd"
    assert files.safe_name(".hidden") == "hidden"
    assert files.safe_name("a\x1b[31mb") == "a_[31mb"
    assert files.safe_name("") == "file"


async def start(nursery: trio.Nursery, home: Home, *bootstrap: Any, relay: bool = True) -> Node:
    node = home.node(*bootstrap, relay=relay)
    await nursery.start(run_until_cancelled, node)
    return node


async def start_pair(
    nursery: trio.Nursery, a_home: Home, b_home: Home, *, accept: bool = True
) -> tuple[Node, Node]:
    """b, then a bootstrapped to b; b accepts a first (files come only from
    accepted peers) unless told not to."""
    b = await start(nursery, b_home)
    if accept:
        await b.accept_peer(a_home.id)
    return await start(nursery, a_home, b.bound[0]), b


async def test_a_file_is_fetched_checked_and_then_delivered(tmp_path: Path) -> None:
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    source = tmp_path / "report.pdf"
    data = write(source, 12 * CHUNK_SIZE + 123)  # over the relay cap: fetched
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, a_home, b_home)
            b_events = b.events.subscribe()
            a_events = a.events.subscribe()
            mid, offer = await a.send_file(b_home.id, source)
            assert offer.inline is None
            message = await next_event(b_events, "message")
            assert message["file"]["name"] == "report.pdf"
            assert message["file"]["blake2b"] == file_hash(data)
            while (event := await next_event(b_events, "file"))["state"] != "done":
                assert event["received"] <= len(data)
            assert (tmp_path / "b" / "files" / "report.pdf").read_bytes() == data
            await until(a_events, ("delivered", {"id": mid.hex()}))
            [entry] = b.store.files_in(message_ids=[mid])
            assert entry.path == str(tmp_path / "b" / "files" / "report.pdf")
            # The same name again does not overwrite the first.
            mid2, _ = await a.send_file(b_home.id, source)
            await until(a_events, ("delivered", {"id": mid2.hex()}))
            [entry2] = b.store.files_in(message_ids=[mid2])
            assert entry2.path == str(tmp_path / "b" / "files" / "report (1).pdf")
            # Delivered: the sender's copies can go (housekeeping does this).
            sent = tmp_path / "a" / "files" / ".sent"
            assert len(list(sent.iterdir())) == 2
            assert await a.transfers.forget_finished() == 2
            assert list(sent.iterdir()) == []
            assert await a.transfers.forget_finished() == 0
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("size", "parts"), [(20_000, 0), (300_000, 7)])
async def test_a_file_under_the_relay_cap_reaches_an_offline_peer_through_a_relay(
    tmp_path: Path, size: int, parts: int
) -> None:
    """Inline (one envelope) or in 48 KiB parts: relays carry it like mail."""
    a_home, r_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "r"), Home(tmp_path, "b")
    source = tmp_path / "photo.jpg"
    data = write(source, size)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            r = await start(nursery, r_home)
            async with trio.open_nursery() as a_scope:
                a = await start(a_scope, a_home, r.bound[0], relay=False)
                a_events = a.events.subscribe()
                mid, offer = await a.send_file(b_home.id, source)
                assert (offer.parts, offer.inline == data) == (parts, not parts)
                kinds = sorted(row.kind for row in a.store.outbox())
                assert kinds == [7] + [12] * parts
                for _ in range(1 + parts):
                    await next_event(a_events, "relayed")
                a_scope.cancel_scope.cancel()
            assert r.store.relay_usage()[0] == 1 + parts
            b = await start(nursery, b_home, r.bound[0], relay=False)
            await b.accept_peer(a_home.id)  # files come only from accepted peers
            b_events = b.events.subscribe()
            while (event := await next_event(b_events, "file"))["state"] != "done":
                assert event["received"] < len(data)
            assert event["id"] == mid.hex()
            assert (tmp_path / "b" / "files" / "photo.jpg").read_bytes() == data
            # The parts are not kept twice, and are not listed as messages.
            assert [m.kind for m in b.store.inbox()] == [7]
            nursery.cancel_scope.cancel()


def test_parts_must_make_the_offered_file() -> None:
    data = os.urandom(100_000)
    offer = files.new_offer("a.bin", len(data), files.file_hash(data), (), None, in_parts=True)
    assert offer.parts == 3
    assert files.parse_offer(wire.decode(wire.encode(offer.body()))) == offer
    parts = {i: files.parse_part(body)[2] for i, body in enumerate(files.part_bodies(offer, data))}
    assert files.assemble(offer, parts) == data
    with pytest.raises(FileError, match="missing"):
        files.assemble(offer, {0: parts[0], 1: parts[1]})
    with pytest.raises(FileError, match="do not make the file"):
        files.assemble(offer, {**parts, 2: parts[2][:-1] + b"!"})
    body = offer.body()
    body["parts"] = 4
    with pytest.raises(wire.WireError, match="are 3 parts"):
        files.parse_offer(body)
    # The largest file a node may send in parts fits the format.
    biggest = files.new_offer("b", files.MAX_RELAYED_SIZE, bytes(32), (), None, in_parts=True)
    assert files.parse_offer(biggest.body()).parts == files.MAX_PARTS == 342


async def test_a_strangers_file_waits_until_the_user_accepts_them(tmp_path: Path) -> None:
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    source = tmp_path / "unsolicited.bin"
    data = write(source, 5 * CHUNK_SIZE)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, a_home, b_home, accept=False)
            b_events = b.events.subscribe()
            a_events = a.events.subscribe()
            mid, _ = await a.send_file(b_home.id, source)
            offer_event = await next_event(b_events, "message")
            assert (offer_event["id"], offer_event["request"]) == (mid.hex(), True)
            # A text after the offer arrives, while the file is not fetched.
            [later] = await a.send_texts(b_home.id, ["did you get it?"])
            await until(b_events, ("message", {"id": later.hex()}))
            [entry] = b.store.files_in(message_ids=[mid])
            assert (entry.state, entry.next_chunk) == ("fetching", 0)
            assert not (tmp_path / "b" / "files").exists()
            await b.accept_peer(a_home.id)
            while (await next_event(b_events, "file"))["state"] != "done":
                pass
            assert (tmp_path / "b" / "files" / "unsolicited.bin").read_bytes() == data
            await until(a_events, ("delivered", {"id": mid.hex()}))
            nursery.cancel_scope.cancel()


async def test_a_file_that_cannot_be_saved_fails_and_the_node_goes_on(tmp_path: Path) -> None:
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    source = tmp_path / "note.txt"
    write(source, 1000)
    (tmp_path / "b" / "files").write_text("not a folder")  # the disk refuses
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, a_home, b_home)
            b_events = b.events.subscribe()
            mid, _ = await a.send_file(b_home.id, source)
            event = await next_event(b_events, "file")
            assert (event["id"], event["state"]) == (mid.hex(), "failed")
            assert "cannot save it" in event["reason"]
            [text] = await a.send_texts(b_home.id, ["still there?"])
            await until(b_events, ("message", {"id": text.hex()}))
            nursery.cancel_scope.cancel()


def test_long_names_are_cut_by_bytes_and_offers_with_them_refused() -> None:
    name = "é" * 150 + ".txt"  # 304 bytes in UTF-8
    cut = files.safe_name(name)
    assert len(cut.encode()) <= files.MAX_NAME_BYTES
    assert cut == "é" * 100
    offer = files.new_offer(name, 3, files.file_hash(b"abc"), (), b"abc")
    assert offer.name == cut
    body = offer.body()
    body["name"] = name
    with pytest.raises(wire.WireError):
        files.parse_offer(body)


async def test_a_corrupted_chunk_is_detected_and_fetched_again(tmp_path: Path) -> None:
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    source = tmp_path / "big.bin"
    data = write(source, 5 * CHUNK_SIZE)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, a_home, b_home)
            b_events = b.events.subscribe()
            honest = a.transfers.seal_chunk
            lies: list[int] = []

            def lying(key: bytes, index: int, plain: bytes) -> bytes:
                # A malicious sender: the key is right, the bytes are not (once).
                if index == 2 and not lies:
                    lies.append(index)
                    plain = bytes([plain[0] ^ 0xFF]) + plain[1:]
                return honest(key, index, plain)

            a.transfers.seal_chunk = lying  # type: ignore[method-assign]
            await a.send_file(b_home.id, source)
            while (await next_event(b_events, "file"))["state"] != "done":
                pass
            assert lies == [2]
            assert (tmp_path / "b" / "files" / "big.bin").read_bytes() == data
            nursery.cancel_scope.cancel()


async def test_a_sender_that_keeps_lying_is_disconnected_and_nothing_is_kept(
    tmp_path: Path,
) -> None:
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    source = tmp_path / "big.bin"
    write(source, 5 * CHUNK_SIZE)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a, b = await start_pair(nursery, a_home, b_home)
            b_events = b.events.subscribe()

            def lying(key: bytes, index: int, plain: bytes) -> bytes:
                return files.seal_chunk(key, index, b"\0" * len(plain))

            a.transfers.seal_chunk = lying  # type: ignore[method-assign]
            mid, _ = await a.send_file(b_home.id, source)
            await until(b_events, ("file", {"state": "failed"}), ("peer", {"connected": False}))
            [entry] = b.store.files_in(message_ids=[mid])
            assert entry.state == "failed"
            assert entry.reason is not None
            assert "does not match its hash, 3 times" in entry.reason
            assert not (tmp_path / "b" / "files" / "big.bin").exists()
            nursery.cancel_scope.cancel()


def test_a_50_mib_file_resumes_after_the_receiver_is_killed(tmp_path: Path) -> None:
    """Real processes: B is SIGKILLed mid-transfer, restarts, and fetches
    only what it did not hold; the file arrives whole with the right hash."""
    a_id = init_home(tmp_path / "a")
    b_id = init_home(tmp_path / "b")
    source = tmp_path / "video.bin"
    data = write(source, 50 * 1024 * 1024, seed=7)
    a = NodeProcess(tmp_path / "a").start()
    b = NodeProcess(tmp_path / "b", "--bootstrap", a.address)
    b2 = None
    try:
        b.start()
        a.wait_connected(b_id)
        assert cli(b.home, "contacts", "add", a_id).returncode == 0  # files from contacts
        with b.api.events("/v1/events") as b_events:
            sent = cli(a.home, "send", b_id, "--file", str(source))
            assert sent.returncode == 0, sent.stderr
            mid = sent.stdout.strip()
            # Kill B once it holds a few synced stretches, well before the end.
            progress = wait_event(
                b_events, "file", lambda e: e["id"] == mid and e["received"] >= 12 << 20
            )
            assert progress["received"] < len(data)
        b.kill()
        with a.api.events("/v1/events") as a_events:
            b2 = NodeProcess(tmp_path / "b", "--bootstrap", a.address)
            with contextlib.ExitStack() as stack:
                b2.start()
                b2_events = stack.enter_context(b2.api.events("/v1/events"))
                first = wait_event(b2_events, "file", lambda e: e["id"] == mid)
                # It resumed from what it held, not from the start.
                assert first["received"] >= 4 << 20
                wait_event(a_events, "delivered", lambda e: e["id"] == mid, timeout=120)
        [m] = [m for m in json_lines(cli(b2.home, "inbox", "--json").stdout) if m["id"] == mid]
        assert m["file"]["blake2b"] == file_hash(data)
        assert m["file"]["size"] == len(data)
        assert m["file"]["state"] == "done"
        received = Path(m["file"]["path"])
        assert received == tmp_path / "b" / "files" / "video.bin"
        assert hashlib.sha256(received.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert not list((tmp_path / "b" / "files" / ".partial").iterdir())
    finally:
        a.close()
        b.close()
        if b2 is not None:
            b2.close()


async def test_a_file_the_sender_no_longer_has_fails_with_the_reason(tmp_path: Path) -> None:
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    source = tmp_path / "gone.bin"
    write(source, 6 * CHUNK_SIZE)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            a = await start(nursery, a_home)
            mid, _ = await a.send_file(b_home.id, source)
            for copy in (tmp_path / "a" / "files" / ".sent").iterdir():
                copy.unlink()  # the sender's copy is lost
            b = await start(nursery, b_home, a.bound[0])
            await b.accept_peer(a_home.id)  # files come only from accepted peers
            b_events = b.events.subscribe()
            event = await next_event(b_events, "file")
            assert (event["state"], event["id"]) == ("failed", mid.hex())
            assert "no longer on the sender's node" in event["reason"]
            # The link is fine: the other answers were read, and a text still goes.
            [text] = await a.send_texts(b_home.id, ["still talking"])
            await until(b_events, ("message", {"id": text.hex()}))
            assert b.links[a_home.id].opened.is_set()
            nursery.cancel_scope.cancel()


def test_a_part_sent_again_in_another_envelope_is_kept_once(tmp_path: Path) -> None:
    """A peer flooding copies of one part (new envelopes, new ids) costs one row."""
    from p2pdm import envelope
    from p2pdm.envelope import MessageKind
    from p2pdm.identity import Identity
    from p2pdm.store import AcceptResult, Store

    sender, me = Identity.generate(), Identity.generate()
    store = Store.open(tmp_path / "s.db")
    now = 1_700_000_000_000
    body = {"x": b"o" * 16, "i": 0, "d": b"piece"}
    copies = []
    for n in range(3):  # the same part, sealed three times: three message ids
        sealed = envelope.seal(
            sender,
            me.node_id,
            MessageKind.FILE_PART,
            body,
            timestamp_ms=now + n,
            expires_ms=now + 10**6,
        )
        copies.append((envelope.open_envelope(me, sealed), sealed))
    results = store.accept_incoming_many(copies[:2], now) + store.accept_incoming_many(
        copies[2:], now
    )
    assert results == [AcceptResult.STORED, AcceptResult.DUPLICATE, AcceptResult.DUPLICATE]
    assert store.count_file_parts(b"o" * 16, sender.node_id) == (1, len(wire.encode(body)))
    store.close()


async def test_leftovers_of_a_crash_are_deleted_at_start(tmp_path: Path) -> None:
    """A copy whose offer was never stored, and a partial file of no fetch."""
    home = Home(tmp_path, "a")
    sent, partial = tmp_path / "a" / "files" / ".sent", tmp_path / "a" / "files" / ".partial"
    sent.mkdir(parents=True)
    partial.mkdir()
    for stale in (sent / ("ab" * 16), sent / ".tmp-0123", partial / f"{'cd' * 16}.part"):
        stale.write_bytes(b"left by a crash")
        os.utime(stale, (1_000_000_000, 1_000_000_000))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node = await start(nursery, home)
            await node.transfers._forget_stale_files()  # what run() does first
            assert list(sent.iterdir()) == []
            assert list(partial.iterdir()) == []
            nursery.cancel_scope.cancel()


async def test_a_fetch_cut_off_resumes_from_the_last_chunk_held(tmp_path: Path) -> None:
    """The sender goes away mid-file: the receiver keeps every chunk it held
    (not only those of its last periodic sync) and fetches only the rest."""
    a_home, b_home = Home(tmp_path, "a"), Home(tmp_path, "b")
    source = tmp_path / "album.zip"
    data = write(source, 48 * CHUNK_SIZE + 5)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            b = await start(nursery, b_home)
            await b.accept_peer(a_home.id)
            b_events = b.events.subscribe()
            async with trio.open_nursery() as a_scope:
                a = await start(a_scope, a_home, b.bound[0])
                mid, _ = await a.send_file(b_home.id, source)
                last = 0  # the last progress b showed
                while last < 20 * CHUNK_SIZE:
                    last = (await next_event(b_events, "file"))["received"]
                a_scope.cancel_scope.cancel()  # the sender goes away
            async for name, event in b_events:
                if name == "file":
                    last = event["received"]
                elif name == "peer" and not event["connected"]:
                    break
            [entry] = b.store.files_in(message_ids=[mid])
            assert entry.state == "fetching"
            assert entry.next_chunk * CHUNK_SIZE == last  # all it held, synced
            a = await start(nursery, a_home, b.bound[0])
            first = await next_event(b_events, "file")
            assert first["received"] == last + CHUNK_SIZE  # the very next chunk
            while (await next_event(b_events, "file"))["state"] != "done":
                pass
            assert (tmp_path / "b" / "files" / "album.zip").read_bytes() == data
            nursery.cancel_scope.cancel()


def test_a_part_file_shorter_than_recorded_starts_over(tmp_path: Path) -> None:
    """A lost or deleted partial file is not taken as zeros."""
    from p2pdm.transfer import _open_part

    part = tmp_path / "x.part"
    part.write_bytes(b"\1" * (3 * CHUNK_SIZE))
    fd, held = _open_part(part, 2)
    os.close(fd)
    assert (held, part.stat().st_size) == (2, 2 * CHUNK_SIZE)  # cut back to what is recorded
    part.unlink()
    fd, held = _open_part(part, 2)
    os.close(fd)
    assert (held, part.stat().st_size) == (0, 0)


def test_an_offer_read_before_its_file_is_served_keeps_its_copy(tmp_path: Path) -> None:
    """A read receipt (or a relay's notice) can come while the recipient
    still fetches: the sender's copy stays until the file was served whole."""
    from p2pdm.identity import Identity
    from p2pdm.store import OutboxState, Queued, Store

    store = Store.open(tmp_path / "s.db")
    peer, now = Identity.generate().node_id, 1_700_000_000_000
    mid, offer_id = b"m" * 32, b"o" * 16
    store.enqueue_many([Queued(mid, peer, b"env", 7, {"x": offer_id}, now + 10**6)], now)
    store.add_file_out(offer_id, mid, peer, bytes(32), 1000, bytes(32), now + 10**6)
    store.mark_outbox_read([mid], now, recipient=peer)
    [row] = store.outbox()
    assert row.state is OutboxState.READ
    assert store.end_file_offers(now) == []  # not served yet
    store.note_file_served(offer_id, 1000)
    assert store.end_file_offers(now) == [offer_id]
    store.close()
