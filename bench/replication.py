"""Replication section: Litestream driven by this package, against its directory watcher.

Owns the figures issue 11 asks for, all with real processes on loopback
(Litestream sidecars started as ``cf-db replicate`` starts them, a moto S3
server, file replicas):

1. replication lag (commit -> a new LTX object in the replica), p50/p99,
   file and S3 replicas;
2. restore time per user, file and S3 replicas;
3. moving a user between two hosts of this machine (quiesce and release on
   A, restore on B, first request on B);
4. writes lost when the host dies (app and Litestream SIGKILLed at once):
   must stay within the sync interval, and be zero for confirmed writes;
5. the cost of a confirmed commit (commit + ``sync``) against a plain one;
6. Litestream's CPU, memory and descriptors with 3,000 user files on disk
   and 200 active: registered by the registry (IPC) against the directory
   watcher over the same root, in the same run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from circuitforge_core.db import (
    Placement,
    PoolRegistry,
    get_db,
    run_migrations,
    transaction,
    use_db,
    user_db_path,
)
from circuitforge_core.db.replication import (
    ControlClient,
    Replicator,
    find_litestream,
    litestream_environment,
    replica_url_for,
    restore_database,
    user_file,
)

from .measure import duration, heading, median, note, per_call, percentile

NOTES_MIGRATIONS = Path(__file__).resolve().parent.parent / "examples" / "notes" / "migrations"
BUCKET = "cf-bench-replicas"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
LAG_SAMPLES = 15
RESTORES = 12
MOVES = 5
LOSS_TRIALS = 4
CONFIRMED_SAMPLES = 30
FILES_ON_DISK = 3_000
ACTIVE = 200
IDLE_SECONDS = 15.0

_MOTO = """
import sys
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


def run() -> None:
    os.environ.update(CREDENTIALS)
    with tempfile.TemporaryDirectory(prefix="cf-bench-repl-", dir="/tmp") as tmp, moto() as s3:
        folder = Path(tmp)
        print(f"Litestream {litestream_version()}, SQLite {sqlite3.sqlite_version}; real processes")
        bases = {"file": _file_base(folder / "replicas"), "s3": s3(f"run-{uuid.uuid4().hex[:8]}")}
        lag_and_restore(folder, bases)
        moves(folder, bases["s3"])
        host_loss(folder, bases["s3"])
        confirmed_commit(folder, bases)
        idle_cost(folder, bases["file"])


# -- 1 and 2 ------------------------------------------------------------------------------


def lag_and_restore(folder: Path, bases: dict[str, str]) -> None:
    heading("Replication lag (commit -> new LTX object in the replica) and restore per user")
    for kind, base in bases.items():
        root = _root(folder / f"lag-{kind}")
        with sidecar(root, base, folder / f"lag-{kind}.sock") as socket:
            replicator = Replicator(root, base, socket_path=socket)
            paths = [_new_user(root, f"user{n}") for n in range(RESTORES)]
            for path in paths:
                replicator.file_opened(path)
                replicator.sync(path)
            lags = []
            db = get_db(paths[0])
            listing = _replica_listing(kind, replica_url_for(base, user_file(root, paths[0])))
            for _ in range(LAG_SAMPLES):
                before = listing()
                with transaction(db):
                    db.execute("INSERT INTO notes (title) VALUES ('lag')")
                committed = time.perf_counter()
                deadline = committed + 10
                while listing() == before and time.perf_counter() < deadline:
                    time.sleep(0.005)
                lags.append(time.perf_counter() - committed)
                time.sleep(random.uniform(0.1, 0.5))
            db.close()
            for path in paths:
                replicator.file_closed(path)
            replicator.close()
        other = _root(folder / f"restored-{kind}")
        times = []
        for path in paths:
            target = user_file(other, user_file(root, path).relative)
            started = time.perf_counter()
            restore_database(target, replica_url_for(base, target))
            times.append(time.perf_counter() - started)
        note(
            f"{kind:>4}: lag p50 {duration(median(lags))}, p99 {duration(percentile(lags, 0.99))}, "
            f"max {duration(max(lags))} ({len(lags)} commits); restore p50 "
            f"{duration(median(times))}, max {duration(max(times))} ({len(times)} users)"
        )


def _replica_listing(kind: str, url: str) -> Callable[[], int]:
    if kind == "file":
        level0 = Path(url.removeprefix("file://")) / "ltx" / "0"
        return lambda: len(os.listdir(level0)) if level0.exists() else 0
    client, bucket, prefix = _s3_client(url)
    return lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/0000/").get(
        "KeyCount", 0
    )


# -- 3 ----------------------------------------------------------------------------------------


def moves(folder: Path, base: str) -> None:
    heading(f"Moving a user between two hosts of this machine (S3 replica, {MOVES} users)")
    root_a, root_b = _root(folder / "host-a"), _root(folder / "host-b")
    directory: dict[str, str] = {}
    with (
        sidecar(root_a, base, folder / "a.sock") as socket_a,
        sidecar(root_b, base, folder / "b.sock") as socket_b,
    ):
        host_a = _Host(root_a, base, socket_a, Placement(root_a, "a", directory.get))
        host_b = _Host(root_b, base, socket_b, Placement(root_b, "b", directory.get))
        users = [f"mover{n}" for n in range(MOVES)]
        for user in users:
            directory[user] = "a"
            host_a.write(user, 50)
        totals, steps = [], []
        for user in users:
            path_a = str(user_db_path(root_a, user, "kiwi.db", create=False))
            started = time.perf_counter()
            host_a.registry.quiesce(path_a)  # refuse, close, final sync, Litestream lets go
            released = time.perf_counter()
            directory[user] = "b"
            host_b.write(user, 1)  # restore-on-miss, migrations check, register, a write
            done = time.perf_counter()
            host_a.registry.drop_database(path_a, erase_replica=False)
            totals.append(done - started)
            steps.append((released - started, done - released))
        lineages = 0
        for user in users:
            host_b.registry.sync(str(user_db_path(root_b, user, "kiwi.db", create=False)))
            check = _root(folder / f"check-{user}")
            target = user_file(check, f"{user}/kiwi.db")
            restore_database(target, replica_url_for(base, target))
            count = sqlite3.connect(target.path).execute("SELECT count(*) FROM notes").fetchone()
            lineages += count[0] == 51
        host_a.close()
        host_b.close()
    note(
        f"move p50 {duration(median(totals))}, max {duration(max(totals))}: quiesce + final "
        f"sync on A {duration(median([s[0] for s in steps]))}, first request on B (restore "
        f"on miss, migrations check, register, a write) {duration(median([s[1] for s in steps]))}"
    )
    note(f"one lineage afterwards (A's 50 rows + B's row restored): {lineages}/{len(users)} users")


class _Host:
    """One 'host': a data root, its replicator and a registry driving it."""

    def __init__(
        self, root: Path, base: str, socket: Path, placement: Placement | None = None
    ) -> None:
        self.root = root
        self.replicator = Replicator(root, base, socket_path=socket)
        self.registry = PoolRegistry(
            migrations=NOTES_MIGRATIONS, replication=self.replicator, placement=placement
        )

    def write(self, user: str, rows: int) -> None:
        path = str(user_db_path(self.root, user, "kiwi.db"))
        with self.registry.connection(path) as db, transaction(db):
            db.executemany("INSERT INTO notes (title) VALUES (?)", [("row",)] * rows)

    def close(self) -> None:
        self.registry.close()
        self.replicator.close()


# -- 4 ----------------------------------------------------------------------------------------


def host_loss(folder: Path, base: str) -> None:
    heading(
        f"Host loss: app and Litestream SIGKILLed at once, restore elsewhere ({LOSS_TRIALS} "
        f"trials; one user committing every ~10 ms unconfirmed, another with every 10th "
        f"commit confirmed by registry.sync)"
    )
    windows, commits_lost, lost_confirmed, confirmed_total = [], [], 0, 0
    for trial in range(LOSS_TRIALS):
        root = _root(folder / f"loss-{trial}")
        # Names of their own per trial: a replica is keyed by the user's path under the
        # root, so reusing one would restore over an earlier trial's lineage.
        names = {"plain": f"plain-{trial}", "critical": f"critical-{trial}"}
        plain = _new_user(root, names["plain"], rows=0)
        critical = _new_user(root, names["critical"], rows=0)
        socket = folder / f"loss-{trial}.sock"
        process = _start_sidecar(root, base, socket)
        writer = _child_writer(root, base, socket, plain, critical)
        time.sleep(random.uniform(1.5, 3.0))
        killed_at = time.time()  # the kill: app and Litestream at the same instant
        os.kill(process.pid, signal.SIGKILL)
        writer.send_signal(signal.SIGKILL)
        process.wait()
        out, _ = writer.communicate()
        other = _root(folder / f"loss-{trial}-b")
        restored = {}
        for user in ("plain", "critical"):
            target = user_file(other, f"{names[user]}/kiwi.db")
            restore_database(target, replica_url_for(base, target))
            db = sqlite3.connect(target.path)
            restored[user] = {row[0] for row in db.execute("SELECT title FROM notes")}
            db.close()
        lines = (out or "").splitlines()
        confirmed = [line.split()[1] for line in lines if line.startswith("ok ")]
        confirmed_total += len(confirmed)
        lost_confirmed += sum(1 for title in confirmed if title not in restored["critical"])
        # The writer prints each plain commit once it returned: the last one it reported
        # is the newest the host had (it may have committed one more before the kill).
        reported = [line.split() for line in lines if line.startswith("plain ")]
        newest = float(reported[-1][2]) if reported else killed_at
        last = max((float(title) for title in restored["plain"]), default=0.0)
        windows.append(max(0.0, newest - last))
        commits_lost.append(max(0, len(reported) - len(restored["plain"])))
    note(
        "unconfirmed writes lost (newest commit on the host - newest restored): "
        + ", ".join(f"{w:.2f} s" for w in windows)
        + f" (at least {', '.join(map(str, commits_lost))} commits); Litestream's defaults allow "
        f"up to ~2 s (1 s monitor + 1 s sync)"
    )
    note(f"confirmed writes lost: {lost_confirmed} of {confirmed_total} (must be 0)")


_WRITER = """
import sys, time
from circuitforge_core.db import PoolRegistry, Replicator, transaction
root, base, socket, plain, critical = sys.argv[1:6]
registry = PoolRegistry(replication=Replicator(root, base, socket_path=socket))
n = 0
while True:
    stamp = repr(time.time())
    for path in (plain, critical):
        with registry.connection(path) as db, transaction(db):
            db.execute("INSERT INTO notes (title) VALUES (?)", (stamp,))
    n += 1
    if n % 10 == 0:
        registry.sync(critical)
        print("ok", stamp, flush=True)
    print("plain", n, stamp, flush=True)
    time.sleep(0.01)
"""


def _child_writer(
    root: Path, base: str, socket: Path, plain: str, critical: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), base, str(socket), plain, critical],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


# -- 5 ----------------------------------------------------------------------------------------


def confirmed_commit(folder: Path, bases: dict[str, str]) -> None:
    heading(
        f"A confirmed commit (commit + registry.sync) against a plain one, and the request "
        f"path with replication off and on ({CONFIRMED_SAMPLES} each)"
    )
    for kind, base in bases.items():
        root = _root(folder / f"confirm-{kind}")
        with sidecar(root, base, folder / f"c-{kind}.sock") as socket:
            host = _Host(root, base, socket)
            path = str(user_db_path(root, "alice", "kiwi.db"))
            host.write("alice", 1)
            host.registry.sync(path)
            plain, confirmed = [], []
            for _ in range(CONFIRMED_SAMPLES):
                with host.registry.connection(path) as db:
                    started = time.perf_counter()
                    with transaction(db):
                        db.execute("INSERT INTO notes (title) VALUES ('plain')")
                    plain.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    with transaction(db):
                        db.execute("INSERT INTO notes (title) VALUES ('confirmed')")
                    host.registry.sync(path)
                    confirmed.append(time.perf_counter() - started)
            if kind == "file":
                off, on = _request_path(root, host.registry)
            host.close()
        note(
            f"{kind:>4}: plain commit p50 {duration(median(plain))}; confirmed p50 "
            f"{duration(median(confirmed))}, p99 {duration(percentile(confirmed, 0.99))} "
            f"({median(confirmed) / median(plain):.0f}x)"
        )
    note(
        f"request path (user_db_path, use_db, checkout, one point read) with replication off "
        f"{duration(median(off))}, on (file open and registered) {duration(median(on))}: "
        f"{median(on) / median(off):.2f}x"
    )


def _request_path(root: Path, replicated: PoolRegistry) -> tuple[list[float], list[float]]:
    """Per-request seconds, interleaved: a registry without replication, and ``replicated``."""
    plain = PoolRegistry(migrations=NOTES_MIGRATIONS)
    plain_root = _root(root.parent / f"{root.name}-off")

    def request(registry: PoolRegistry, data_root: Path) -> Callable[[], object]:
        def one() -> object:
            path = user_db_path(data_root, "alice", "kiwi.db")
            with use_db(path), registry.connection(path) as db:
                return db.execute("SELECT title FROM notes WHERE id = 1").fetchone()

        return one

    request(plain, plain_root)()  # create and migrate it, outside the timing
    samples = per_call(
        {"off": request(plain, plain_root), "on": request(replicated, root)},
        batch=2000,
        rounds=7,
    )
    plain.close()
    return samples["off"], samples["on"]


# -- 6 ----------------------------------------------------------------------------------------


def idle_cost(folder: Path, base: str) -> None:
    heading(
        f"Litestream's cost with {FILES_ON_DISK:,} user files on disk and {ACTIVE} active "
        f"(file replica, {IDLE_SECONDS:.0f} s of light writes to the active ones)"
    )
    root = _root(folder / "many")
    template = Path(_new_user(_root(folder / "template"), "t"))
    for n in range(FILES_ON_DISK):
        user = root / f"u{n:05d}"
        user.mkdir(mode=0o700)
        shutil.copyfile(template, user / "kiwi.db")
    active = [
        str(root / f"u{n:05d}" / "kiwi.db") for n in random.sample(range(FILES_ON_DISK), ACTIVE)
    ]
    results = {}
    for name in ("ipc", "watch"):
        _root(Path(base.removeprefix("file://")) / name)
    with sidecar(root, base + "/ipc", folder / "ipc.sock", max_files=ACTIVE) as socket:
        replicator = Replicator(root, base + "/ipc", socket_path=socket)
        started = time.perf_counter()
        for path in active:
            replicator.file_opened(path)
        replicator.flush(60)
        client = ControlClient(socket, timeout=30)
        _wait_all_synced(client, ACTIVE)
        pid = client.info().pid
        ready = time.perf_counter() - started
        results["registry (IPC)"] = (ready, *_observe(pid, active))
        for path in active:
            replicator.file_closed(path)
        replicator.flush(120)
        after = _fds(pid)
        replicator.close()
    note(f"{'':<20} {'ready':>8} {'CPU':>8} {'RSS':>9} {'fds':>7} {'threads':>8}")
    _cost_line("registry (IPC)", results["registry (IPC)"])
    _cost_line("directory watcher", _watcher(folder, root, base + "/watch", active))
    note(
        f"ready: all {ACTIVE} (IPC) or {FILES_ON_DISK:,} (watcher) files replicated once; CPU "
        f"in cores. IPC after the {ACTIVE} files were closed and unregistered: {after} fds"
    )


def _cost_line(name: str, figures: tuple[float, ...]) -> None:
    ready, cpu, rss, fds, threads = figures
    note(f"{name:<20} {ready:>7.1f}s {cpu:>8.2f} {rss:>6.0f}MiB {fds:>7.0f} {threads:>8.0f}")


def _watcher(folder: Path, root: Path, base: str, active: list[str]) -> tuple[float, ...]:
    config = folder / "watch.yml"
    replica = base.removeprefix("file://")
    config.write_text(
        "{"
        f'"socket": {{"enabled": true, "path": "{folder / "watch.sock"}"}}, '
        '"logging": {"level": "warn", "stderr": true}, '
        f'"dbs": [{{"dir": "{root}", "pattern": "*.db", "recursive": true, "watch": true, '
        f'"replica": {{"url": "file://{replica}"}}}}]'
        "}"
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [find_litestream(), "replicate", "-config", str(config), "-no-expand-env"],
        env=litestream_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = ControlClient(folder / "watch.sock", timeout=60)  # busy opening 3,000 files
        client.wait_until_running(30)
        _wait_all_synced(client, FILES_ON_DISK)
        ready = time.perf_counter() - started
        return (ready, *_observe(process.pid, active))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_all_synced(client: ControlClient, count: int, timeout: float = 180) -> None:
    """Until ``count`` files are listed, each synced to the replica once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = client.databases()
        if len(entries) >= count and all(entry.last_sync_at for entry in entries):
            return
        time.sleep(0.1)
    raise RuntimeError(f"Litestream did not replicate {count} files within {timeout:g} s")


def _observe(pid: int, active: list[str]) -> tuple[float, float, int, int]:
    """CPU share, RSS (MiB), fds and threads of ``pid`` over IDLE_SECONDS of light writes."""
    time.sleep(3)  # settle
    before = _cpu_seconds(pid)
    started = time.perf_counter()
    sample = random.sample(active, 20)
    while time.perf_counter() - started < IDLE_SECONDS:
        db = sqlite3.connect(random.choice(sample), timeout=5)
        with db:
            db.execute("INSERT INTO notes (title) VALUES ('tick')")
        db.close()
        time.sleep(0.2)
    cpu = (_cpu_seconds(pid) - before) / (time.perf_counter() - started)
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status if ":" in line}
    return cpu, int(fields["VmRSS"][0]) / 1024, _fds(pid), int(fields["Threads"][0])


def _cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the parts --------------------------------------------------------------------------------


@contextmanager
def moto() -> Iterator[Callable[[str], str]]:
    env = {**os.environ}
    env.pop("AWS_CA_BUNDLE", None)
    child = subprocess.Popen(
        [sys.executable, "-c", _MOTO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        endpoint = f"http://127.0.0.1:{int(child.stdout.readline())}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET
        )
        yield (
            lambda prefix: (
                f"s3://{BUCKET}/{prefix}?endpoint={endpoint}&region=us-east-1&forcePathStyle=true"
            )
        )
    finally:
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.close()
        child.wait(10)
        child.stdout.close()


def _start_sidecar(
    root: Path, base: str, socket: Path, max_files: int = 256
) -> subprocess.Popen[bytes]:
    log = socket.with_suffix(".log")
    with open(log, "wb") as output:  # a file, not a pipe: Go dies of SIGPIPE on a closed one
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "circuitforge_core.db",
                "replicate",
                str(root),
                "--to",
                base,
                "--socket",
                str(socket),
                "--max-files",
                str(max_files),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    client = ControlClient(socket)
    deadline = time.monotonic() + 20
    while not client.is_running():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the sidecar did not start: {log.read_text(errors='replace')}")
        time.sleep(0.02)
    return process


@contextmanager
def sidecar(root: Path, base: str, socket: Path, max_files: int = 256) -> Iterator[Path]:
    process = _start_sidecar(root, base, socket, max_files)
    try:
        yield socket
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _root(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    return path


def _file_base(path: Path) -> str:
    path.mkdir(mode=0o700)
    return f"file://{path}"


def _new_user(root: Path, user: str, rows: int = 1) -> str:
    path = user_db_path(root, user, "kiwi.db")
    db = get_db(path)
    run_migrations(db, NOTES_MIGRATIONS)
    with transaction(db):
        db.executemany("INSERT INTO notes (title) VALUES ('first')", [()] * rows)
    db.close()
    return str(path)


def _s3_client(url: str):  # type: ignore[no-untyped-def]
    import boto3

    from circuitforge_core.db.replication.s3 import s3_location

    location = s3_location(url)
    client = boto3.client("s3", endpoint_url=location.endpoint, region_name="us-east-1")
    return client, location.bucket, location.prefix


def litestream_version() -> str:
    done = subprocess.run([find_litestream(), "version"], capture_output=True, text=True)
    return done.stdout.strip()
