"""A small lab of Linux network namespaces: N hosts on one switch.

Each lab makes its own namespaces, named `p2pdm-<creator pid>-<6 hex>-h<i>`
for host i and `...-sw` for the switch. The switch namespace holds a Linux
bridge; each host gets a veth pair whose host end (`eth0`, 10.x.y.i+1/24,
multicast on) lives in the host namespace and whose other end (`h<i>`) is a
port of the bridge. Every link is created from inside the switch namespace,
so nothing is ever made in the root namespace and no lab address can leak
out of it.

Usable from tests (`with NetnsLab(3) as lab: ...`, skipping with
`netns_available()`'s reason) and from scripts. Needs root and iproute2.
Every command has a timeout; a failing one raises `NetnsError` with its
stderr. `close()` kills whatever the lab started and deletes what it made,
and runs on `__exit__` even when the body raised.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

# Every `ip` command is local and quick; a generous bound still stops a
# wedged netlink call from hanging a test run.
IP_TIMEOUT = 10.0
# How long close() waits for a SIGKILLed process to be reaped.
KILL_WAIT = 5.0
# A /24 holds hosts .1 to .254.
MAX_HOSTS = 254
PREFIX = "p2pdm"
HOST_IFNAME = "eth0"
BRIDGE = "br0"
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]{{6}})-(h\d+|sw|probe)$")


class NetnsError(RuntimeError):
    """A namespace command failed; the message carries the command and its stderr."""


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace").strip()
    return data.strip()


def _ip(*args: str, timeout: float = IP_TIMEOUT) -> str:
    """Run `ip ARGS`, returning stdout; NetnsError with stderr on failure or timeout."""
    argv = ["ip", *args]
    try:
        result = subprocess.run(argv, check=True, capture_output=True, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        raise NetnsError(
            f"`{' '.join(argv)}` failed (exit {exc.returncode}): {_text(exc.stderr)}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`{' '.join(argv)}` timed out after {timeout} s") from exc
    except OSError as exc:
        raise NetnsError(f"`{' '.join(argv)}` could not start: {exc}") from exc
    return _text(result.stdout)


def list_namespaces() -> list[str]:
    """Names of every named network namespace (`ip netns list`)."""
    out = _ip("-j", "netns", "list")
    if not out:  # older iproute2 prints nothing at all when there are none
        return []
    return [str(entry["name"]) for entry in json.loads(out)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _kill_namespace_pids(name: str) -> None:
    """SIGKILL whatever still runs in one of our namespaces (children of what we started)."""
    try:
        pids = _ip("netns", "pids", name).split()
    except NetnsError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _delete_namespace(name: str) -> None:
    _kill_namespace_pids(name)
    _ip("netns", "del", name)


def cleanup_stale() -> list[str]:
    """Delete `p2pdm-<pid>-...` namespaces whose creating process is gone; return their names.

    Only names in this module's scheme are touched, and only when the PID
    encoded in the name no longer exists (a crashed or killed earlier run).
    """
    removed = []
    for name in list_namespaces():
        match = _NAME_RE.match(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            _delete_namespace(name)
        except NetnsError:
            continue  # raced with another cleaner: it is gone either way
        removed.append(name)
    return removed


@functools.cache
def netns_available() -> str | None:
    """None if this process can build labs here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        _ip("netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        # A lab needs bridges and veth pairs too; some sandboxes lack them.
        _ip("-n", probe, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
    except NetnsError as exc:
        return f"cannot create a bridge or veth pair in a namespace: {exc}"
    finally:
        with contextlib.suppress(NetnsError):
            _ip("netns", "del", probe)
    return None


@dataclass(frozen=True)
class Host:
    """One host of a lab: its namespace name and its address on the switch."""

    index: int
    name: str
    address: str
    interface: str = HOST_IFNAME


class NetnsLab:
    """N hosts in their own network namespaces, joined by a bridge in another one."""

    def __init__(self, hosts: int) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"a lab has 1 to {MAX_HOSTS} hosts, not {hosts}")
        self.tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.switch = f"{self.tag}-sw"
        # A private /24 per lab; labs never share a switch, so a clash
        # between two labs would not matter, but distinct subnets make logs clearer.
        x, y = 1 + secrets.randbelow(254), secrets.randbelow(256)
        self.subnet = ipaddress.IPv4Network(f"10.{x}.{y}.0/24")
        self.hosts = [
            Host(i, f"{self.tag}-h{i}", str(self.subnet.network_address + i + 1))
            for i in range(hosts)
        ]
        self._namespaces: list[str] = []  # what we created, in order
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        sw = self.switch
        self._add_namespace(sw)
        # STP off, no forwarding delay, no snooping: every port forwards at
        # once and every multicast frame (mDNS) is flooded to every port.
        _ip(
            "-n", sw, "link", "add", BRIDGE, "type", "bridge",
            "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
        )  # fmt: skip
        _ip("-n", sw, "link", "set", BRIDGE, "up")
        for host in self.hosts:
            self._add_namespace(host.name)
            port = self._port(host.index)
            # Created inside the switch namespace with its peer sent straight
            # into the host namespace: no link ever exists in the root namespace.
            _ip(
                "-n", sw, "link", "add", port, "type", "veth",
                "peer", "name", host.interface, "netns", host.name,
            )  # fmt: skip
            _ip("-n", sw, "link", "set", port, "master", BRIDGE)
            _ip("-n", sw, "link", "set", port, "up")
            prefix = f"{host.address}/{self.subnet.prefixlen}"
            _ip("-n", host.name, "addr", "add", prefix, "dev", host.interface)
            _ip("-n", host.name, "link", "set", host.interface, "multicast", "on")
            _ip("-n", host.name, "link", "set", host.interface, "up")

    @staticmethod
    def _port(i: int) -> str:
        return f"h{i}"

    # --- use ---------------------------------------------------------------

    def host(self, i: int) -> Host:
        return self.hosts[i]

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program inside host i."""
        return ["ip", "netns", "exec", self.hosts[i].name]

    def popen(self, i: int, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside host i; close() kills it if it is still running."""
        if self._closed:
            raise NetnsError("the lab is closed")
        proc: subprocess.Popen[Any] = subprocess.Popen([*self.prefix(i), *argv], **kw)
        self._procs.append(proc)
        return proc

    def run(
        self, i: int, argv: Sequence[str], timeout: float, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside host i to completion; NetnsError (with stderr) if it fails."""
        full = [*self.prefix(i), *argv]
        try:
            return subprocess.run(
                full, check=check, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.CalledProcessError as exc:
            raise NetnsError(
                f"`{' '.join(full)}` failed (exit {exc.returncode}): {_text(exc.stderr)}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise NetnsError(
                f"`{' '.join(full)}` timed out after {timeout} s: {_text(exc.stderr)}"
            ) from exc

    def cut(self, i: int) -> None:
        """Unplug host i: its switch port goes down (its own eth0 loses carrier)."""
        _ip("-n", self.switch, "link", "set", self._port(i), "down")

    def heal(self, i: int) -> None:
        """Plug host i back in."""
        _ip("-n", self.switch, "link", "set", self._port(i), "up")

    # --- teardown ----------------------------------------------------------

    def close(self) -> None:
        """Kill every process the lab started and delete every namespace it made.

        Idempotent. Tries every step even when one fails, then raises the
        first failure.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[Exception] = []
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            try:
                proc.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired as exc:
                errors.append(NetnsError(f"process {proc.pid} survived SIGKILL: {exc}"))
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                _close_quietly(stream)
        # Hosts first, the switch last: deleting a host namespace removes its
        # veth pair, so the bridge is empty when it goes.
        for name in reversed(self._namespaces):
            try:
                _delete_namespace(name)
            except NetnsError as exc:
                errors.append(exc)
        self._namespaces.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetnsLab({self.tag}, {len(self.hosts)} hosts on {self.subnet})"


def _close_quietly(stream: IO[Any] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()


class LineReader:
    """The lines a child writes, read by a thread so that every wait has a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.ended = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass  # the stream was closed under us: the process is gone
        finally:
            self._lines.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The next line for which `predicate` holds; TimeoutError or EOFError if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.ended:
                what = "ended" if self.ended else f"gave no matching line in {timeout} s"
                tail = "\n  ".join(self.seen[-30:])
                error = EOFError if self.ended else TimeoutError
                raise error(f"output {what}; last lines:\n  {tail}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.ended = True
                continue
            self.seen.append(line)
            if predicate(line):
                return line
