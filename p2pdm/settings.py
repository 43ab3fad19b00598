"""Chat settings the user changes while the node runs, kept in the store.

They live in the store (not config.toml) because the chat app and the API
change them at runtime; `p2pdm settings` shows and sets them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pdm.store import Store

log = logging.getLogger(__name__)

SETTINGS_KEY = "chat_settings"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from "30", "30s", "10m", "1h" or "7d" (ValueError says why not)."""
    text = text.strip()
    unit = _UNITS.get(text[-1:].lower(), 0)
    try:
        value = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r}: give a duration such as 30, 10m, 1h or 7d, or off")
    return value


class AcceptPolicy(Enum):
    """Whose text messages reach the inbox."""

    EVERYONE = "everyone"
    """Everyone's, as accepted conversations."""
    CONTACTS = "contacts"
    """Contacts' only; a stranger's are dropped (it gets no delivery receipt)."""
    REQUESTS = "requests"
    """Everyone's, a stranger's as a message request until the user accepts it."""


@dataclass(frozen=True)
class ChatSettings:
    read_receipts: bool = True
    """Send read receipts to accepted peers when the user sees their messages."""
    accept: AcceptPolicy = AcceptPolicy.REQUESTS

    def to_json(self) -> dict[str, Any]:
        return {"read_receipts": self.read_receipts, "accept": self.accept.value}

    def updated(self, changes: object) -> ChatSettings:
        """These settings with `changes` (a JSON object) applied; ValueError
        names what is wrong, and nothing changes then."""
        if not isinstance(changes, dict) or not changes:
            raise ValueError('settings are a JSON object such as {"read_receipts": false}')
        unknown = sorted(set(changes) - {"read_receipts", "accept"})
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(map(str, unknown))}")
        new = self
        if "read_receipts" in changes:
            value = changes["read_receipts"]
            if not isinstance(value, bool):
                raise ValueError("read_receipts must be true or false")
            new = replace(new, read_receipts=value)
        if "accept" in changes:
            try:
                new = replace(new, accept=AcceptPolicy(changes["accept"]))
            except ValueError:
                choices = ", ".join(p.value for p in AcceptPolicy)
                raise ValueError(f"accept must be one of {choices}") from None
        return new

    @classmethod
    def load(cls, store: Store) -> ChatSettings:
        raw = store.get_meta(SETTINGS_KEY)
        if raw is None:
            return cls()
        try:
            return cls().updated(json.loads(raw))
        except ValueError as exc:  # json's errors are ValueErrors too
            log.warning("stored chat settings unreadable (%s); using the defaults", exc)
            return cls()

    def save(self, store: Store) -> None:
        store.set_meta(SETTINGS_KEY, json.dumps(self.to_json()).encode())
