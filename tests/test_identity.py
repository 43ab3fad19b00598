from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import nacl.pwhash
import pytest

from p2pdm.identity import (
    NODE_ID_TEXT_LEN,
    BadSignature,
    Identity,
    InvalidNodeId,
    KeyFileError,
    NodeId,
    key_file_is_locked,
    key_file_node_id,
    load_key_file,
    safety_number,
    write_key_file,
)

if TYPE_CHECKING:
    from pathlib import Path

# Cheapest Argon2id costs, so tests stay fast; production uses MODERATE.
FAST = {
    "opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
    "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN,
}


def test_node_id_text_round_trip() -> None:
    ident = Identity.generate()
    text = str(ident.node_id)
    assert len(text) == NODE_ID_TEXT_LEN
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert NodeId.parse(text) == ident.node_id
    assert NodeId.parse(text.upper()) == ident.node_id
    assert NodeId.parse(f"  {text}\n") == ident.node_id


def test_every_single_character_typo_is_rejected() -> None:
    text = str(Identity.generate().node_id)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i in range(len(text)):
        for c in alphabet:
            if c == text[i]:
                continue
            with pytest.raises(InvalidNodeId):
                NodeId.parse(text[:i] + c + text[i + 1 :])


def test_swapped_neighbours_are_rejected() -> None:
    text = str(Identity.generate().node_id)
    for i in range(len(text) - 1):
        if text[i] == text[i + 1]:
            continue
        swapped = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        with pytest.raises(InvalidNodeId, match="checksum"):
            NodeId.parse(swapped)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "56 characters"),
        ("abc", "56 characters"),
        ("a" * 57, "56 characters"),
        ("0" * 56, "a-z and 2-7"),
        ("a" * 55 + "!", "a-z and 2-7"),
    ],
)
def test_malformed_ids_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidNodeId, match=reason):
        NodeId.parse(text)


def test_node_id_rejects_wrong_key_length() -> None:
    with pytest.raises(InvalidNodeId):
        NodeId(b"\x00" * 31)


def test_sign_and_verify() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"hello")
    ident.node_id.verify(b"hello", sig)
    with pytest.raises(BadSignature):
        ident.node_id.verify(b"hellO", sig)
    with pytest.raises(BadSignature):
        Identity.generate().node_id.verify(b"hello", sig)
    with pytest.raises(BadSignature, match="64 bytes"):
        ident.node_id.verify(b"hello", sig[:-1])


def test_x25519_keys_match() -> None:
    import nacl.bindings

    ident = Identity.generate()
    derived_public = nacl.bindings.crypto_scalarmult_base(ident.x25519_private_key)
    assert derived_public == ident.node_id.x25519_public_key()


def test_rfc8032_vector_gives_expected_public_key() -> None:
    # RFC 8032 section 7.1, TEST 1.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    ident = Identity(seed)
    assert ident.node_id.public_key.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert ident.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
        "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_safety_number_is_symmetric_and_pair_specific() -> None:
    a, b, c = (Identity.generate().node_id for _ in range(3))
    assert safety_number(a, b) == safety_number(b, a)
    assert safety_number(a, b) != safety_number(a, c)
    groups = safety_number(a, b).split(" ")
    assert len(groups) == 12
    assert all(len(g) == 5 and g.isdigit() for g in groups)


def test_key_file_plain_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "home" / "identity.key"
    ident = Identity.generate()
    write_key_file(path, ident)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path).node_id == ident.node_id
    assert key_file_node_id(path) == ident.node_id
    assert not key_file_is_locked(path)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_key_file_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first = Identity.generate()
    write_key_file(path, first)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key_file(path, Identity.generate())
    assert load_key_file(path).node_id == first.node_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "identity.key"
    write_key_file(path, Identity.generate())
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(path)
    with pytest.raises(KeyFileError, match="chmod 600"):
        key_file_node_id(path)


def test_key_file_with_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    ident = Identity.generate()
    write_key_file(path, ident, "correct horse", **FAST)
    assert key_file_is_locked(path)
    assert ident.seed.hex() not in path.read_text()
    assert key_file_node_id(path) == ident.node_id
    assert load_key_file(path, "correct horse").seed == ident.seed
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_key_file(path, "battery staple")
    with pytest.raises(KeyFileError, match="locked with a passphrase"):
        load_key_file(path)


def _write_raw(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe", "not valid JSON"),
        ("[]", "not a p2pdm key file"),
        ('{"format": "other"}', "not a p2pdm key file"),
        ('{"format": "p2pdm-key", "version": 9}', "version 9"),
        ('{"format": "p2pdm-key", "version": 1, "lock": "rot13"}', "unknown lock"),
        ('{"format": "p2pdm-key", "version": 1, "lock": "none", "seed": "zz"}', "'seed'"),
        ('{"format": "p2pdm-key", "version": 1, "lock": "none", "seed": "00"}', "'seed'"),
        ("x" * 5000, "bytes: not a p2pdm key file"),
    ],
)
def test_malformed_key_files_say_why(tmp_path: Path, content: str | bytes, reason: str) -> None:
    path = tmp_path / "identity.key"
    _write_raw(path, content)
    with pytest.raises(KeyFileError, match=reason):
        load_key_file(path)


def test_key_file_seed_not_matching_node_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    other = Identity.generate()
    doc = (
        '{"format": "p2pdm-key", "version": 1, "lock": "none", '
        f'"seed": "{Identity.generate().seed.hex()}", "node_id": "{other.node_id}"}}'
    )
    _write_raw(path, doc)
    with pytest.raises(KeyFileError, match="does not match"):
        load_key_file(path)


def test_key_file_with_absurd_argon2_cost_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    write_key_file(path, Identity.generate(), "pw", **FAST)
    text = path.read_text().replace(f'"memlimit": {FAST["memlimit"]}', '"memlimit": 1099511627776')
    path.unlink()
    _write_raw(path, text)
    with pytest.raises(KeyFileError, match="'memlimit'"):
        load_key_file(path, "pw")


def test_missing_key_file_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="p2pdm init"):
        load_key_file(tmp_path / "nope.key")
