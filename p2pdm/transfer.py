"""File transfers: staging files to send, serving offered chunks, fetching offered files.

Files live in the node's home folder, under files/:
- files/.sent/<offer id>: our copy of a file we offered, until the offer
  is delivered or expires; the user's original may change or go away;
- files/.partial/<offer id>.part: a fetch in progress; the store records
  how many chunks from the start are written and synced, and a fetch that
  was cut off resumes from there;
- files/<name>: a received file, once its every chunk and its whole hash
  were checked.

Each link to a peer whose HELLO lists FILES_FEATURE runs a server (answers
the peer's FGETs for offers made to it, one chunk at a time, so a peer's
requests cost one chunk of memory) and a fetcher (asks for the chunks of
offers from that peer, FETCH_WINDOW ahead, checking each). See
docs/PROTOCOL.md, "Files".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections import Counter
from typing import TYPE_CHECKING, BinaryIO

import trio

from p2pdm import files
from p2pdm.files import CHUNK_SIZE, FileError, Offer
from p2pdm.session import FileDataReceived, FileMissingReceived, SessionError
from p2pdm.store import StoreError

if TYPE_CHECKING:
    import hashlib
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from p2pdm.node import Node, PeerLink
    from p2pdm.store import FileIn, FileOut

log = logging.getLogger(__name__)

# Chunks asked for before the first is in: keeps a loopback link busy while
# the receiver holds at most this many chunks in memory (8: 2 MiB; 4 gave
# 75 MiB/s on loopback here, 8 gave 84).
FETCH_WINDOW = 8
# FGETs a peer may have waiting at our server; more is a peer not waiting
# for answers (its fetcher never asks more than FETCH_WINDOW ahead).
MAX_FILE_REQUESTS = 4 * FETCH_WINDOW
# Chunk pieces the link's reader buffers for the fetcher: two chunks' worth.
FILE_PIECES_BUFFERED = 12
# When a fetch is cut off, this long to save how far it got.
SAVE_ON_STOP_S = 5.0
# A chunk that fails its check this many times from one peer ends the link.
MAX_CHUNK_FAILURES = 3
# Progress is synced to disk and the store every this many chunks (4 MiB).
SYNC_EVERY = 16


class FetchStopped(Exception):
    """The sender cannot serve this file (gone, or not offered to us)."""


class SenderLied(SessionError):
    """The sender kept sending a chunk that fails its check: the fetch fails
    for good (no endless refetching from a hostile peer) and the link ends."""


def _sync_file(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


class Transfers:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.root = node.config.home / "files"
        self.sent_dir = self.root / ".sent"
        self.partial_dir = self.root / ".partial"
        self.inline_wake = trio.Event()
        self.created = time.time()
        """Files older than this, left without a record, are a crash's leftovers."""
        self._fetch_locks: dict[bytes, trio.Lock] = {}

    # --- sending ----------------------------------------------------------------

    def stage(self, source: Path) -> tuple[Offer, bytes | None, bytes | None]:
        """Read a file the user sends (in a worker thread): one up to the
        relay cap is taken whole (inline, or in parts), a larger one copied
        under files/.sent while hashed, so what is offered is what was
        hashed. Returns the offer, the data of an inline or parts one, and
        the hash of a fetched one's copy."""
        if not source.is_file():
            raise FileError(f"{source} is not a readable file")
        size = source.stat().st_size
        if size > files.MAX_FILE_SIZE:
            raise FileError(
                f"{source.name} is {size:,} bytes; the limit is {files.MAX_FILE_SIZE:,}"
            )
        whole_max = max(self.node.config.relay_file_max, files.MAX_INLINE_SIZE)
        if size <= whole_max:
            with source.open("rb") as f:
                data = f.read(whole_max + 1)
            if len(data) > whole_max:
                raise FileError(f"{source.name} grew while it was read; try again")
            digest = files.file_hash(data)
            if len(data) <= files.MAX_INLINE_SIZE:
                return files.new_offer(source.name, len(data), digest, (), data), data, None
            offer = files.new_offer(source.name, len(data), digest, (), None, in_parts=True)
            return offer, data, None
        self.sent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.sent_dir / f".tmp-{os.urandom(8).hex()}"
        whole, chunks, total = files.file_hasher(), [], 0
        try:
            with source.open("rb") as src, tmp.open("wb") as dst:
                while block := src.read(CHUNK_SIZE):
                    total += len(block)
                    if total > files.MAX_FILE_SIZE:
                        raise FileError(f"{source.name} grew past {files.MAX_FILE_SIZE:,} bytes")
                    whole.update(block)
                    chunks.append(files.chunk_hash(block))
                    dst.write(block)
                dst.flush()
                _sync_file(dst)
            file_hash = whole.digest()
            offer = files.new_offer(source.name, total, file_hash, tuple(chunks), None)
            os.replace(tmp, self._copy_of(offer.offer_id))
        finally:
            tmp.unlink(missing_ok=True)
        return offer, None, file_hash

    def _copy_of(self, offer_id: bytes) -> Path:
        """Our copy of a file we offered (one per offer, deleted when it ends)."""
        return self.sent_dir / offer_id.hex()

    def _partial_of(self, offer_id: bytes) -> Path:
        """Where a file offered to us is written until it is complete."""
        return self.partial_dir / f"{offer_id.hex()}.part"

    def discard_copy(self, offer: Offer) -> None:
        """A send that did not store its offer: its copy goes (worker thread)."""
        self._copy_of(offer.offer_id).unlink(missing_ok=True)

    async def forget_finished(self) -> int:
        """Delete our copies of files whose offers were delivered or expired
        (housekeeping); returns how many."""
        node = self.node
        done = await node.store_call(node.store.end_file_offers, node.now_ms())

        def unlink() -> None:
            for offer_id in done:
                self._copy_of(offer_id).unlink(missing_ok=True)

        await trio.to_thread.run_sync(unlink)
        return len(done)

    # --- serving ----------------------------------------------------------------

    def _read_sealed(self, offer_id: bytes, key: bytes, index: int) -> bytes:
        with self._copy_of(offer_id).open("rb") as f:
            f.seek(index * CHUNK_SIZE)
            plain = f.read(CHUNK_SIZE)
        return self.seal_chunk(key, index, plain)

    def seal_chunk(self, key: bytes, index: int, plain: bytes) -> bytes:
        """How a served chunk is sealed (a test replaces it to play a malicious sender)."""
        return files.seal_chunk(key, index, plain)

    async def serve(self, link: PeerLink) -> None:
        """Answer the peer's FGETs, in order, for offers made to that peer."""
        node = self.node
        offers: dict[bytes, FileOut | None] = {}  # looked up once per link
        async for get in link.file_requests:
            if get.offer_id not in offers:
                if len(offers) >= MAX_FILE_REQUESTS:
                    offers.clear()
                offers[get.offer_id] = await node.store_call(node.store.file_out, get.offer_id)
            out = offers[get.offer_id]
            if out is None or out.recipient != link.peer:
                reason = "no such file was offered to you"
            elif out.expires_ms <= node.now_ms():
                reason = "the offer has expired"
            elif get.index * CHUNK_SIZE >= max(out.size, 1):
                reason = "no such chunk"
            else:
                try:
                    sealed = await trio.to_thread.run_sync(
                        self._read_sealed, out.offer_id, out.key, get.index
                    )
                except OSError as exc:
                    log.warning("cannot serve %s: %s", out.file_hash.hex()[:12], exc)
                    reason = "the file is no longer on the sender's node"
                else:
                    await link.conn.send_many(
                        link.session.file_data_frames(get.offer_id, get.index, sealed)
                    )
                    served = min(out.size, (get.index + 1) * CHUNK_SIZE)
                    if served == out.size:  # not on every chunk: a store write is slow
                        await node.store_call(node.store.note_file_served, out.offer_id, served)
                    node.events.publish(
                        "file-sent",
                        {
                            "id": out.message_id.hex(),
                            "to": str(link.peer),
                            "sent": served,
                            "size": out.size,
                        },
                    )
                    continue
            await link.conn.send(link.session.file_none_frame(get.offer_id, get.index, reason))

    # --- fetching ---------------------------------------------------------------

    async def run(self) -> None:
        """Node task: finish files that came in their messages, inline or in
        parts (no link needed), as they arrive, from accepted senders."""
        node = self.node
        await self._forget_stale_files()
        while True:
            self.inline_wake = trio.Event()
            for entry in await node.store_call(node.store.files_in):
                offer = files.parse_offer(entry.offer)
                if not offer.chunks and await self._wanted(entry):
                    async with self._failing_on_disk_errors(entry, offer):
                        if offer.inline is not None:
                            await self.finish_inline(entry, offer.inline)
                        else:
                            await self._assemble(entry, offer)
            await self.inline_wake.wait()

    async def _wanted(self, entry: FileIn) -> bool:
        """Files are saved only from accepted senders (not from a message
        request, not from a blocked peer): one from a stranger waits until
        the user accepts them."""
        node = self.node
        accepted: bool = await node.store_call(node.accepts, node.store, entry.sender)
        return accepted

    @contextlib.asynccontextmanager
    async def _failing_on_disk_errors(self, entry: FileIn, offer: Offer) -> AsyncIterator[None]:
        """A file that cannot be written (disk full, a name the file system
        refuses) fails, with the reason; the node goes on."""
        try:
            yield
        except OSError as exc:
            log.warning("cannot save %s: %s", offer.name, exc)
            reason = f"cannot save it: {exc.strerror or exc}"
            await self._record(offer, failed=reason)
            self._progress(entry, offer, 0, "failed", reason=reason)

    async def _forget_stale_files(self) -> None:
        """At start, delete what a crash may have left: partial files of
        fetches that ended, and copies of files whose offer was never
        stored (or has ended). Only files from before this start: a send
        may be writing its copy right now."""
        node = self.node
        started = self.created
        fetching = {e.offer_id.hex() for e in await node.store_call(node.store.files_in)}
        offered = {o.hex() for o in await node.store_call(node.store.file_offers_out)}

        def sweep() -> None:
            if self.partial_dir.is_dir():
                for part in self.partial_dir.glob("*.part"):
                    if part.stem not in fetching:
                        part.unlink(missing_ok=True)
            if self.sent_dir.is_dir():
                for copy in self.sent_dir.iterdir():
                    with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                        if copy.name not in offered and copy.stat().st_mtime < started:
                            copy.unlink()

        await trio.to_thread.run_sync(sweep)

    async def _assemble(self, entry: FileIn, offer: Offer) -> None:
        """A file in parts: once every part is here, check it and finish it."""
        node = self.node
        count, have = await node.store_call(
            node.store.count_file_parts, offer.offer_id, entry.sender
        )
        if count < offer.parts:
            self._progress(entry, offer, min(have, offer.size), "fetching")
            return
        parts = await node.store_call(node.store.file_parts, offer.offer_id, entry.sender)
        try:
            data = files.assemble(offer, parts)
        except FileError as exc:
            await self._record(offer, failed=str(exc))
            self._progress(entry, offer, have, "failed", reason=str(exc))
            return
        drop = functools.partial(node.store.drop_file_parts, offer.offer_id, entry.sender)
        await self.finish_inline(entry, data, then=drop)

    async def fetch(self, link: PeerLink) -> None:
        """Fetch every file this peer offered us that is not complete yet."""
        node = self.node
        while True:
            link.fetch_wake = trio.Event()
            fetching = functools.partial(node.store.files_in, sender=link.peer)
            for entry in await node.store_call(fetching):
                offer = files.parse_offer(entry.offer)
                if offer.chunks and await self._wanted(entry):
                    async with self._failing_on_disk_errors(entry, offer):
                        await self._fetch_one(link, entry, offer)
            await link.fetch_wake.wait()

    async def _fetch_one(self, link: PeerLink, entry: FileIn, offer: Offer) -> None:
        # One fetch of an offer at a time: a link that replaced another waits
        # until the old one's fetch has ended and saved how far it got.
        lock = self._fetch_locks.setdefault(offer.offer_id, trio.Lock())
        try:
            async with lock:
                await self._fetch_one_locked(link, entry, offer)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._fetch_locks.pop(offer.offer_id, None)

    async def _fetch_one_locked(self, link: PeerLink, entry: FileIn, offer: Offer) -> None:
        node = self.node
        [entry] = await node.store_call(
            functools.partial(node.store.files_in, message_ids=[entry.message_id])
        )  # as it is now: a fetch that ended while we waited saved its progress
        if entry.state != "fetching":
            return
        self.partial_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = self._partial_of(offer.offer_id)
        fd, held = await trio.to_thread.run_sync(_open_part, part, entry.next_chunk)
        try:
            try:
                link.fetching = True
                await self._fetch_chunks(link, entry, offer, fd, held)
            except FetchStopped as exc:
                await self._record(offer, failed=str(exc))
                self._progress(entry, offer, held * CHUNK_SIZE, "failed", reason=str(exc))
                return
            except SenderLied as exc:
                await self._record(offer, failed=str(exc))
                self._progress(entry, offer, held * CHUNK_SIZE, "failed", reason=str(exc))
                raise
            finally:
                link.fetching = False
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)
        await self._finish(entry, offer, part)

    async def _fetch_chunks(
        self, link: PeerLink, entry: FileIn, offer: Offer, fd: int, held: int
    ) -> None:
        """Ask for chunks `held`.. in a window, check and write each; record
        progress every SYNC_EVERY chunks (synced in the background while the
        next chunks come). The whole file's hash is kept as the chunks held
        from the start grow, and checked at the end."""
        progress = [held]  # chunks held from the start, as the fetch goes
        try:
            async with trio.open_nursery() as background:
                await self._fetch_chunks_syncing(link, entry, offer, fd, progress, background)
        except BaseException as exc:
            # Cut off (the link died, the node stops): what is held is kept,
            # so the next fetch starts from the last chunk held, not the
            # last one recorded.
            with trio.CancelScope(shield=True), trio.move_on_after(SAVE_ON_STOP_S):
                try:
                    await trio.to_thread.run_sync(os.fsync, fd)
                    await self._record(offer, next_chunk=progress[0])
                except (OSError, StoreError) as saving:  # the fetch's own error matters more
                    log.warning("could not save how far %s got: %s", offer.name, saving)
            if isinstance(exc, BaseExceptionGroup):
                # The fetch's error, and perhaps the background sync's: raised
                # as itself, the sender's fault first, so callers can tell.
                raise _main_error(exc) from None
            raise

    async def _fetch_chunks_syncing(
        self,
        link: PeerLink,
        entry: FileIn,
        offer: Offer,
        fd: int,
        progress: list[int],
        background: trio.Nursery,
    ) -> None:
        syncing = False
        [held] = progress

        async def sync_up_to(count: int) -> None:
            # Chunks before `count` were written before this started.
            nonlocal syncing
            await trio.to_thread.run_sync(os.fsync, fd)
            await self._record(offer, next_chunk=count)
            syncing = False

        whole = await trio.to_thread.run_sync(_hash_prefix, fd, held * CHUNK_SIZE)
        checked: dict[int, bytes] = {}  # written, not yet in `whole`
        asked = held
        pieces: dict[int, bytearray] = {}
        have: set[int] = set()
        failures: Counter[int] = Counter()
        synced = held
        due = 0  # answers (a whole chunk, or FNONE) still to come
        while held < offer.chunks:
            frames = []
            while asked < offer.chunks and asked - held < FETCH_WINDOW:
                frames.append(link.session.file_get_frame(offer.offer_id, asked))
                asked += 1
            if frames:
                await link.conn.send_many(frames)
                due += len(frames)
            event = await link.file_pieces.receive()
            if event.offer_id != offer.offer_id or not held <= event.index < asked:
                raise SessionError("file data that was not asked for")
            if isinstance(event, FileMissingReceived):
                await self._drain(link, offer, due - 1)
                raise FetchStopped(f"the sender cannot serve it: {event.reason}")
            buf = pieces.setdefault(event.index, bytearray())
            if event.offset != len(buf):
                raise SessionError("file data out of order")
            buf += event.data
            if len(buf) < event.total:
                continue
            del pieces[event.index]
            due -= 1
            try:
                plain = files.open_chunk(offer, event.index, bytes(buf))
            except FileError as exc:
                failures[event.index] += 1
                log.warning("from %s: %s", link.peer.short(), exc)
                if failures[event.index] >= MAX_CHUNK_FAILURES:
                    raise SenderLied(f"{exc}, {MAX_CHUNK_FAILURES} times") from None
                await link.conn.send(link.session.file_get_frame(offer.offer_id, event.index))
                due += 1
                continue
            await trio.to_thread.run_sync(_write_at, fd, event.index * CHUNK_SIZE, plain)
            have.add(event.index)
            checked[event.index] = plain
            while held in have:
                have.discard(held)
                whole.update(checked.pop(held))
                held += 1
            progress[0] = held
            if held - synced >= SYNC_EVERY and not syncing:
                syncing, synced = True, held
                background.start_soon(sync_up_to, held)
            self._progress(entry, offer, min(offer.size, held * CHUNK_SIZE), "fetching")
        if whole.digest() != offer.file_hash:
            # Every chunk matched its hash, so the offer itself lists chunks
            # of some other file: its sender made it so.
            raise SenderLied("the chunks do not make the file the offer names")

    async def _drain(self, link: PeerLink, offer: Offer, answers: int) -> None:
        """Read the answers still due for an offer we stop fetching."""
        while answers > 0:
            event = await link.file_pieces.receive()
            if event.offer_id != offer.offer_id:
                raise SessionError("file data that was not asked for")
            if isinstance(event, FileMissingReceived) or (
                isinstance(event, FileDataReceived)
                and event.offset + len(event.data) == event.total
            ):
                answers -= 1

    async def finish_inline(
        self, entry: FileIn, data: bytes, then: Callable[[], object] | None = None
    ) -> None:
        """A file that came in messages (checked): write it out and finish it."""
        offer = files.parse_offer(entry.offer)
        self.partial_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = self._partial_of(offer.offer_id)
        await trio.to_thread.run_sync(_write_whole, part, data)
        await self._finish(entry, offer, part, then)

    async def _finish(
        self, entry: FileIn, offer: Offer, part: Path, then: Callable[[], object] | None = None
    ) -> None:
        """Move a checked file into files/, and tell the sender.
        `then` is a store call to make once the file is recorded as done."""
        node = self.node
        path = await trio.to_thread.run_sync(self._place, part, offer.name)
        await self._record(offer, done_path=str(path))
        # Only now: a crash before the end was recorded finds it again.
        await trio.to_thread.run_sync(functools.partial(part.unlink, missing_ok=True))
        if then is not None:
            await self.node.store_call(then)
        self._progress(entry, offer, offer.size, "done", path=str(path))
        await node.file_complete(entry.sender, entry.message_id)

    async def _record(
        self,
        offer: Offer,
        *,
        next_chunk: int | None = None,
        done_path: str | None = None,
        failed: str | None = None,
    ) -> None:
        node = self.node
        record = functools.partial(
            node.store.file_progress, next_chunk=next_chunk, done_path=done_path, failed=failed
        )
        await node.store_call(record, offer.offer_id, node.now_ms())

    def _place(self, part: Path, name: str) -> Path:
        """Link a checked file in as files/<name>, not over another file
        (the same file already linked, by a run cut off before it recorded
        the end, is taken as is)."""
        stem, dot, ext = name.rpartition(".") if "." in name[1:] else (name, "", "")
        for n in range(10_000):
            candidate = self.root / (name if n == 0 else f"{stem} ({n}){dot}{ext}")
            try:
                os.link(part, candidate)  # fails if the name is taken: no race
            except FileExistsError:
                if os.path.samefile(part, candidate):
                    return candidate
                continue
            return candidate
        raise OSError(f"no free name for {name} in {self.root}")

    def _progress(
        self,
        entry: FileIn,
        offer: Offer,
        received: int,
        state: str,
        *,
        path: str | None = None,
        reason: str | None = None,
    ) -> None:
        event = {
            "id": entry.message_id.hex(),
            "from": str(entry.sender),
            "name": offer.name,
            "size": offer.size,
            "received": received,
            "state": state,
        }
        if path is not None:
            event["path"] = path
        if reason is not None:
            event["reason"] = reason
        self.node.events.publish("file", event)


def _open_part(part: Path, held: int) -> tuple[int, int]:
    """The partial file (a descriptor: chunks are written with pwrite, so a
    sync can run beside them) cut back to the `held` chunks recorded, and
    how many it holds: none if it is shorter (lost, or deleted)."""
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    if os.fstat(fd).st_size < held * CHUNK_SIZE:
        held = 0
    os.ftruncate(fd, held * CHUNK_SIZE)
    return fd, held


def _main_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a failed fetch stands for: a peer's fault before a disk's,
    before anything else; Cancelled only if nothing else."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for kind in (SessionError, FetchStopped, OSError, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else group


def _write_at(fd: int, offset: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_whole(part: Path, data: bytes) -> None:
    with part.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _hash_prefix(fd: int, size: int) -> hashlib.blake2b:
    """The whole-file hasher fed with the first `size` bytes held (a resume)."""
    h = files.file_hasher()
    offset = 0
    while offset < size and (block := os.pread(fd, min(size - offset, 1 << 20), offset)):
        h.update(block)
        offset += len(block)
    return h
