"""What cf-db shows: exit codes, JSON, aligned rows, durations and sizes, live terminal lines.

Owns the shape of the output every command group shares. Knows nothing of
databases or of the commands themselves.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

EXIT_OK = 0
EXIT_ACTION = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # what shells report for Ctrl-C


def print_json(document: object) -> None:
    """One JSON document on stdout."""
    print(json.dumps(document, indent=2, ensure_ascii=False))


def print_rows(rows: Sequence[Sequence[str]]) -> None:
    """Rows as aligned columns (the last column unpadded)."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


def duration(seconds: float) -> str:
    """``3.1 ms``, ``41.27 s``, ``2 min 05.0 s``."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:04.1f} s"


def size(size: int) -> str:
    """``12.0 KiB``, ``412.3 MiB``, ``1.50 GiB``."""
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    if size < 1024**3:
        return f"{size / 1024**2:.1f} MiB"
    return f"{size / 1024**3:.2f} GiB"


class LiveLine:
    """One status line on a terminal, redrawn in place by a background thread.

    Shown only after ``delay`` seconds, so quick steps do not flicker. The
    caller creates one only when the stream is a terminal.
    """

    def __init__(self, stream: TextIO, *, delay: float = 0.25, interval: float = 0.1) -> None:
        self._stream = stream
        self._delay = delay
        self._interval = interval
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._shown = False

    def start(self, label: str) -> None:
        self.stop()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(label, time.monotonic(), self._stopped),
            name="cf-db-live-line",
            daemon=True,  # never keeps the process alive after an error
        )
        self._thread.start()

    def _run(self, label: str, started: float, stopped: threading.Event) -> None:
        if stopped.wait(self._delay):
            return
        while True:
            self._stream.write(f"\r{label} ... {time.monotonic() - started:.1f} s\x1b[K")
            self._stream.flush()
            self._shown = True
            if stopped.wait(self._interval):
                return

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopped.set()
        self._thread.join()
        self._thread = None
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


class Progress:
    """``backing up app.db  45%`` on a terminal, redrawn after each step."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._shown = False

    def update(self, done: int, total: int) -> None:
        if done >= total and not self._shown:
            return  # finished in the first step: nothing worth showing
        percent = 100 * done // total if total else 100
        self._stream.write(f"\rbacking up {self._label} {percent:3d}%\x1b[K")
        self._stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


@contextlib.contextmanager
def working(label: str, stream: TextIO | None = None) -> Iterator[None]:
    """``label ... 3.2 s`` on a terminal while a long step runs (check, encrypt, ...)."""
    stream = sys.stderr if stream is None else stream
    live = LiveLine(stream) if stream.isatty() else None
    if live is not None:
        live.start(label)
    try:
        yield
    finally:
        if live is not None:
            live.stop()


class StatusLine:
    """One line on a terminal, replaced by ``show()`` at most ten times a second.

    ``print_above`` writes a whole line above it (a failure, as it happens).
    """

    def __init__(self, stream: TextIO, *, interval: float = 0.1) -> None:
        self._stream = stream
        self._interval = interval
        self._last = 0.0
        self._text = ""

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            self._text = text
            return
        self._last = now
        self._text = text
        self._stream.write(f"\r{text}\x1b[K")
        self._stream.flush()

    def print_above(self, line: str, out: TextIO) -> None:
        self._stream.write("\r\x1b[K")
        self._stream.flush()
        print(line, file=out, flush=True)
        if self._text:
            self.show(self._text, force=True)

    def clear(self) -> None:
        self._stream.write("\r\x1b[K")
        self._stream.flush()
        self._text = ""


def count(number: int) -> str:
    """``12,345``."""
    return f"{number:,}"
