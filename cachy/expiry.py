"""How old an entry may be before it is recorded again: `max_age`, the ages of entries, and the one warning
that a replay served expired ones.

Models and APIs change under a committed `cachy.jsonl`, so a recording can be given a lifetime. An entry's
age is read from its `recorded_at` (UTC, as the engine writes it); an entry without one (older files, the
original cachy's) has no age and never expires. Ages are read only when `max_age` is set, so the usual hit
pays nothing for this."""

from __future__ import annotations

import datetime
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import fileio, lines
from .errors import warn

FORMS = 'seconds as a number (3600), a datetime.timedelta, or a string such as "45s", "90m", "12h" or "30d"'
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SPELLED = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhd]?)\s*", re.IGNORECASE)  # ASCII digits only
BUCKETS = ((86400, "under a day"), (7 * 86400, "under a week"), (30 * 86400, "under 30 days"))


def seconds_of(value: object, source: str = "max_age") -> float:
    """`value` as a positive number of seconds: a number, a `timedelta`, or a number with a unit (`"30d"`; a
    bare number is seconds, as `CACHY_MAX_AGE=3600` reads). Anything else is a ValueError that lists the forms."""
    seconds = None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf  # 10**400 is no age, not an OverflowError
    elif isinstance(value, str) and (match := _SPELLED.fullmatch(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower() or "s"]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{source} {value!r} is not an age: give a positive age, as {FORMS}")
    return seconds


def age_of(recorded_at: object, now: float) -> float | None:
    """Seconds since `recorded_at` (an ISO time, as the engine writes it), or None when it is not one."""
    if not isinstance(recorded_at, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(recorded_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return now - moment.timestamp()


def spelled(seconds: float) -> str:
    """An age as people say it: `45 days`, `3 hours`, `90 seconds`."""
    for unit, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= 2 * unit:
            return f"{seconds / unit:.0f} {name}s"
    return "1 second" if round(seconds) == 1 else f"{seconds:.0f} seconds"


def bucket(age: float | None) -> str:
    """Which of `cachy stats`'s age groups an entry falls in."""
    if age is None:
        return "no recording time"
    return next((name for limit, name in BUCKETS if age < limit), "older")


def _age_of_line(line: bytes, now: float) -> float | None:
    data = lines.parse_json(line)
    return age_of(data.get("recorded_at"), now) if isinstance(data, dict) else None


def _ages(path: Path, now: float) -> Iterator[float]:
    """The ages of the entries in `path` that have one."""
    fd = os.open(path, os.O_RDONLY | fileio.O_BINARY)
    try:
        for _, line, head in lines.scan(fd):
            age = _age_of_line(line, now) if head else None
            if age is not None:
                yield age
    finally:
        os.close(fd)


def older_than(found: dict[Any, bytes], seconds: float) -> tuple[set, int]:
    """Which of `found`'s lines were recorded more than `seconds` ago (none when `seconds` is 0), and how
    many have no recording time: `cachy compact --older-than` drops the first and keeps the others."""
    if not seconds:
        return set(), 0
    now, aged, undated = time.time(), set(), 0
    for slot, line in found.items():
        age = _age_of_line(line, now)
        undated += age is None
        if age is not None and age > seconds:
            aged.add(slot)
    return aged, undated


class Lifetime:
    """One engine's `max_age`: which entries are expired, and the single warning of a replay that serves them."""

    def __init__(self, max_age: float):
        self.max_age = max_age
        self._warned = False

    def expired(self, recorded_at: str | None) -> float | None:
        """The age of an entry recorded at `recorded_at` when it is older than `max_age`, else None."""
        age = age_of(recorded_at, time.time())
        return age if age is not None and age > self.max_age else None

    def served(self, age: float, path: Path) -> None:
        """A replay served an expired entry (replay never goes live): warn once, at the first, with how many
        of the file's entries are expired and how old the oldest is; `cachy_stats().expired` counts the rest."""
        if self._warned:
            return
        self._warned = True
        old = [other for other in _ages(path, time.time()) if other > self.max_age]
        warn(
            f"cachy replayed an entry recorded {spelled(age)} ago, older than max_age ({spelled(self.max_age)}): "
            f"replay mode serves expired entries rather than going live. {len(old) or 1} entries of {path} are "
            f"expired, the oldest recorded {spelled(max(old, default=age))} ago; record them again in record "
            "mode. cachy_stats().expired counts the expired entries served."
        )
