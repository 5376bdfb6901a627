"""The `cachy` command: look at a cache file before you commit it, compact it, or run the demo."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from . import demo, expiry
from .core import KEY_VERSION, compact_cachy, default_cache_dir, scan_file
from .lines import ORIGINAL_KEY, entry_of, key_field, slot
from .stats import Stats


class _UserError(Exception):
    """An error the user can fix: printed as one line, exit code 1."""


def _existing_cache_file(path: str | None) -> Path:
    file = Path(path) if path else default_cache_dir() / "cachy.jsonl"
    if file.is_dir():
        file = file / "cachy.jsonl"
    if not file.is_file():
        raise _UserError(f"no cache file at {file}")
    return file


def stats(path: str | None) -> None:
    """Entries, size, duplicates, damaged lines, key versions, when they were recorded, what a replay of them
    all saves, and where the bytes go, by host and endpoint."""
    file = _existing_cache_file(path)
    keys: Counter[str] = Counter()  # entries per key, to count duplicates
    versions: Counter[int] = Counter()
    damaged: list[int] = []
    endpoints: Counter[str] = Counter()
    size_by_endpoint: Counter[str] = Counter()
    dates: list[str] = []
    ages: Counter[str] = Counter()
    origins: dict[str, Counter[str]] = {"client": Counter(), "model": Counter()}  # entries by client, by model
    now = time.time()
    saved = Stats()  # what a replay of every entry saves
    originals: set[str] = set()  # keys of the original cachy's entries
    upgraded: set[str] = set()  # the original's keys that entries of this cachy's were upgraded from
    for number, line, entry in scan_file(file):
        if entry is None:
            damaged.append(number)
            continue
        keys[slot(entry["key"], entry.get("n", 1))] += 1
        if "v" not in entry and ORIGINAL_KEY.fullmatch(entry["key"]):
            originals.add(entry["key"])
        else:
            versions[entry.get("v", 1)] += 1
            upgraded.add(entry.get("from"))
        dates += [entry["recorded_at"]] if isinstance(entry.get("recorded_at"), str) else []
        ages[expiry.bucket(expiry.age_of(entry.get("recorded_at"), now))] += 1
        for name, counts in origins.items():
            counts[entry[name] if isinstance(entry.get(name), str) else "(not recorded)"] += 1
        replayed = entry_of(entry)  # what a hit reads: fields written before, or null, count nothing
        saved.saved_seconds += replayed.seconds
        saved.saved_input_tokens += replayed.usage.get("input", 0)
        saved.saved_output_tokens += replayed.usage.get("output", 0)
        url = urlsplit(entry.get("url", ""))
        endpoint = f"{entry.get('method', '?')} {url.netloc}{url.path}"
        endpoints[endpoint] += 1
        size_by_endpoint[endpoint] += len(line)
    duplicates = sorted(key for key, count in keys.items() if count > 1)
    print(f"{file}: {len(keys)} entries, {file.stat().st_size:,} bytes")
    print(f"duplicate keys: {len(duplicates)}{' (' + ', '.join(duplicates) + ')' if duplicates else ''}")
    print(f"damaged lines: {damaged or 'none'}")
    by_version = ", ".join(f"{count} by version {version}" for version, count in sorted(versions.items()))
    stale = " (stale: cachy compact --drop-stale drops them)" if set(versions) - {KEY_VERSION} else ""
    print(f"key versions: {by_version or 'none'}; this cachy writes version {KEY_VERSION}{stale}")
    if originals:
        done = len(originals & upgraded)
        print(
            f"the original cachy's entries: {len(originals)}, {done} upgraded to this cachy's format"
            + (" (cachy compact --drop-stale drops the upgraded ones)" if done else " (record mode upgrades them)")
        )
    print(f"recorded: {f'{min(dates)} to {max(dates)}' if dates else 'no dates (written before cachy kept them)'}")
    groups = [*(name for _, name in expiry.BUCKETS), "older", "no recording time"]
    print(f"ages: {', '.join(f'{ages[name]} {name}' for name in groups if ages[name]) or 'none'}")
    print(f"a replay of every entry saves {saved.savings()}")
    if endpoints:
        print(f"\n{'entries':>8} {'bytes':>12}  endpoint")
        for endpoint, count in endpoints.most_common():
            print(f"{count:>8} {size_by_endpoint[endpoint]:>12,}  {endpoint}")
    for name, counts in origins.items():
        if set(counts) - {"(not recorded)"}:  # files written before provenance say nothing new
            print(f"\n{'entries':>8}  {name}")
            for origin, count in counts.most_common():
                print(f"{count:>8}  {origin}")


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _body(entry: dict) -> str:
    """JSON indented, server-sent events one by one, binary summarised."""
    if entry.get("binary"):
        return f"<{len(base64.b64decode(entry['response'])):,} bytes of binary data>"
    if "text/event-stream" not in (entry.get("headers") or {}).get("content-type", ""):  # the original kept none
        return _pretty(entry["response"])
    events = [event for event in entry["response"].split("\n\n") if event.strip()]
    return "\n".join(f"--- event {number}\n{event}" for number, event in enumerate(events, 1))


def show(key: str, path: str | None) -> None:
    """One entry, the last one recorded for `key` (a unique prefix of it is enough)."""
    file = _existing_cache_file(path)
    found, damaged = {}, []
    for number, line, entry in scan_file(file):
        if entry and entry["key"].startswith(key):
            found[entry["key"]] = entry
        elif entry is None and key_field(key) in line:
            damaged.append(number)
    if not found:
        damage = (
            f"; line {', '.join(map(str, damaged))} has that key but is damaged, so cachy skips it" if damaged else ""
        )
        raise _UserError(f"no entry with key {key!r} in {file}{damage}")
    if len(found) > 1:
        raise _UserError(f"{key!r} is the start of {len(found)} keys: {', '.join(sorted(found))}")
    entry = found.popitem()[1]
    print(f"key:     {entry['key']}\nrequest: {entry.get('method', '?')} {entry.get('url', '?')}")
    print(f"status:  {entry.get('status_code')}\nheaders: {json.dumps(entry.get('headers', {}))}")
    print(f"version: {entry.get('v', 1)}, occurrence {entry.get('n', 1)}")
    if "recorded_at" in entry:
        print(
            f"recorded {entry['recorded_at']}, took {entry.get('seconds', 0)} s, usage {json.dumps(entry.get('usage', {}))}"
        )
    if isinstance(entry.get("shape"), str):
        print(f"fingerprint of {entry['shape'].partition(':')[0]} request fields (to explain misses)")
    print()
    print(_body(entry))


def compact(path: str | None, drop_stale: bool = False, older_than: str | None = None) -> None:
    """Rewrite the file deduplicated, without damaged lines, sorted by key."""
    file = _existing_cache_file(path)
    try:
        result = compact_cachy(file, drop_stale=drop_stale, older_than=older_than)
    except ValueError as refusal:
        raise _UserError(str(refusal)) from None
    stale = f", dropped {result.stale} entries of other key versions" if drop_stale else ""
    if older_than:
        stale += f", dropped {result.expired} entries older than {older_than}"
        stale += f" (kept {result.undated} with no recording time)" if result.undated else ""
    print(
        f"{file}: kept {result.kept} entries, dropped {result.duplicates} duplicates{stale}, damaged lines dropped: {result.damaged or 'none'}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachy", description="Look after the cachy.jsonl file that caches your LLM calls."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    where = "the cache file or its folder (default: cachy.jsonl next to the nearest pyproject.toml)"
    sub = commands.add_parser("stats", help=stats.__doc__.splitlines()[0], description=stats.__doc__)
    sub.add_argument("path", nargs="?", help=where)
    sub.set_defaults(run=lambda args: stats(args.path))
    sub = commands.add_parser("show", help=show.__doc__, description=show.__doc__)
    sub.add_argument("key", help="the entry's key, or a unique start of it")
    sub.add_argument("--file", dest="path", help=where)
    sub.set_defaults(run=lambda args: show(args.key, args.path))
    sub = commands.add_parser("compact", help=compact.__doc__, description=compact.__doc__)
    sub.add_argument("path", nargs="?", help=where)
    sub.add_argument(
        "--drop-stale",
        action="store_true",
        help="also drop entries written by another key version, and the original cachy's entries once upgraded",
    )
    sub.add_argument(
        "--older-than", metavar="AGE", help='also drop entries recorded longer ago than AGE: "30d", "12h", "90m"'
    )
    sub.set_defaults(run=lambda args: compact(args.path, args.drop_stale, args.older_than))
    sub = commands.add_parser("demo", help="record and replay calls to a fake provider, offline, and show the timings")
    sub.set_defaults(run=lambda args: demo.run())
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cachy` and `python -m cachy`."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except _UserError as failure:
        print(f"cachy {args.command}: {failure}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cachy show KEY | head`: the reader left, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
