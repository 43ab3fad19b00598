"""Real `p2pdm run` processes for integration tests.

By default on 127.0.0.1 with mDNS off; tests in network namespaces pass a
command prefix (`ip netns exec NAME`), a listen address and mDNS on.

Everything waits on something observable (a log line, an API answer, an
event) with a deadline; nothing sleeps to let time pass.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from p2pdm.apiclient import ApiClient

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

DEADLINE = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a node to listen on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(
    home: Path, *args: str, stdin: str | None = None, timeout: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    """Run the `p2pdm` command for `home` and return its result."""
    return subprocess.run(
        [sys.executable, "-m", "p2pdm", "--home", str(home), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


def init_home(home: Path, name: str | None = None) -> str:
    args = ["init"] + (["--name", name] if name else [])
    result = cli(home, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class NodeProcess:
    """A running `p2pdm run`; its stderr is collected line by line."""

    def __init__(
        self,
        home: Path,
        *extra: str,
        prefix: Sequence[str] = (),
        listen: str = "127.0.0.1:0",
        mdns: bool = False,
    ) -> None:
        self.home = home
        self.extra = extra
        self.prefix = tuple(prefix)
        self.listen = listen
        self.mdns = mdns
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []

    def start(self, timeout: float = DEADLINE) -> NodeProcess:
        # A fresh queue: a restart must not see the last run's end of output.
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "p2pdm",
                "--home",
                str(self.home),
                "run",
                "--listen",
                self.listen,
                *([] if self.mdns else ["--no-mdns"]),
                "--log-level",
                "info",
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        self.wait_for_line("ready:", timeout)
        return self

    def _pump(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_line(self, needle: str, timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no log line with {needle!r}; log so far:\n" + "\n".join(self.log)
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("node exited; log:\n" + "\n".join(self.log))
            self.log.append(line)
            if needle in line:
                return line

    @property
    def api(self) -> ApiClient:
        return ApiClient(self.home / "api.sock", timeout=DEADLINE)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.api.get("/v1/status")
        return result

    def wait_until(self, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
        """Return once `check()` holds; looks again on every event from the node.

        Some changes raise no event (addresses learned by peer exchange), so
        it also looks again after a second without one.
        """
        events = self.api.events("/v1/events")
        try:
            deadline = time.monotonic() + timeout
            while not check():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met in {timeout} s")
                events.next(timeout=min(left, 1.0))
        finally:
            events.close()

    def wait_peers(
        self, check: Callable[[list[dict[str, Any]]], bool], timeout: float = DEADLINE
    ) -> list[dict[str, Any]]:
        """Return `p2pdm peers` once `check` holds for it."""
        seen: list[list[dict[str, Any]]] = [[]]

        def peers_pass() -> bool:
            seen[0] = self.api.get("/v1/peers")["peers"]
            return check(seen[0])

        try:
            self.wait_until(peers_pass, timeout)
        except TimeoutError:
            raise TimeoutError(f"peers never matched; last seen: {seen[0]}") from None
        return seen[0]

    def wait_connected(self, peer: str, timeout: float = DEADLINE) -> None:
        """Return once `peer` is connected."""
        self.wait_peers(lambda ps: any(p["id"] == peer and p["connected"] for p in ps), timeout)

    @property
    def address(self) -> str:
        return str(self.status()["listen"][0])

    def _reap(self) -> None:
        """After the process ended: finish reading its stderr and close the pipe."""
        assert self.proc is not None
        assert self.proc.stderr is not None
        self._pump_thread.join(DEADLINE)
        self.proc.stderr.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE)
        self._reap()

    def stop(self, timeout: float = DEADLINE) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._reap()
        return code

    def close(self) -> None:
        if self.proc is None or self.proc.stderr is None or self.proc.stderr.closed:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        self._reap()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_event(
    events: object, name: str, match: object, timeout: float = DEADLINE
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {name} event")
        event = events.next(timeout=left)  # type: ignore[attr-defined]
        if event is not None and event[0] == name and match(event[1]):  # type: ignore[operator]
            return event[1]  # type: ignore[no-any-return]
