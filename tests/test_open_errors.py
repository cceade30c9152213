"""Why a file would not open, said as it is (open_errors.py), under the real conditions.

A read-only mount and a full disk are real: a tiny tmpfs mounted inside a
child process's own user and mount namespaces (``unshare -rm``), so nothing
outside the child sees it. The long paths are real paths, the folder at
``-wal`` a real folder, and the user without write access a real one
(``nobody``). Each diagnosis must say what happened, to which path, and what
to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from circuitforge_core.db import OpenError, UnsafePathError, get_db, user_db_path
from circuitforge_core.db.sqlite_facts import MAX_DATABASE_PATH_BYTES

RAW_KEY = bytes(range(32))


def skip_without_sqlcipher(key: bytes | None) -> None:
    if key is not None:
        pytest.importorskip("sqlcipher3")


# -- a child process with a file system of its own ----------------------------------------


def _namespaces_unavailable() -> str | None:
    """Why a child cannot mount a tmpfs in its own namespaces here, or None if it can."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare(1) and mount(8) (util-linux)"
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(
            ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    if probe.returncode != 0:
        return (
            "this machine does not let a process mount a tmpfs in its own user and mount "
            f"namespaces (unshare -rm: {probe.stderr.strip() or probe.returncode})"
        )
    return None


NAMESPACES_UNAVAILABLE = _namespaces_unavailable()
needs_namespaces = pytest.mark.skipif(
    NAMESPACES_UNAVAILABLE is not None, reason=NAMESPACES_UNAVAILABLE or ""
)

# Run inside the child, after a tmpfs of SIZE is mounted at MOUNT: PREPARE, then
# each attempt; prints what each raised as JSON.
CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from circuitforge_core.db import DBError, OpenError, get_db, user_db_path

    mount = sys.argv[1]
    def remount_read_only():
        subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
    def fill():
        with open(os.path.join(mount, "filler"), "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"x" * 4096)
            except OSError:  # ENOSPC: the file system is full
                pass
    {prepare}
    results = {{}}
    for name, attempt in {attempts}.items():
        try:
            attempt()
        except DBError as exc:
            results[name] = {{
                "type": type(exc).__name__,
                "reason": getattr(exc, "reason", None),
                "message": str(exc),
            }}
        except Exception as exc:
            results[name] = {{"type": type(exc).__name__, "reason": None, "message": str(exc)}}
        else:
            results[name] = {{"type": None, "reason": None, "message": "opened"}}
    print(json.dumps(results))
    """
)


def in_own_mount(
    mount: Path, *, size: str, prepare: str, attempts: str
) -> dict[str, dict[str, str | None]]:
    """Run ``prepare`` then each attempt in a child with a tmpfs of ``size`` at ``mount``."""
    mount.mkdir()
    script = CHILD.format(prepare=textwrap.dedent(prepare), attempts=attempts)
    result = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f'mount -t tmpfs -o size={size} tmpfs "$1" && exec "$2" -c "$3" "$1"',
            "sh",
            str(mount),
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome: dict[str, dict[str, str | None]] = json.loads(result.stdout.splitlines()[-1])
    return outcome


def assert_says(outcome: dict[str, str | None], reason: str, path: Path, *words: str) -> None:
    assert outcome["type"] == "OpenError", outcome
    assert outcome["reason"] == reason, outcome
    message = outcome["message"] or ""
    assert str(path) in message, message
    for word in words:
        assert word in message, message


# -- a read-only file system --------------------------------------------------------------


@needs_namespaces
def test_a_read_only_mount_is_named_as_such(tmp_path: Path) -> None:
    """On a read-only mount neither readonly=True nor a write open blames permissions."""
    mount = tmp_path / "mnt"
    app = mount / "app.db"
    outcome = in_own_mount(
        mount,
        size="1m",
        prepare=f"""
        db = get_db({str(app)!r}); db.execute("CREATE TABLE t (x)"); db.commit(); db.close()
        remount_read_only()
        """,
        attempts=f"""{{
            "readonly": lambda: get_db({str(app)!r}, readonly=True),
            "write": lambda: get_db({str(app)!r}),
            "new file": lambda: get_db({str(mount / "new.db")!r}),
            "new folder": lambda: get_db({str(mount / "sub" / "new.db")!r}),
        }}""",
    )
    for name in ("readonly", "write", "new file", "new folder"):
        assert_says(outcome[name], "read_only", mount, "read-only file system")
        assert "permission" not in (outcome[name]["message"] or "")
    assert "-shm" in (outcome["readonly"]["message"] or "")  # why even reading needs to write
    assert "writable" in (outcome["write"]["message"] or "")


@needs_namespaces
def test_user_db_path_on_a_read_only_data_root_is_an_open_error(tmp_path: Path) -> None:
    """Creating a user's folder on a read-only data root says so, never a bare OSError."""
    mount = tmp_path / "mnt"
    outcome = in_own_mount(
        mount,
        size="64k",
        prepare="remount_read_only()",
        attempts=f"""{{"user": lambda: user_db_path({str(mount)!r}, "alice", "kiwi.db")}}""",
    )
    assert_says(outcome["user"], "read_only", mount / "alice", "read-only file system")


# -- a full disk --------------------------------------------------------------------------


@needs_namespaces
def test_reopening_after_the_disk_filled_says_the_disk_is_full(tmp_path: Path) -> None:
    """No room for the -shm: 'full', with the free space, not 'disk I/O error ... permissions'."""
    mount = tmp_path / "mnt"
    app = mount / "app.db"
    outcome = in_own_mount(
        mount,
        size="256k",
        prepare=f"""
        db = get_db({str(app)!r}); db.execute("CREATE TABLE t (x)"); db.commit(); db.close()
        fill()
        """,
        attempts=f"""{{
            "reopen": lambda: get_db({str(app)!r}),
            "readonly": lambda: get_db({str(app)!r}, readonly=True),
            "new file": lambda: get_db({str(mount / "new.db")!r}),
            "user": lambda: get_db(user_db_path({str(mount)!r}, "alice", "kiwi.db")),
        }}""",
    )
    for name in ("reopen", "readonly", "new file", "user"):
        assert_says(outcome[name], "disk_full", mount, "full", "free")
        message = outcome[name]["message"] or ""
        assert "permission" not in message, message
        assert "I/O error" not in message, message


# -- a name SQLite cannot take ------------------------------------------------------------


def path_of_length(folder: Path, length: int, suffix: str = ".db") -> Path:
    """A path under ``folder`` (which may not exist yet) exactly ``length`` bytes long."""
    base = str(folder.resolve())
    parts: list[str] = []
    rest = length - len(base) - 1  # for "part/part/.../name"
    while rest > 250:
        parts.append("d" * 200)
        rest -= 201
    path = Path(base, *parts, "f" * (rest - len(suffix)) + suffix)
    assert len(os.fsencode(path)) == length
    return path


@pytest.mark.parametrize("key", [None, RAW_KEY], ids=["plain", "encrypted"])
def test_a_path_too_long_for_sqlite_says_by_how_much(tmp_path: Path, key: bytes | None) -> None:
    """Past SQLite's limit the error names the length, the limit and how much to cut."""
    skip_without_sqlcipher(key)
    get_db(path_of_length(tmp_path / "fits", MAX_DATABASE_PATH_BYTES), key=key).close()
    too_long = path_of_length(tmp_path / "long", 559)
    with pytest.raises(OpenError) as info:
        get_db(too_long, key=key)
    assert info.value.reason == "path_too_long"
    message = str(info.value)
    assert str(too_long) in message
    assert "559 bytes" in message
    assert f"{MAX_DATABASE_PATH_BYTES}" in message
    assert f"{559 - MAX_DATABASE_PATH_BYTES} bytes" in message
    assert not (tmp_path / "long").exists()  # no folder made for a file that cannot open


def test_a_symbolic_link_does_not_hide_the_real_length(tmp_path: Path) -> None:
    """SQLite resolves links, so the length that counts is the real path's."""
    real = path_of_length(tmp_path / "real", 530 - len("/app.db"), suffix="")
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    short = tmp_path / "link" / "app.db"
    with pytest.raises(OpenError) as info:
        get_db(short)
    assert info.value.reason == "path_too_long"
    assert str(short) in str(info.value)
    assert "530 bytes" in str(info.value)


def test_user_db_path_refuses_a_path_that_could_never_open(tmp_path: Path) -> None:
    """A 559-byte per-user path is refused up front, naming the limit; nothing is created."""
    root = path_of_length(tmp_path, 559 - len("/alice/kiwi.db"), suffix="")
    root.mkdir(parents=True)
    with pytest.raises(UnsafePathError) as info:
        user_db_path(root, "alice", "kiwi.db")
    message = str(info.value)
    assert str(root) in message
    assert "559 bytes" in message
    assert f"{MAX_DATABASE_PATH_BYTES}" in message
    assert not (root / "alice").exists()
    user_db_path(tmp_path, "alice", "kiwi.db")  # a shorter root is fine


# -- something else where SQLite's own files go -------------------------------------------


@pytest.mark.parametrize("suffix", ["-wal", "-journal"])
@pytest.mark.parametrize("exists", [True, False], ids=["existing", "new"])
@pytest.mark.parametrize("key", [None, RAW_KEY], ids=["plain", "encrypted"])
def test_a_folder_where_sqlite_keeps_its_log_is_named(
    tmp_path: Path, suffix: str, exists: bool, key: bytes | None
) -> None:
    """A folder at app.db-wal (or -journal) is named as the obstacle, and what to do with it."""
    skip_without_sqlcipher(key)
    path = tmp_path / "app.db"
    if exists:
        get_db(path, key=key).close()
    Path(f"{path}{suffix}").mkdir()
    for readonly in (False, True) if exists else (False,):
        with pytest.raises(OpenError) as info:
            get_db(path, readonly=readonly, key=key)
        assert info.value.reason == "not_a_file"
        message = str(info.value)
        assert f"{path}{suffix} is a folder" in message
        assert "move it" in message.lower()


# -- a user who may not write the data root -----------------------------------------------


@pytest.fixture
def root_owned_by_root() -> Iterator[Path]:
    """A data root another user can enter but not write (pytest's own folders are private)."""
    folder = Path(tempfile.mkdtemp(prefix="cf-db-root-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs POSIX users")
def test_user_db_path_without_write_access_to_the_root_is_an_open_error(
    root_owned_by_root: Path, run_as_nobody: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Without write access to the data root: OpenError naming the folder, not PermissionError."""
    if os.geteuid() != 0 and os.access(root_owned_by_root, os.W_OK):
        pytest.skip("needs to run as root (to drop to another user) or on a root it cannot write")
    script = (
        "import sys\n"
        "from circuitforge_core.db import DBError, user_db_path\n"
        "try:\n"
        "    user_db_path(sys.argv[1], 'alice', 'kiwi.db')\n"
        "except DBError as exc:\n"
        "    print(type(exc).__name__, getattr(exc, 'reason', None))\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    result = run_as_nobody(script, str(root_owned_by_root))
    assert result.returncode == 3, result.stderr
    first, message = result.stdout.split("\n", 1)
    assert first == "OpenError permission"
    assert str(root_owned_by_root / "alice") in message
    assert "permission denied" in message
    assert "owned by" in message
