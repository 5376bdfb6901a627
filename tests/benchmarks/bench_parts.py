"""Where a miss's time goes, what keying a request costs step by step, and what the `_content` shortcut saves
a hit: the figures behind the notes in tests/benchmarks/README.md. Run by hand:
python tests/benchmarks/bench_parts.py

It reaches into cachy's internals (it times them), so unlike bench_store.py it measures only this cachy."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from collections import defaultdict

from bench_store import URL, client, conversation, interleaved, question

from cachy import core, disable_cachy, enable_cachy, lines

STEPS = {  # what a miss does, in the order it does it
    "keying (key_rules, JSON parsed and written with sorted keys)": (core, "_normalised"),
    "digest of the exact bytes": (core, "_raw_digest"),
    "fingerprint of the fields": (core, "fingerprint"),
    "JSON line": (lines, "entry_line"),
    "locked append": (core.Store, "append"),
}


def miss_steps(kilobytes: int, misses: int) -> None:
    """Median time of each step of a miss, timed around the function that does it, with the whole miss."""
    times: dict[str, list[float]] = defaultdict(list)
    originals = {name: getattr(owner, attribute) for name, (owner, attribute) in STEPS.items()}
    for name, (owner, attribute) in STEPS.items():
        original = originals[name]

        def timed(*args, name=name, original=original, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                times[name].append((time.perf_counter() - start) * 1e6)

        setattr(owner, attribute, timed)
    http, history = client(), conversation(kilobytes)
    enable_cachy(tempfile.mkdtemp(prefix="cachy-bench-"))
    for n in range(misses):
        start = time.perf_counter()
        http.post(URL, json=question(n, history))
        times["the whole miss"].append((time.perf_counter() - start) * 1e6)
    disable_cachy()
    for name, (owner, attribute) in STEPS.items():
        setattr(owner, attribute, originals[name])
    print(f"\nwhere a miss's time goes: a {kilobytes} KB chat, {misses} misses, medians")
    print("| step | time |")
    print("|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.0f} us |")


def keying_steps(kilobytes: list[int], calls: int) -> None:
    """Each step of keying a request body, timed alone, against a plain round trip of the same request: what
    keeps a miss above the plain round trip, whatever else it does."""
    http = client()
    enable_cachy(tempfile.mkdtemp(prefix="cachy-bench-"))
    rules = core._current_engine().rules
    disable_cachy()
    print(f"\nkeying a request, step by step: medians of {calls} calls, and their ratio to the plain round trip")
    print("| request body | plain round trip | key_rules | JSON parse | JSON write, keys sorted | digest |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in kilobytes:
        history = conversation(size)
        body = json.dumps(question(0, history)).encode()
        text = body.decode()
        document = json.loads(text)
        canonical = core._CANONICAL_JSON.encode(document).encode()

        def apply_rules(text: str = text) -> None:
            for pattern, replacement in rules:
                text = pattern.sub(replacement, text)

        steps = {
            "plain": lambda h=history: http.post(URL, json=question(0, h)),
            "rules": apply_rules,
            "parse": lambda text=text: json.loads(text),
            "write": lambda document=document: core._CANONICAL_JSON.encode(document).encode(),
            "digest": lambda canonical=canonical: hashlib.sha256(canonical).hexdigest(),
        }
        medians = {}
        for name, step in steps.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                step()
                times.append((time.perf_counter() - start) * 1e6)
            medians[name] = statistics.median(times)
        plain = medians.pop("plain")
        cells = " | ".join(f"{median:.0f} us ({median / plain:.2f}x)" for median in medians.values())
        print(f"| {len(body) / 1024:.0f} KB | {plain:.0f} us | {cells} |")


def content_shortcut(calls: int) -> None:
    """Hits with the stored bytes handed to the response (`_content`) against hits that call `read()`,
    in the same rounds, each against a plain round trip."""
    http, folder = client(), tempfile.mkdtemp(prefix="cachy-bench-")
    enable_cachy(folder)
    for n in range(300):
        http.post(URL, json=question(n))
    takes_content = core._takes_content

    def with_shortcut() -> None:
        core._takes_content = takes_content
        enable_cachy(folder)

    def with_read() -> None:
        core._takes_content = lambda module: False
        enable_cachy(folder)

    figures = interleaved(
        {
            "plain": (disable_cachy, lambda n: http.post(URL, json=question(n % 300)), calls),
            "hit, stored bytes handed over": (with_shortcut, lambda n: http.post(URL, json=question(n % 300)), calls),
            "hit, read()": (with_read, lambda n: http.post(URL, json=question(n % 300)), calls),
        },
        rounds=20,
    )
    core._takes_content = takes_content
    disable_cachy()
    print(f"\nthe `_content` shortcut: 1 KB answers, {calls} calls of each kind")
    print("| kind | time | / plain |")
    print("|---|---:|---:|")
    for name in ("plain", "hit, stored bytes handed over", "hit, read()"):
        print(f"| {name} | {figures.median(name):.0f} us | {figures.ratio(name):.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kilobytes", type=int, default=50, help="size of the chat whose misses are timed")
    parser.add_argument("--samples", type=int, default=1000, help="misses timed; calls per kind of hit")
    args = parser.parse_args()
    miss_steps(args.kilobytes, args.samples)
    keying_steps([2, 50, 200], args.samples)
    content_shortcut(2 * args.samples)


if __name__ == "__main__":
    main()
