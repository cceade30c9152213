"""The arguments cf-db's commands share: declaring a command, ``--json``, keys, seconds.

Owns how a command is added to the parser and where keys come from. Keys are
never taken from argv, where ``ps`` and shell history show them: only from
an environment variable or a file (or standard input) named on the command
line. A raw 256-bit key is written ``x'<64 hex digits>'``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TypeAlias

Handler = Callable[[argparse.Namespace], int]
# argparse's type for the object add_subparsers() returns (private, but typed by typeshed).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddCommand: TypeAlias = Callable[[Subcommands, argparse.ArgumentParser], None]


def command(
    commands: Subcommands,
    common: argparse.ArgumentParser,
    name: str,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    """The parser of one sub-command, with the options every command takes."""
    return commands.add_parser(
        name,
        parents=[common],
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def key_options(
    parser: argparse.ArgumentParser, *, new: bool = False, required: bool = False
) -> None:
    """``--key-env NAME`` / ``--key-file PATH`` (``--new-...`` for rekey's new key)."""
    prefix, what = ("new-", "new ") if new else ("", "")
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument(
        f"--{prefix}key-env",
        metavar="NAME",
        help=f"read the {what}key of an encrypted database from environment variable NAME",
    )
    source.add_argument(
        f"--{prefix}key-file",
        metavar="PATH",
        help=f"read the {what}key from file PATH ('-': standard input; one trailing newline "
        f"is dropped)",
    )


def key(args: argparse.Namespace, *, new: bool = False) -> str | None:
    """The key named by ``--[new-]key-env`` or ``--[new-]key-file``; None for neither."""
    prefix = "new_" if new else ""
    env_name = getattr(args, f"{prefix}key_env", None)
    file_name = getattr(args, f"{prefix}key_file", None)
    if env_name is not None:
        value = os.environ.get(env_name)
        if not value:
            state = "empty" if value == "" else "not set"
            raise ValueError(f"environment variable {env_name} is {state}; put the key in it.")
        return value
    if file_name is None:
        return None
    if file_name == "-":
        text = sys.stdin.read()
    else:
        with open(file_name, encoding="utf-8") as handle:
            text = handle.read()
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"the key file {file_name} is empty.")
    return text


def required_key(args: argparse.Namespace, *, new: bool = False) -> str:
    """``key``, for commands whose parser already requires one source."""
    value = key(args, new=new)
    if value is None:  # argparse already requires one source; this keeps mypy honest
        raise ValueError("no key given: use --key-env NAME or --key-file PATH")
    return value
