"""What a miss costs against a plain round trip, for the cachy on the path: to compare two checkouts.

Run by hand, not by pytest, once per checkout, alternating, in the same session:
    PYTHONPATH=<checkout> python tests/benchmarks/bench_miss.py
A 2 KB chat over an httpx MockTransport; 40 rounds in which 25 plain round trips and 25 misses (new questions,
recorded) alternate, timed in this thread's CPU time; it prints the medians and the median per-round ratio.
It uses only the public API, so it runs on checkouts from before the modules were split."""

from __future__ import annotations

import statistics
import tempfile
import time

from bench_store import URL, client, conversation, question

import cachy
from cachy import disable_cachy, enable_cachy


def batch(call, start: int) -> float:
    """The median thread CPU time, in microseconds, of 25 calls numbered from `start`."""
    times = []
    for n in range(start, start + 25):
        begun = time.thread_time()
        call(n)
        times.append((time.thread_time() - begun) * 1e6)
    return statistics.median(times)


def main() -> None:
    http, history, folder = client(), conversation(2), tempfile.mkdtemp(prefix="cachy-bench-")
    enable_cachy(folder)
    for n in range(200):
        http.post(URL, json=question(n, history))
    plain, miss = [], []
    for round_ in range(40):
        disable_cachy()
        plain.append(batch(lambda n: http.post(URL, json=question(n, history)), 0))
        enable_cachy(folder)
        miss.append(batch(lambda n: http.post(URL, json=question(10**6 + n, history)), 25 * round_))
    disable_cachy()
    ratio = statistics.median(m / p for m, p in zip(miss, plain, strict=True))
    print(
        f"{cachy.__file__}: plain {statistics.median(plain):.1f} us, miss {statistics.median(miss):.1f} us, "
        f"miss / plain {ratio:.3f}x"
    )


if __name__ == "__main__":
    main()
