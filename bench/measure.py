"""Timing and reporting helpers for the core benchmark.

Owns how samples are taken (interleaved, so that the noise of this shared
machine hits every contender alike), how they are summarised (medians and
percentiles) and how a result line is printed. Does not know what is measured.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection inside a tight loop: a collection would land on one side only."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def alternate(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each case once per round, in alternating order; each case times itself.

    A case returns the seconds of the part that counts, so untimed setup
    (a fresh file, undoing a migration) can live inside it. Reversing the
    order every round keeps "always runs second" from favouring one case.
    """
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for number in range(rounds):
        for name in names if number % 2 == 0 else reversed(names):
            samples[name].append(cases[name]())
    return samples


def per_call(
    cases: dict[str, Callable[[], object]], *, batch: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each case, one sample per batch of ``batch`` calls.

    Batches of the cases alternate, so a burst of load from a neighbour on
    this machine slows a batch of each rather than all of one. One warm-up
    batch per case is discarded.
    """

    def batched(function: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            for _ in range(batch):
                function()
            return (time.perf_counter() - started) / batch

        return run

    with gc_paused():
        alternate({name: batched(function) for name, function in cases.items()}, 1)
        return alternate({name: batched(function) for name, function in cases.items()}, rounds)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile (0 < fraction <= 1) of a non-empty list."""
    ordered = sorted(samples)
    rank = math.ceil(fraction * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def duration(seconds: float) -> str:
    """A duration in the unit that keeps three significant figures readable."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def heading(title: str) -> None:
    print(f"\n{title}", flush=True)


LABEL_WIDTH = 46


def ratio_line(label: str, ours: float, baseline: float, goal: str, passed: bool | None) -> None:
    """One comparison: our median, the baseline's, the ratio, the goal and the verdict.

    ``passed`` is None for a figure reported for context only.
    """
    verdict = "" if passed is None else ("PASS" if passed else "MISS")
    print(
        f"  {label:<{LABEL_WIDTH}} {duration(ours):>10} {duration(baseline):>10} "
        f"{ours / baseline:>7.2f}x  {goal:<12} {verdict}",
        flush=True,
    )


def columns(ours: str = "ours", baseline: str = "baseline") -> None:
    print(
        f"  {'':<{LABEL_WIDTH}} {ours:>10} {baseline:>10} {'ratio':>8}  {'goal':<12}",
        flush=True,
    )


def note(text: str) -> None:
    print(f"    {text}", flush=True)
