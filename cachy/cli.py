"""The `cachy` command: look at a cache file before you commit it, compact it, or run the demo."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from . import demo
from .core import _slot, compact_cachy, default_cache_dir, scan_file


class _UserError(Exception):
    """An error the user can fix: printed as one line, exit code 1."""


def _cache_file(path: str | None) -> Path:
    file = Path(path) if path else default_cache_dir() / "cachy.jsonl"
    if file.is_dir():
        file = file / "cachy.jsonl"
    if not file.is_file():
        raise _UserError(f"no cache file at {file}")
    return file


def stats(path: str | None) -> None:
    """Entries, size, duplicates, damaged lines, and where the bytes go, by host and endpoint."""
    file = _cache_file(path)
    keys, damaged, endpoints = Counter(), [], Counter()
    size_by_endpoint = Counter()
    for number, line, entry in scan_file(file):
        if entry is None:
            damaged.append(number)
            continue
        keys[_slot(entry["key"], entry.get("n", 1))] += 1
        url = urlsplit(entry.get("url", ""))
        endpoint = f"{entry.get('method', '?')} {url.netloc}{url.path}"
        endpoints[endpoint] += 1
        size_by_endpoint[endpoint] += len(line)
    duplicates = sorted(key for key, count in keys.items() if count > 1)
    print(f"{file}: {len(keys)} entries, {file.stat().st_size:,} bytes")
    print(f"duplicate keys: {len(duplicates)}{' (' + ', '.join(duplicates) + ')' if duplicates else ''}")
    print(f"damaged lines: {damaged or 'none'}")
    if endpoints:
        print(f"\n{'entries':>8} {'bytes':>12}  endpoint")
        for endpoint, count in endpoints.most_common():
            print(f"{count:>8} {size_by_endpoint[endpoint]:>12,}  {endpoint}")


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _body(entry: dict) -> str:
    """JSON indented, server-sent events one by one, binary summarised."""
    if entry.get("binary"):
        return f"<{len(base64.b64decode(entry['response'])):,} bytes of binary data>"
    if "text/event-stream" not in entry["headers"].get("content-type", ""):
        return _pretty(entry["response"])
    events = [event for event in entry["response"].split("\n\n") if event.strip()]
    return "\n".join(f"--- event {number}\n{event}" for number, event in enumerate(events, 1))


def show(key: str, path: str | None) -> None:
    """One entry, the last one recorded for `key` (a unique prefix of it is enough)."""
    file = _cache_file(path)
    found = {entry["key"]: entry for *_, entry in scan_file(file) if entry and entry["key"].startswith(key)}
    if not found:
        raise _UserError(f"no entry with key {key!r} in {file}")
    if len(found) > 1:
        raise _UserError(f"{key!r} is the start of {len(found)} keys: {', '.join(sorted(found))}")
    entry = found.popitem()[1]
    print(f"key:     {entry['key']}\nrequest: {entry.get('method', '?')} {entry.get('url', '?')}")
    print(f"status:  {entry.get('status_code')}\nheaders: {json.dumps(entry.get('headers', {}))}\n")
    print(_body(entry))


def compact(path: str | None) -> None:
    """Rewrite the file deduplicated, without damaged lines, sorted by key."""
    file = _cache_file(path)
    result = compact_cachy(file)
    print(
        f"{file}: kept {result.kept} entries, dropped {result.duplicates} duplicates, damaged lines dropped: {result.damaged or 'none'}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachy", description="Look after the cachy.jsonl file that caches your LLM calls."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    where = "the cache file or its folder (default: cachy.jsonl next to the nearest pyproject.toml)"
    for name, func in (("stats", stats), ("compact", compact)):
        sub = commands.add_parser(name, help=func.__doc__.splitlines()[0], description=func.__doc__)
        sub.add_argument("path", nargs="?", help=where)
    sub = commands.add_parser("show", help=show.__doc__, description=show.__doc__)
    sub.add_argument("key", help="the entry's key, or a unique start of it")
    sub.add_argument("--file", dest="path", help=where)
    commands.add_parser("demo", help="record and replay calls to a fake provider, offline, and show the timings")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cachy` and `python -m cachy`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            demo.run()
        elif args.command == "show":
            show(args.key, args.path)
        else:
            {"stats": stats, "compact": compact}[args.command](args.path)
    except _UserError as failure:
        print(f"cachy {args.command}: {failure}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cachy show KEY | head`: the reader left, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
