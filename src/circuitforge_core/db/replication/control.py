"""A client for Litestream's control socket: HTTP over a Unix socket, standard library only.

Owns the requests this package makes of a running Litestream
(``/register``, ``/unregister``, ``/sync``, ``/list``, ``/info``, ``/txid``),
their timeouts, and turning every failure into ``ControlSocketError`` naming
the socket and saying what to do. One connection per request: a connect on a
local socket costs microseconds, and no lock is held while one request (a
``/sync`` waiting for an upload) takes its time. Does not decide when to
register what (agent.py does).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..errors import ControlSocketError

DEFAULT_TIMEOUT = 5.0
#: What Litestream itself allows an unregister (final sync) or a sync wait by default.
DEFAULT_SYNC_TIMEOUT = 30.0

_NOT_RUNNING_HINT = (
    "start the sidecar (cf-db replicate ROOT --to URL, or its systemd unit / compose "
    "service) and check that the app and the sidecar use the same socket path"
)


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """``/info``: which Litestream answers. ``(pid, started_at)`` changes when it restarts."""

    version: str
    pid: int
    started_at: str
    uptime_seconds: int
    database_count: int

    @property
    def identity(self) -> tuple[int, str]:
        return (self.pid, self.started_at)


@dataclass(frozen=True, slots=True)
class ReplicatedDatabase:
    """One entry of ``/list``. ``status``: ``replicating``, ``open`` or ``stopped``."""

    path: str
    status: str
    last_sync_at: str | None


@dataclass(frozen=True, slots=True)
class SyncResult:
    """``/sync``: the file's last transaction and the last one the replica confirmed."""

    path: str
    status: str
    txid: int
    replicated_txid: int

    @property
    def replicated(self) -> bool:
        return self.replicated_txid >= self.txid


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("litestream", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Requests to the Litestream listening on ``socket_path``.

    ``timeout`` bounds each plain request; ``/unregister`` and ``/sync`` with
    wait take their own (Litestream's, plus a margin for the answer).
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT):
        self.socket_path = os.path.abspath(os.fspath(socket_path))
        self.timeout = timeout

    # -- the daemon --------------------------------------------------------------------

    def info(self) -> DaemonInfo:
        body = self._request("GET", "/info")
        return DaemonInfo(
            version=str(body.get("version", "")),
            pid=int(body.get("pid", 0)),
            started_at=str(body.get("started_at", "")),
            uptime_seconds=int(body.get("uptime_seconds", 0)),
            database_count=int(body.get("database_count", 0)),
        )

    def is_running(self) -> bool:
        """Whether a Litestream answers on the socket right now."""
        try:
            self.info()
        except ControlSocketError as exc:
            if exc.status is None:
                return False
            raise
        return True

    def wait_until_running(self, timeout: float) -> DaemonInfo:
        """``info()`` once the daemon answers, polling for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.info()
            except ControlSocketError as exc:
                if exc.status is not None or time.monotonic() >= deadline:
                    raise
            time.sleep(0.02)

    def databases(self) -> list[ReplicatedDatabase]:
        """``/list``: every file registered now."""
        body = self._request("GET", "/list")
        return [
            ReplicatedDatabase(
                path=str(entry.get("path", "")),
                status=str(entry.get("status", "")),
                last_sync_at=entry.get("last_sync_at"),
            )
            for entry in body.get("databases") or []
        ]

    # -- one file ----------------------------------------------------------------------

    def register(self, path: str, replica_url: str) -> bool:
        """Start replicating ``path`` to ``replica_url``; False if it was registered already.

        Litestream keeps the registration in memory only: a restarted daemon
        has none (agent.py registers again).
        """
        body = self._request("POST", "/register", {"path": path, "replica_url": replica_url})
        return body.get("status") == "registered"

    def unregister(self, path: str, *, timeout: float = DEFAULT_SYNC_TIMEOUT) -> int | None:
        """Stop replicating ``path`` after a final sync; its last TXID, None if it was not there.

        Litestream closes its connection and releases its read lock, so the
        file's own checkpoints work again and its descriptors are freed.
        """
        body = self._request(
            "POST",
            "/unregister",
            {"path": path, "timeout": _whole_seconds(timeout)},
            timeout=timeout + self.timeout,
        )
        return int(body.get("txid", 0)) if body.get("status") == "unregistered" else None

    def sync(
        self, path: str, *, wait: bool = True, timeout: float = DEFAULT_SYNC_TIMEOUT
    ) -> SyncResult:
        """Ship ``path``'s committed transactions now; with ``wait``, until the replica has them.

        A file that is not registered raises ``ControlSocketError`` with status 404.
        """
        body = self._request(
            "POST",
            "/sync",
            {"path": path, "wait": wait, "timeout": _whole_seconds(timeout)},
            timeout=timeout + self.timeout,
        )
        return SyncResult(
            path=str(body.get("path", path)),
            status=str(body.get("status", "")),
            txid=int(body.get("txid", 0)),
            replicated_txid=int(body.get("replicated_txid", 0)),
        )

    def txid(self, path: str) -> int | None:
        """The last transaction Litestream saw in ``path``; None if it is not registered."""
        try:
            body = self._request("GET", "/txid?" + urllib.parse.urlencode({"path": path}))
        except ControlSocketError as exc:
            if exc.status == 404:
                return None
            raise
        return int(body.get("txid", 0))

    # -- HTTP ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        target: str,
        payload: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        wait = self.timeout if timeout is None else timeout
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn = _UnixHTTPConnection(self.socket_path, wait)
        what = f"{method} {target.split('?', 1)[0]}"
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlSocketError(
                f"no Litestream is listening on {self.socket_path} "
                f"({'no such socket' if isinstance(exc, FileNotFoundError) else 'refused'}); "
                f"{_NOT_RUNNING_HINT}.",
                path=self.socket_path,
            ) from exc
        except PermissionError as exc:
            raise ControlSocketError(
                f"not allowed to connect to {self.socket_path}; run the app as the same user "
                f"as the sidecar (the socket is 0600 by default).",
                path=self.socket_path,
            ) from exc
        except TimeoutError as exc:
            raise ControlSocketError(
                f"Litestream on {self.socket_path} did not answer {what} within {wait:g} s; "
                f"it may be overloaded (check its log and CPU) or stuck on its replica.",
                path=self.socket_path,
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ControlSocketError(
                f"talking to Litestream on {self.socket_path} failed during {what}: {exc}; "
                f"{_NOT_RUNNING_HINT}.",
                path=self.socket_path,
            ) from exc
        finally:
            conn.close()
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise ControlSocketError(
                f"{self.socket_path} answered {what} with something that is not JSON "
                f"({raw[:80]!r}); is a Litestream 0.5 control socket listening there?",
                path=self.socket_path,
                status=response.status,
            ) from exc
        if not isinstance(decoded, dict):
            decoded = {}
        if response.status != 200:
            detail = decoded.get("error") or raw[:200].decode(errors="replace")
            raise ControlSocketError(
                f"Litestream on {self.socket_path} refused {what} (HTTP {response.status}): "
                f"{detail}",
                path=self.socket_path,
                status=response.status,
            )
        return decoded


def _whole_seconds(timeout: float) -> int:
    """Litestream takes whole seconds; 0 would mean its own default."""
    return max(1, int(timeout + 0.999))
