"""Compaction: which lines a rewrite of the cache file keeps, and what it tells of the others.

A file that is only ever appended to works as it is; compacting it (`cachy compact`, `compact_cachy`,
`prune_cachy`, `--cachy-prune`) keeps it small and its diffs stable. Choosing the lines is pure, the scanned
lines in, the lines to write and the counts out, so it lives here; the store does the file's part: the lock,
the temporary file and the atomic rename."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import expiry, lines, original


@dataclass
class Rewrite:
    """What `compact_cachy` or `prune_cachy` did to the file."""

    kept: int
    duplicates: int
    damaged: list[int]
    pruned: int = 0
    stale: int = 0
    expired: int = 0  # dropped as older than `older_than`
    undated: int = 0  # kept with `older_than`, as they have no recording time


def chosen(
    scanned: Iterable[tuple[int, bytes, lines.Head | None]],
    version: int,
    keep: set[str] | None,
    drop_stale: bool,
    older_than: float,
    path: Path,
) -> tuple[list[bytes], Rewrite]:
    """The lines to write, sorted by key, and what was dropped: the last entry per key and occurrence, damaged
    lines dropped; with `keep`, only its slots; with `drop_stale`, no entry of a key version but `version`, nor an
    entry of the original's that was upgraded; with `older_than` seconds, no entry recorded longer ago. Refuses
    (ValueError) a file most of whose lines are not entries: it is no cache file, and `path` names it."""
    latest = {}  # the last line of each slot
    damaged = []
    text_lines = 0  # damaged lines that hold text: many of them, and this is no cache file
    stale = 0
    count = 0
    upgraded = set()  # the original's keys that cachy's entries were upgraded from
    for number, line, head in scanned:
        if head is None:
            damaged.append(number)
            text_lines += bool(line.strip())
        elif drop_stale and head.version != version and not lines.ORIGINAL_KEY.fullmatch(head.key):
            stale += 1
        else:
            count += 1
            latest[(head.key, head.n)] = line
            upgraded.add(original.upgraded_from(line))
    if drop_stale:  # the original's entries are stale once upgraded; the others still serve
        dropped = [key for key in upgraded if latest.pop((key, 1), None) is not None]
        stale += len(dropped)
        count -= len(dropped)
    if text_lines > count + stale:
        raise ValueError(f"{path} is not a cachy file: most of its lines are not entries. Left unchanged.")
    wanted = [slot for slot in latest if keep is None or lines.slot(*slot) in keep]
    aged, undated = expiry.older_than({slot: latest[slot] for slot in wanted}, older_than)
    kept = sorted(slot for slot in wanted if slot not in aged)
    result = Rewrite(len(kept), count - len(latest), damaged, len(latest) - len(wanted), stale, len(aged), undated)
    return [latest[slot] for slot in kept], result
