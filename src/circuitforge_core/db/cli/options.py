"""The arguments cf-db's commands share: declaring a command, ``--json``, keys, seconds, defaults.

Owns how a command is added to the parser, where keys come from, and the
defaults of a database, migrations folder and data root left out of the
command line (``ToolDefaults``: the environment, then ``[tool.cf-db]`` in the
product's ``pyproject.toml``). Keys are
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

from .. import ToolDefaults
from ..migrations import DEFAULT_LOCK_TIMEOUT

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


def lock_timeout_option(parser: argparse.ArgumentParser) -> None:
    """``--lock-timeout SECONDS``: how long a command waits for another process's migration."""
    parser.add_argument(
        "--lock-timeout",
        type=positive_seconds,
        default=DEFAULT_LOCK_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for another process's migration (default {DEFAULT_LOCK_TIMEOUT:g})",
    )


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


# -- arguments that may come from the environment or pyproject.toml --------------------


def default_source(name: str) -> str:
    """``$CF_DB_PATH or [tool.cf-db] database``: where ``name``'s default comes from, for help."""
    env, key = ToolDefaults.sources(name)
    return f"${env} or [tool.cf-db] {key}"


def database_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """An optional ``DB`` positional whose default is ``CF_DB_PATH`` or ``[tool.cf-db]``."""
    parser.add_argument(
        "db", metavar="DB", nargs="?", help=f"{what} (default: {default_source('database')})"
    )


def folder_argument(parser: argparse.ArgumentParser) -> None:
    """An optional ``DIR`` positional whose default is ``CF_DB_MIGRATIONS`` or ``[tool.cf-db]``."""
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        help=f"folder of NNN_name.sql migrations (default: {default_source('migrations')})",
    )


def fill_defaults(args: argparse.Namespace, *names: str) -> None:
    """Give ``args.db`` / ``args.dir`` / ``args.root`` / ``args.product_path`` their defaults.

    ``names`` are the fields the command needs (``database``, ``migrations``,
    ``data_root``, ``product_path``); one the command line left out comes from
    ``ToolDefaults`` (read only then), or a ``ValueError`` says how to give it.
    """
    attributes = {
        "database": "db",
        "migrations": "dir",
        "data_root": "db",
        "product_path": "product_path",
    }
    missing = [name for name in names if getattr(args, attributes[name], None) in (None, "")]
    if not missing:
        return
    defaults = ToolDefaults.load()
    for name in missing:
        value = getattr(defaults, name)
        if value is None:
            what = {
                "database": "no database given",
                "migrations": "no migrations folder given",
                "data_root": "no data root given",
                "product_path": "no tenant files named (--product-path or --pattern)",
            }[name]
            env, key = ToolDefaults.sources(name)
            raise ValueError(
                f"{what}: pass it on the command line, set ${env}, or set {key} under "
                f"[tool.cf-db] in the product's pyproject.toml."
            )
        setattr(args, attributes[name], str(value))
