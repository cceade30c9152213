"""cf-db's replication commands: replicate (the sidecar), restore, erase.

Owns their arguments and how their results are shown; the work is
``prepare_sidecar``/``exec_sidecar``, ``restore_database`` and
``erase_database`` (circuitforge_core.db.replication). Defaults come from
``Settings`` (``CF_REPLICA_URL``, ``CF_LITESTREAM_SOCKET``,
``CF_LITESTREAM``), so the sidecar and the app can share one environment.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import ReplicaNotFoundError, Settings
from ..replication import (
    DEFAULT_MAX_FILES,
    ControlClient,
    default_socket_path,
    erase_database,
    exec_sidecar,
    prepare_sidecar,
    replica_url_for,
    restore_database,
    user_file,
)
from .options import AddCommand, Subcommands, command, json_option
from .output import EXIT_ACTION, EXIT_OK, duration, print_json, size


def _replica_options(
    parser: argparse.ArgumentParser,
    flag: str,
    what: str,
    *,
    with_user_path: bool = True,
    runs_litestream: bool = True,
) -> None:
    parser.add_argument("root", metavar="ROOT", help="the data root (the app's CLOUD_DATA_ROOT)")
    if with_user_path:
        parser.add_argument("user_path", metavar="USER_PATH", help="USER/FILE under ROOT")
    parser.add_argument(flag, dest="url", metavar="URL", help=f"{what} (default: CF_REPLICA_URL)")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the sidecar's control socket (default: CF_LITESTREAM_SOCKET, else "
        "ROOT/.litestream/control.sock)",
    )
    if runs_litestream:
        parser.add_argument(
            "--litestream",
            metavar="PATH",
            help="the litestream binary (default: CF_LITESTREAM, else the replication extra's)",
        )


def _settled(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """The replica URL, socket and binary: from the arguments, else the environment."""
    settings = Settings.from_env()
    url = args.url or settings.replica_url
    if not url:
        raise ValueError("no replica URL: pass --to/--from/--replica URL, or set CF_REPLICA_URL")
    socket = args.socket or settings.litestream_socket or default_socket_path(args.root)
    binary = getattr(args, "litestream", None) or settings.litestream
    return url, str(socket), None if binary is None else str(binary)


def _release(socket: str, path: str) -> bool:
    """Ask a running sidecar to let go of ``path``; False when none is running."""
    client = ControlClient(socket)
    if not client.is_running():
        return False
    client.unregister(path)
    return True


# -- replicate -----------------------------------------------------------------------


def _add_replicate(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "replicate",
        "run the host's Litestream in the foreground (a sidecar of the service)",
        "Check the data root, the replica URL and the socket, write Litestream's\n"
        "configuration (control socket on, no databases: the app registers each file it\n"
        "opens), raise the open-file limit for --max-files registered files, remove\n"
        "AWS_CA_BUNDLE from Litestream's environment, then become Litestream. SIGTERM or\n"
        "SIGINT make it sync every registered file once more and exit 0. Logs go to stderr.\n"
        "Credentials come from the environment (LITESTREAM_ACCESS_KEY_ID and\n"
        "LITESTREAM_SECRET_ACCESS_KEY, or AWS_*). See docs/replication.md.",
    )
    _replica_options(parser, "--to", "where every user's file is replicated", with_user_path=False)
    parser.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there (default: none)"
    )
    parser.add_argument(
        "--max-files",
        type=int,
        default=DEFAULT_MAX_FILES,
        metavar="N",
        help="files registered at once on this host: the sum of the registry caps of every "
        f"app process using this sidecar (default {DEFAULT_MAX_FILES})",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warn", "error"), default="info")
    parser.add_argument("--log-json", action="store_true", help="Litestream logs JSON lines")
    parser.set_defaults(handler=_replicate)


def _replicate(args: argparse.Namespace) -> int:
    url, socket, binary = _settled(args)
    logging.getLogger("circuitforge_core.db").setLevel(logging.INFO)  # what it is about to do
    plan = prepare_sidecar(
        args.root,
        url,
        socket_path=socket,
        metrics_addr=args.metrics,
        max_files=args.max_files,
        litestream=binary,
        log_level=args.log_level,
        log_json=args.log_json,
    )
    sys.stdout.flush()
    exec_sidecar(plan)


# -- restore -------------------------------------------------------------------------


def _add_restore(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "restore",
        "restore one user's file from its replica, atomically",
        "Restore ROOT/USER_PATH (e.g. alice/kiwi.db) from its replica: the file's path under\n"
        "ROOT, under the replica URL. litestream restore writes a copy beside the target; it\n"
        "is checked (integrity_check, _migrations readable, with --migrations its status),\n"
        "made 0600, fsynced and renamed into place. An absent or empty target is filled; an\n"
        "existing database is replaced only with --replace, and only while nothing has it\n"
        "open (stop serving the user first; a running sidecar is asked to let go of it).\n"
        "Exit 1 when the replica holds no copy. Any failure leaves the target as it was.",
    )
    _replica_options(parser, "--from", "the replica URL the sidecar replicates to")
    parser.add_argument(
        "--timestamp", metavar="TIME", help="restore the state at TIME (RFC 3339, with a zone)"
    )
    parser.add_argument("--replace", action="store_true", help="replace an existing database")
    parser.add_argument(
        "--migrations", metavar="DIR", help="report the copy's migrations against DIR"
    )
    json_option(parser)
    parser.set_defaults(handler=_restore)


def _restore(args: argparse.Namespace) -> int:
    url, socket, binary = _settled(args)
    file = user_file(args.root, args.user_path)
    if args.replace:
        _release(socket, file.path)
    try:
        result = restore_database(
            file,
            replica_url_for(url, file),
            timestamp=args.timestamp,
            replace=args.replace,
            migrations=args.migrations,
            litestream=binary,
        )
    except ReplicaNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ACTION
    assert result is not None
    if args.json:
        print_json(
            {
                "database": result.path,
                "replica": result.replica_url,
                "replaced": result.replaced,
                "size": result.size,
                "timestamp": result.timestamp,
                "migrations": list(result.migrations),
                "pending": list(result.pending),
                "seconds": result.seconds,
            }
        )
        return EXIT_OK
    print(
        f"restored {result.path} from {result.replica_url}"
        + (f" as of {result.timestamp}" if result.timestamp else "")
        + f": {size(result.size)}, {len(result.migrations)} migrations recorded"
        + (f", {len(result.pending)} pending" if result.pending else "")
        + f", in {duration(result.seconds)}"
        + (" (replaced the old file)" if result.replaced else "")
    )
    return EXIT_OK


# -- erase ---------------------------------------------------------------------------


def _add_erase(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "erase",
        "erase one user's file everywhere: replica, Litestream's state, the database",
        "Delete ROOT/USER_PATH's replica (a file replica's folder; every object and version\n"
        "under an S3 prefix), Litestream's state beside it (.NAME-litestream) and the\n"
        "database with its -wal, -shm and -journal, and list what was deleted. Refused,\n"
        "with nothing deleted, while anything has the file open (a running sidecar is asked\n"
        "to let go of it first). Inside the service, registry.drop_database does the same.",
    )
    _replica_options(
        parser, "--replica", "the replica URL the sidecar replicates to", runs_litestream=False
    )
    json_option(parser)
    parser.set_defaults(handler=_erase)


def _erase(args: argparse.Namespace) -> int:
    url, socket, _ = _settled(args)
    file = user_file(args.root, args.user_path)
    _release(socket, file.path)
    result = erase_database(file, url)
    if args.json:
        print_json(
            {
                "database": result.path,
                "replica": result.replica_url,
                "replica_objects": list(result.replica_objects),
                "local": list(result.local_state),
            }
        )
        return EXIT_OK
    print(result.describe())
    for name in (*result.replica_objects, *result.local_state):
        print(f"    deleted {name}")
    return EXIT_OK


#: This group's commands, in the order ``--help`` lists them.
COMMANDS: tuple[AddCommand, ...] = (_add_replicate, _add_restore, _add_erase)
