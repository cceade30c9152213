"""cf-db's encryption commands: encrypt, decrypt and rekey a database in place.

Owns their arguments and output; the conversions are the library's
``encrypt_database``, ``decrypt_database`` and ``rekey_database``. Keys come
from ``--key-env``/``--key-file`` (options.py), never from the command line.
"""

from __future__ import annotations

import argparse

from .. import decrypt_database, encrypt_database, rekey_database
from .options import AddCommand, Subcommands, command, key_options, required_key
from .output import EXIT_OK, working

_CONVERSION_NOTES = (
    "\n\nThe copy is checked (schema, rows per table, integrity_check), fsynced and renamed\n"
    "over DB, so DB is always either the old or the complete new database. DB must not be\n"
    "open elsewhere: stop the service first (an open connection is detected and refused).\n"
    "Keys come from --key-env NAME or --key-file PATH, never from the command line; a raw\n"
    "key is written x'<64 hex digits>'. Needs: pip install 'circuitforge-core[sqlcipher]'."
)


def _add_encrypt(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "encrypt",
        "encrypt a plain database in place with SQLCipher (service stopped)",
        "Rewrite the plain database DB encrypted under the given key." + _CONVERSION_NOTES,
    )
    parser.add_argument("db", metavar="DB", help="plain database file")
    key_options(parser, required=True)
    parser.set_defaults(handler=_encrypt)


def _encrypt(args: argparse.Namespace) -> int:
    with working(f"encrypting {args.db}"):
        rows = encrypt_database(args.db, required_key(args))
    print(f"encrypted {args.db} ({rows} rows checked)")
    return EXIT_OK


def _add_decrypt(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "decrypt",
        "turn an encrypted database back into a plain one (service stopped)",
        "Rewrite the encrypted database DB, opened with the given key, as a plain one."
        + _CONVERSION_NOTES,
    )
    parser.add_argument("db", metavar="DB", help="encrypted database file")
    key_options(parser, required=True)
    parser.set_defaults(handler=_decrypt)


def _decrypt(args: argparse.Namespace) -> int:
    with working(f"decrypting {args.db}"):
        rows = decrypt_database(args.db, required_key(args))
    print(f"decrypted {args.db} ({rows} rows checked)")
    return EXIT_OK


def _add_rekey(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "rekey",
        "re-encrypt a database under a new key (service stopped)",
        "Rewrite the encrypted database DB, opened with the current key (--key-env or\n"
        "--key-file), encrypted under the new key (--new-key-env or --new-key-file)."
        + _CONVERSION_NOTES,
    )
    parser.add_argument("db", metavar="DB", help="encrypted database file")
    key_options(parser, required=True)
    key_options(parser, new=True, required=True)
    parser.set_defaults(handler=_rekey)


def _rekey(args: argparse.Namespace) -> int:
    with working(f"re-keying {args.db}"):
        rows = rekey_database(args.db, required_key(args), required_key(args, new=True))
    print(f"re-keyed {args.db} ({rows} rows checked)")
    return EXIT_OK


#: This group's commands, in the order ``--help`` lists them.
COMMANDS: tuple[AddCommand, ...] = (_add_encrypt, _add_decrypt, _add_rekey)
