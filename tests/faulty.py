"""A link that drops, duplicates, reorders and delays frames, with a seed.

`FaultyStream` wraps one side's byte stream of a peer connection (a node's
`wrap_stream`) and applies faults to the frames that side writes, after the
first few (the handshake's, which would only make the dial fail). Noise
numbers every frame, so a dropped, doubled or swapped frame fails the
peer's decryption and ends the connection at that point: what the campaign
exercises is resuming after a connection dies between any two frames, with
delays that reorder work across connections. Tests never use it for
timing.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from p2pdm import wire

if TYPE_CHECKING:
    from collections.abc import Callable

SPARED_FRAMES = 3
"""Each direction's first frames pass untouched: the handshake's and the
HELLO (and on the responder's side, one frame more)."""


@dataclass
class Faults:
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    max_delay_s: float = 0.05
    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    """What every stream made with these faults did, by kind (and "frames")."""

    def count(self, what: str) -> None:
        self.counts[what] += 1


class FaultyStream(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream, faults: Faults, rng: random.Random) -> None:
        self.inner = inner
        self.faults = faults
        self.rng = rng
        self._pending = b""
        self._frames = 0
        self._held: bytes | None = None

    def _split(self, data: bytes) -> list[bytes]:
        """Whole frames from what has been written so far."""
        self._pending += data
        frames = []
        while len(self._pending) >= wire.FRAME_HEADER_LEN:
            (size,) = struct.unpack_from(">H", self._pending)
            end = wire.FRAME_HEADER_LEN + size
            if len(self._pending) < end:
                break
            frames.append(self._pending[:end])
            self._pending = self._pending[end:]
        return frames

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        out = []
        f, rng = self.faults, self.rng
        for frame in self._split(bytes(data)):
            self._frames += 1
            f.count("frames")
            if self._frames <= SPARED_FRAMES:
                out.append(frame)
                continue
            roll = rng.random()
            if roll < f.drop:
                f.count("dropped")
                continue
            if roll < f.drop + f.duplicate:
                f.count("duplicated")
                out += [frame, frame]
            elif roll < f.drop + f.duplicate + f.reorder and self._held is None:
                f.count("reordered")
                self._held = frame  # goes out after the next frame
                continue
            else:
                out.append(frame)
            if self._held is not None:
                out.append(self._held)
                self._held = None
        if out:
            if rng.random() < f.delay:
                f.count("delayed")
                await trio.sleep(rng.uniform(0, f.max_delay_s))
            await self.inner.send_all(b"".join(out))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def faulty_links(faults: Faults, stream_seed: int) -> Callable[[trio.abc.Stream], trio.abc.Stream]:
    """A `wrap_stream` for one node: each connection gets its own seeded faults."""
    streams = random.Random(faults.seed * 1000 + stream_seed)

    def wrap(stream: trio.abc.Stream) -> trio.abc.Stream:
        faults.count("connections")
        return FaultyStream(stream, faults, random.Random(streams.random()))

    return wrap
