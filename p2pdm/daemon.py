"""`p2pdm run`: the node and its local API in one trio run, until a signal."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import trio

from p2pdm.api import Api
from p2pdm.config import API_SOCKET_NAME, STORE_FILE_NAME
from p2pdm.httpapi import ServeError, serve_unix
from p2pdm.node import ListenError, Node
from p2pdm.store import Store, StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from p2pdm.identity import Identity
    from p2pdm.node import NodeConfig

log = logging.getLogger(__name__)

# SIGTERM/SIGINT must end the process within 5 s: goodbyes get 2 s of that.
SHUTDOWN_GRACE = 4.0
SWITCH_INTERVAL = 0.0005
LOCK_FILE_NAME = "node.lock"


class DaemonError(Exception):
    """The daemon cannot start; the message says why."""


async def serve(config: NodeConfig, identity: Identity, store: Store) -> None:
    """Run node and API until SIGINT or SIGTERM, then shut down in order."""
    node = Node(config, identity, store)
    api = Api(node)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            await _serve_until_signal(node, api, config, signals)
        except* ListenError as group:
            raise DaemonError(str(_first(group))) from None
        except* ServeError as group:
            raise DaemonError(str(_first(group))) from None
        except* OSError as group:
            exc = _first(group)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise DaemonError(f"cannot start: {reason}") from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real exception in a group, however deeply nurseries nested it."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _serve_until_signal(
    node: Node, api: Api, config: NodeConfig, signals: AsyncIterator[int]
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await nursery.start(serve_unix, config.home / API_SOCKET_NAME, api.router())
        log.info("ready: api on %s", config.home / API_SOCKET_NAME)
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            break
        with trio.move_on_after(SHUTDOWN_GRACE):
            await node.shutdown()
        nursery.cancel_scope.cancel()


def run_daemon(config: NodeConfig, identity: Identity) -> int:
    # Crypto and SQLite run in a worker thread beside the event loop; the
    # default 5 ms GIL switch interval makes each hand-over between them
    # wait for the other's time slice. 0.5 ms keeps both moving.
    sys.setswitchinterval(SWITCH_INTERVAL)
    config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _lock_home(config.home)
    try:
        try:
            store = Store.open(config.home / STORE_FILE_NAME)
        except StoreError as exc:
            raise DaemonError(str(exc)) from None
        try:
            trio.run(serve, config, identity, store)
        finally:
            store.close()
    finally:
        os.close(lock)
    log.info("stopped")
    return 0


def _lock_home(home: Path) -> int:
    """Hold an exclusive lock on the home for the process's life: one node per home."""
    fd = os.open(home / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonError(f"another node is already running for home {home}") from None
    return fd
