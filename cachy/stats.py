"""What cachy did, and what it saved: the outcome of each request, its counts, and the tokens a body reports.

A re-run should cost nothing, and the way to see that it did is to count: `cachy_stats()` and the pytest
summary show hits, recordings and misses, and what the hits saved in seconds and tokens."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum

from .lines import Entry, parse_json


class Outcome(Enum):
    """What happened to one request: the `Stats` counter it adds to, and how `debug=True` names it."""

    HIT = ("hits", "hit", False)
    RECORDED = ("recorded", "recorded", True)
    PASSED = ("passed", "passed", True)
    REPLAY_MISS = ("replay_misses", "replay miss", True)
    UNRECORDED = ("unrecorded", "not recorded", True)
    JOINED = ("joined", "joined", False)
    UPGRADED = ("upgraded", "upgraded", False)  # a hit on the original's entry, stored again in cachy's format
    EXPIRED = ("expired", "expired", True)  # older than max_age: recorded again, or in replay mode served

    def __init__(self, counter: str, label: str, missed: bool):
        self.counter = counter
        self.label = label
        self.missed = missed  # not answered from the file: what debug="miss" prints


@dataclass
class Stats:
    """What happened to requests since `enable_cachy`: a re-run notebook shows only hits."""

    hits: int = 0
    recorded: int = 0
    passed: int = 0
    replay_misses: int = 0
    unrecorded: int = 0  # live answers cachy could not store: a stream cut off, a file not writable
    joined: int = 0  # answered by an identical request's live call, in flight at the same time
    upgraded: int = 0  # hits on the original cachy's entries, stored again in cachy's own format
    expired: int = 0  # entries older than max_age: recorded again, or in replay mode served
    saved_seconds: float = 0.0  # what the hits' live calls took when recorded
    saved_input_tokens: int = 0
    saved_output_tokens: int = 0
    used: set[str] = field(default_factory=set, repr=False)  # slots hit or recorded: what pruning keeps

    def __str__(self) -> str:
        counts = f"{self.hits} hits, {self.recorded} recorded, {self.passed} passed through, {self.replay_misses} replay misses"
        if self.unrecorded:
            counts += f", {self.unrecorded} not recorded"
        if self.joined:
            counts += f", {self.joined} joined"
        if self.upgraded:
            counts += f", {self.upgraded} upgraded from the original's format"
        if self.expired:
            counts += f", {self.expired} expired"
        return f"{counts}; saved {self.savings()}" if self._saved_something() else counts

    def savings(self) -> str:
        """What the hits saved, as people read it: `2 min 13 s and 182k tokens`."""
        minutes, seconds = divmod(round(self.saved_seconds), 60)
        spent = f"{minutes} min {seconds} s" if minutes else f"{self.saved_seconds:.1f} s"
        return f"{spent} and {_short(self.saved_input_tokens + self.saved_output_tokens)} tokens"

    def count(self, outcome: Outcome, slot: str, entry: Entry | None = None) -> None:
        """Count one request's outcome; a hit, a join or a recording marks its slot used, and a hit's `entry` adds
        what its live call cost to what was saved."""
        setattr(self, outcome.counter, getattr(self, outcome.counter) + 1)
        if (
            outcome is Outcome.HIT
            or outcome is Outcome.RECORDED
            or outcome is Outcome.JOINED
            or outcome is Outcome.UPGRADED
        ):
            self.used.add(slot)
        if entry is not None:
            self.saved_seconds = round(self.saved_seconds + entry.seconds, 3)  # no float noise
            self.saved_input_tokens += entry.usage.get("input", 0)
            self.saved_output_tokens += entry.usage.get("output", 0)

    def add(self, other: Stats) -> None:
        """Add another part's counts (a test's, a pytest-xdist worker's) to these."""
        for counter in fields(self):
            if counter.name != "used":
                setattr(self, counter.name, getattr(self, counter.name) + getattr(other, counter.name))
        self.used |= other.used

    def to_dict(self) -> dict:
        """The counts as plain JSON values: how a pytest-xdist worker hands them to the controller."""
        return {counter.name: getattr(self, counter.name) for counter in fields(self)} | {"used": sorted(self.used)}

    @classmethod
    def from_dict(cls, data: dict) -> Stats:
        """The counts `to_dict` gave."""
        return cls(**{**data, "used": set(data["used"])})

    def _repr_html_(self) -> str:
        """How a notebook shows `cachy_stats()`: the counts, and what hits saved, as a small table."""
        counts = {
            "hits": f"{self.hits:,}",
            "recorded": f"{self.recorded:,}",
            "passed through": f"{self.passed:,}",
            "replay misses": f"{self.replay_misses:,}",
        }
        if self.unrecorded:
            counts["not recorded"] = f"{self.unrecorded:,}"
        if self.joined:
            counts["joined"] = f"{self.joined:,}"
        if self.upgraded:
            counts["upgraded"] = f"{self.upgraded:,}"
        if self.expired:
            counts["expired"] = f"{self.expired:,}"
        if self._saved_something():
            counts["time saved"] = f"{self.saved_seconds:.1f} s"
            counts["tokens saved"] = f"{self.saved_input_tokens:,} in, {self.saved_output_tokens:,} out"
        head = "".join(f"<th>{label}</th>" for label in counts)
        row = "".join(f"<td>{count}</td>" for count in counts.values())
        return f"<table><caption>cachy</caption><tr>{head}</tr><tr>{row}</tr></table>"

    def _saved_something(self) -> bool:
        return bool(round(self.saved_seconds, 1) or self.saved_input_tokens or self.saved_output_tokens)


def _short(count: int) -> str:
    """A token count as people read it: `182k` from ten thousand on."""
    return f"{count / 1000:.0f}k" if count >= 10_000 else f"{count:,}"


def usage(body: bytes) -> dict[str, int]:
    """The tokens the provider reported: openai's and anthropic's `usage`, gemini's `usageMetadata`. In a stream
    (server-sent events) the last report of each count wins, as anthropic reports output tokens at the end."""
    if b"sage" not in body:  # usage, usageMetadata: most bodies are rejected without parsing
        return {}
    if body.startswith(b"data:") or b"\ndata:" in body:  # server-sent events, some opening with a comment
        documents = [
            parse_json(line[5:]) for line in body.split(b"\n") if line.startswith(b"data:") and b"sage" in line
        ]
    else:
        document = parse_json(body)
        documents = document if isinstance(document, list) else [document]
    usage: dict[str, int] = {}
    for document in documents:
        if not isinstance(document, dict):
            continue
        nested = [document.get(name) for name in ("message", "response")]
        for report in (
            document.get("usage"),
            document.get("usageMetadata"),
            *(n.get("usage") for n in nested if isinstance(n, dict)),
        ):
            if isinstance(report, dict):
                usage |= _counts(report)
    return usage


_TOKEN_NAMES = {
    "input": ("prompt_tokens", "input_tokens", "promptTokenCount"),
    "output": ("completion_tokens", "output_tokens", "candidatesTokenCount"),
}


def _counts(report: dict) -> dict[str, int]:
    """The input and output token counts in one usage report, under cachy's names."""
    counts = {}
    for count, names in _TOKEN_NAMES.items():
        found = [report[name] for name in names if type(report.get(name)) is int]
        if found:
            counts[count] = found[0]
    return counts
