"""Interleaved rounds: every implementation of a case timed in turn, several times over, and the statistics.

Timing each implementation once, in a fixed order, lets a drift of the machine (clocks, temperature, another
process) pass for a difference in speed. Here, for round r = 0 … R−1, for each pass, the implementations
are timed in an order rotated by r; each (implementation, pass) gets R timings, and the figure reported is
the median of its R round medians, with the spread (lowest and highest round median) and the 20th/80th
percentiles of all the samples pooled. Pure Python: unit-tested with a fake timer.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """One timing run, in milliseconds: median, 20th and 80th percentile, and the samples when known."""

    median: float
    p20: float
    p80: float
    samples: tuple[float, ...] = ()


@dataclass(frozen=True)
class Summary:
    """The rounds of one (implementation, pass): median of the round medians, lowest and highest round
    median, pooled 20th/80th percentiles, and the number of rounds."""

    median: float
    low: float
    high: float
    p20: float
    p80: float
    rounds: int


def quantile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted samples.

    >>> quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5), quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2)
    (3.0, 1.8)
    """
    if not sorted_samples:
        raise ValueError("no samples")
    pos = q * (len(sorted_samples) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def rotated(items: Sequence[T], shift: int) -> list[T]:
    """``items`` rotated left by ``shift``.

    >>> rotated(["a", "b", "c"], 1), rotated(["a", "b", "c"], 4)
    (['b', 'c', 'a'], ['b', 'c', 'a'])
    """
    if not items:
        return []
    k = shift % len(items)
    return list(items[k:]) + list(items[:k])


def schedule(impls: Sequence[str], passes: Sequence[str], rounds: int) -> list[tuple[int, str, str]]:
    """(round, pass, implementation) in the order they are timed.

    >>> schedule(["a", "b"], ["fwd"], 2)
    [(0, 'fwd', 'a'), (0, 'fwd', 'b'), (1, 'fwd', 'b'), (1, 'fwd', 'a')]
    """
    return [(r, pass_, impl) for r in range(rounds) for pass_ in passes for impl in rotated(impls, r)]


def summarize(timings: Sequence[Timing]) -> Summary:
    """The statistics of the rounds of one (implementation, pass).

    >>> s = summarize([Timing(2.0, 1.0, 3.0, (1.0, 2.0, 3.0)), Timing(4.0, 4.0, 4.0, (4.0,)),
    ...                Timing(3.0, 3.0, 3.0, (3.0,))])
    >>> s.median, s.low, s.high, s.rounds
    (3.0, 2.0, 4.0, 3)
    """
    if not timings:
        raise ValueError("no timings")
    medians = sorted(t.median for t in timings)
    pooled = sorted(s for t in timings for s in t.samples)
    if pooled:
        p20, p80 = quantile(pooled, 0.2), quantile(pooled, 0.8)
    else:
        p20, p80 = statistics.median(t.p20 for t in timings), statistics.median(t.p80 for t in timings)
    return Summary(statistics.median(medians), medians[0], medians[-1], p20, p80, len(timings))


def interleave(
    impls: Sequence[str],
    passes: Sequence[str],
    rounds: int,
    time_one: Callable[[str, str], Timing],
    stop: Callable[[], bool] = lambda: False,
) -> tuple[dict[tuple[str, str], Summary], dict[tuple[str, str], str]]:
    """Time every (implementation, pass) ``rounds`` times in :func:`schedule` order.

    ``time_one(impl, pass)`` times one; an exception marks that (implementation, pass) failed (its message
    kept): its later slots are skipped and its earlier timings dropped, while its other passes and the other
    implementations go on, so one failure never loses the others' figures. ``stop()`` is asked before each
    round after the first (a deadline): the rounds done so far are kept.
    Returns (summaries by (impl, pass), failures by (impl, pass)).
    """
    timings: dict[tuple[str, str], list[Timing]] = {}
    failed: dict[tuple[str, str], str] = {}
    current = 0
    for r, pass_, impl in schedule(impls, passes, max(1, rounds)):
        if r != current:
            current = r
            if stop():
                break
        key = (impl, pass_)
        if key in failed:
            continue
        try:
            timings.setdefault(key, []).append(time_one(impl, pass_))
        except Exception as exc:  # noqa: BLE001 - one implementation failing must not hide the others
            failed[key] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return {key: summarize(ts) for key, ts in timings.items() if ts and key not in failed}, failed
