"""The node's home folder and its files.

`--home` wins, then `$P2PDM_HOME`, then the platform's user data folder, so
several nodes can run on one machine side by side.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HOME_ENV = "P2PDM_HOME"
KEY_FILE_NAME = "identity.key"
CONFIG_FILE_NAME = "config.toml"
STORE_FILE_NAME = "store.db"
API_SOCKET_NAME = "api.sock"
# A display name is for people: short, one line.
MAX_NAME_LEN = 64


class ConfigError(ValueError):
    """A bad home folder, option or config file; the message says which."""


def default_home() -> Path:
    """The platform's per-user data folder for p2pdm."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "p2pdm"
    if sys.platform == "win32":
        base = os.environ.get("APPDATA")
        return Path(base) / "p2pdm" if base else Path.home() / "AppData" / "Roaming" / "p2pdm"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "p2pdm"


def resolve_home(option: str | None) -> Path:
    chosen = option or os.environ.get(HOME_ENV)
    return Path(chosen).expanduser() if chosen else default_home()


def ensure_home(home: Path) -> None:
    """Create the home folder private to the user (0700)."""
    if home.exists() and not home.is_dir():
        raise ConfigError(f"home {home} exists and is not a folder")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LEN or not name.isprintable():
        raise ConfigError(f"a name is 1 to {MAX_NAME_LEN} printable characters on one line")
    return name


def write_initial_config(home: Path, name: str | None) -> None:
    """Write config.toml for a new node, unless one is already there."""
    path = home / CONFIG_FILE_NAME
    if path.exists():
        return
    lines = ["# p2pdm node configuration; every key also has a command-line flag.\n"]
    if name is not None:
        # A JSON string with ensure_ascii is a valid TOML basic string.
        lines.append(f"name = {json.dumps(check_name(name))}\n")
    path.write_text("".join(lines), encoding="utf-8")


# --- config.toml ------------------------------------------------------------

# Each key, its type, and what it means; every key also has a flag of `run`.
CONFIG_KEYS: dict[str, tuple[type, str]] = {
    "name": (str, "display name of this node"),
    "listen": (list, 'addresses to listen on, e.g. ["0.0.0.0:7707"]'),
    "bootstrap": (list, 'peers to keep dialling, e.g. ["192.168.1.20:7707"]'),
    "mdns": (bool, "find peers on the local network by mDNS"),
    "mdns_interfaces": (list, 'interfaces for mDNS, e.g. ["eth0"]; default: all'),
    "relay": (bool, "hold mail for other peers"),
    "log_level": (str, "debug, info, warning or error"),
    "ttl_days": (int, "how long sent messages live before they expire"),
    "relay_file_kib": (int, "files up to this size go through relays (default 1024)"),
    "clock_offset_s": (int, "run as if the clock were off by this many seconds (testing)"),
    "limits": (dict, "transport limits, e.g. {handshake_timeout = 5} (see docs)"),
}


def load_config(home: Path) -> dict[str, object]:
    """Read and check config.toml; a missing file is an empty config."""
    import tomllib

    path = home / CONFIG_FILE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    for key, value in doc.items():
        spec = CONFIG_KEYS.get(key)
        if spec is None:
            known = ", ".join(sorted(CONFIG_KEYS))
            raise ConfigError(f"{path}: unknown key {key!r} (known keys: {known})")
        kind, meaning = spec
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: {key} must be a {kind.__name__} ({meaning})")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {key} must be a list of strings ({meaning})")
    return doc
