"""The `p2pdm` command.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TYPE_CHECKING

from p2pdm import __version__
from p2pdm.config import (
    KEY_FILE_NAME,
    ConfigError,
    check_name,
    ensure_home,
    resolve_home,
    write_initial_config,
)
from p2pdm.identity import (
    Identity,
    IdentityError,
    NodeId,
    key_file_node_id,
    safety_number,
    write_key_file,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

PASSPHRASE_ENV = "P2PDM_PASSPHRASE"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _read_new_passphrase() -> str:
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        raise CliError(f"--passphrase needs a terminal or ${PASSPHRASE_ENV}", EXIT_USAGE)
    first = getpass.getpass("New passphrase: ")
    if first != getpass.getpass("Repeat it: "):
        raise CliError("the passphrases differ; nothing was written", EXIT_USAGE)
    return first


def cmd_init(home: Path, args: argparse.Namespace) -> int:
    name = check_name(args.name) if args.name is not None else None
    key_path = home / KEY_FILE_NAME
    if key_path.exists():
        raise CliError(f"{key_path} already exists; refusing to overwrite an identity")
    passphrase = _read_new_passphrase() if args.passphrase else None
    ensure_home(home)
    identity = Identity.generate()
    write_key_file(key_path, identity, passphrase)
    write_initial_config(home, name)
    print(identity.node_id)
    return EXIT_OK


def cmd_id(home: Path, args: argparse.Namespace) -> int:
    print(key_file_node_id(home / KEY_FILE_NAME))
    return EXIT_OK


def cmd_safety_number(home: Path, args: argparse.Namespace) -> int:
    mine = key_file_node_id(home / KEY_FILE_NAME)
    print(safety_number(mine, NodeId.parse(args.peer)))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pdm", description="Peer-to-peer direct messaging.")
    parser.add_argument("--version", action="version", version=f"p2pdm {__version__}")
    parser.add_argument(
        "--home", help="node home folder (default: $P2PDM_HOME, else the user data folder)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create this node's identity")
    p.add_argument("--name", help="a display name for this node")
    p.add_argument(
        "--passphrase",
        action="store_true",
        help=f"lock the key with a passphrase (asked for, or ${PASSPHRASE_ENV})",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("id", help="print this node's id")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("safety-number", help="the number to compare with a peer out of band")
    p.add_argument("peer", help="the peer's node id")
    p.set_defaults(func=cmd_safety_number)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    home = resolve_home(args.home)
    try:
        code: int = args.func(home, args)
    except CliError as exc:
        print(f"p2pdm: {exc}", file=sys.stderr)
        return exc.code
    except (IdentityError, ConfigError) as exc:
        print(f"p2pdm: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command == "safety-number" else EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
