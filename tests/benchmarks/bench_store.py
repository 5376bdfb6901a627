"""Hit and miss cost of cachy as the cache file grows, as ratios to a plain httpx round trip.

Run by hand, not by pytest:  python tests/benchmarks/bench_store.py
It uses only the public API over an httpx MockTransport upstream, as a user's code would, so the
same script measures the original (pycachy) when run in a virtual environment that has it instead.
Times are medians over many calls. Plain round trips (the baseline), hits and misses alternate in 40 short
rounds, and each ratio is the median over the rounds of the ratio to the baseline measured in that round.
Calls over a MockTransport are timed in this thread's CPU time, which other work on a shared machine does not
inflate; calls to the local server of `by_transport`, in wall time."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

import cachy
from cachy import disable_cachy, enable_cachy

URL = "https://api.openai.com/v1/chat/completions"
PADDING = "lorem ipsum dolor sit amet " * 36  # makes each response about 1 KB
IS_ORIGINAL = not hasattr(cachy, "compact_cachy")  # pycachy 0.0.22 has no compaction


def question(n: int, history: list[dict] = ()) -> dict:
    return {"model": "bench", "messages": [*history, {"role": "user", "content": f"question {n}"}]}


def conversation(kilobytes: int) -> list[dict]:
    """An earlier chat of about `kilobytes` KB, as a tool loop or a long chat resends with each turn."""
    turn = "a sentence of an earlier turn, with a number or two: 42, 3.14. " * 8  # ~0.5 KB
    return [{"role": ("user", "assistant")[n % 2], "content": f"{n}: {turn}"} for n in range(kilobytes * 2)]


def answer(request: httpx.Request) -> httpx.Response:
    content = json.loads(request.content)["messages"][-1]["content"]
    return httpx.Response(
        200, json={"id": content, "object": "chat.completion", "text": PADDING[: 1000 - len(content)]}
    )


def client() -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(answer))


def timed_us(call, count: int, clock=time.thread_time) -> list[float]:
    """The time of each of `count` calls, in microseconds; `call` gets the call's number. By default the CPU
    time of this thread, which other processes on a shared machine cannot inflate: a MockTransport round trip
    runs wholly in it. A round trip to a server in another thread needs the wall clock (`time.perf_counter`)."""
    times = []
    for n in range(count):
        start = clock()
        call(n)
        times.append((clock() - start) * 1e6)
    return times


class Figures:
    """The calls' times, measured in alternating rounds by `interleaved`."""

    def __init__(self, rounds: list[dict[str, list[float]]]):
        self.rounds = rounds

    def median(self, name: str) -> float:
        """The median time of one kind of call, in microseconds."""
        return statistics.median(time for batch in self.rounds for time in batch[name])

    def ratio(self, name: str, baseline: str = "plain") -> float:
        """The median over rounds of the ratio of `name`'s median to `baseline`'s in the same round."""
        return statistics.median(
            statistics.median(batch[name]) / statistics.median(batch[baseline]) for batch in self.rounds
        )


def interleaved(kinds: dict, rounds: int = 40, clock=time.thread_time) -> Figures:
    """Time each kind of call in short rounds in which all kinds alternate, so that a noisy moment on a shared
    machine weighs on all alike. `kinds` maps a name to (setup, call, count); `call` gets a running number
    across rounds."""
    measured, done = [], dict.fromkeys(kinds, 0)
    for _ in range(rounds):
        batches = {}
        for name, (setup, call, count) in kinds.items():
            setup()
            batches[name] = timed_us(
                lambda n, call=call, offset=done[name]: call(offset + n), max(1, count // rounds), clock
            )
            done[name] += len(batches[name])
        measured.append(batches)
    return Figures(measured)


def rss_mb() -> float:
    """Resident memory now (Linux), else the peak so far."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def fill(http: httpx.Client, start: int, stop: int) -> None:
    """Record questions start..stop-1 through cachy (the miss path, as a user's first run would)."""
    for n in range(start, stop):
        http.post(URL, json=question(n))


def pad_original(folder: Path, count: int) -> None:
    """The original rewrites its whole file on every miss (3,000 misses take minutes), so its larger files are
    padded with well-formed entries of other keys. It keeps its file sorted by response, so the padding's
    responses start with letters on both sides of the recorded ones' "question", to interleave with them."""
    path = folder / "cachy.jsonl"
    existing = path.read_text()
    with path.open("w") as file:
        for n in range(count):
            response = json.dumps(
                {"id": f"{'abcdefghijklmnopqrstuvwxyz'[n % 26]}{n}", "text": PADDING}, separators=(",", ":")
            )
            entry = {"key": f"pad{n:06d}", "response": response, "headers": {}, "status_code": 200, "binary": False}
            file.write(json.dumps(entry) + "\n")
        file.write(existing)


def cold_start(folder: str, hits: int) -> None:
    """In a fresh process: the first request after enable_cachy on a cold file, and the memory it takes."""
    http = client()
    http.post(URL, json=question(0)).raise_for_status()  # warm up httpx itself, uncached
    before = rss_mb()
    start = time.perf_counter()
    enable_cachy(folder)
    http.post(URL, json=question(1))
    first = time.perf_counter() - start
    for n in range(hits):
        http.post(URL, json=question(n % 1000))
    print(json.dumps({"first_request_s": first, "memory_growth_mb": rss_mb() - before}))


def keyed_round_trip(http: httpx.Client, payload: dict, rules: list) -> None:
    """A plain round trip, then the key of its request computed as a miss computes it (the rules, the JSON
    parsed and written again with sorted keys, the digest): the least any miss costs, before it records."""
    from cachy import core

    request = http.post(URL, json=payload).request
    call = core.Call(request.method, str(request.url), request.content, request.headers, False)
    core._key(core._head(call, core.public_url(call.url)), core._normalised(call, rules)[0])


class DictCache:
    """The fastest cache Python allows, the limit under any hit: `Client.send` answers from a dict keyed by the
    request's bytes, with a response built from the bytes held for them by httpx's own constructor, and goes live
    only for bytes it lacks. With `prebuilt`, it hands back one response built once per request instead: faster
    still, but no cache, as every caller gets the same object, with the first caller's request and read state."""

    def __init__(self, prebuilt: bool = False):
        self.prebuilt = prebuilt
        self.answers: dict[bytes, tuple[bytes, httpx.Response]] = {}
        self.original = None

    def on(self) -> None:
        disable_cachy()
        self.original = original = httpx.Client.send
        answers, prebuilt, headers = self.answers, self.prebuilt, {"content-type": "application/json"}

        def send(client: httpx.Client, request: httpx.Request, **kwargs) -> httpx.Response:
            answer = answers.get(request.content)
            if answer is not None:
                body, response = answer
                return response if prebuilt else httpx.Response(200, headers=headers, content=body, request=request)
            response = original(client, request, **kwargs)
            body = response.read()
            answers[request.content] = (body, httpx.Response(200, headers=headers, content=body, request=request))
            return response

        httpx.Client.send = send

    def off(self) -> None:
        if self.original is not None:
            httpx.Client.send, self.original = self.original, None


def by_request_size(http: httpx.Client, kilobytes: list[int], samples: int) -> None:
    """Hit and miss cost as the request body grows, on a cache of 1,000 entries of that size; the limit under
    a hit (a dict of the request's bytes, `DictCache`, and the same handing back prebuilt responses), and the
    floor under a miss: a plain round trip plus the computing of its key."""
    print(f"\n{samples} calls of each kind per request size, on a cache of 1,000 such entries (thread CPU time)")
    print(
        "| request body | plain round trip | dict cache (the limit) | hit | hit / limit | hit / prebuilt "
        "| hit / plain | miss (record) | miss / plain | key only / plain |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in kilobytes:
        folder, history = Path(tempfile.mkdtemp(prefix="cachy-bench-")), conversation(size)
        limits = (DictCache(), DictCache(prebuilt=True))
        for limit in limits:
            limit.on()
            for n in range(1000):
                http.post(URL, json=question(n, history))
            limit.off()
        enable_cachy(folder)
        for n in range(1000):
            http.post(URL, json=question(n, history))
        body = len(json.dumps(question(0, history)).encode()) / 1024
        rules = cachy.core._current_engine().rules

        def only(limit: DictCache | None = None, folder: Path | None = None, limits=limits) -> Callable[[], None]:
            """A setup: `limit` on, or cachy on `folder`, or neither (a plain round trip), and nothing else."""

            def setup() -> None:
                for other in limits:
                    other.off()
                disable_cachy()
                if limit is not None:
                    limit.on()
                if folder is not None:
                    enable_cachy(folder)

            return setup

        def asked(n: int, history: list[dict] = history) -> httpx.Response:
            return http.post(URL, json=question(n % 1000, history))

        figures = interleaved(
            {
                "plain": (only(), asked, samples),
                "limit": (only(limits[0]), asked, samples),
                "prebuilt": (only(limits[1]), asked, samples),
                "hit": (only(folder=folder), asked, samples),
                "miss": (
                    only(folder=folder),
                    lambda n, h=history: http.post(URL, json=question(10**6 + n, h)),
                    samples // 2,
                ),
                "key only": (
                    only(),
                    lambda n, h=history, r=rules: keyed_round_trip(http, question(n % 1000, h), r),
                    samples,
                ),
            }
        )
        only()()
        times = {name: f"{figures.median(name):.0f} us" for name in ("plain", "limit", "hit", "miss")}
        print(
            f"| {body:.0f} KB | {times['plain']} | {times['limit']} | {times['hit']} | {figures.ratio('hit', 'limit'):.2f}x "
            f"| {figures.ratio('hit', 'prebuilt'):.2f}x | {figures.ratio('hit'):.2f}x | {times['miss']} "
            f"| {figures.ratio('miss'):.2f}x | {figures.ratio('key only'):.2f}x |"
        )


class _Provider(BaseHTTPRequestHandler):
    """A fake provider on 127.0.0.1 for the transports that have no mock transport: 1 KB JSON answers."""

    protocol_version = "HTTP/1.1"  # keep-alive, as SDK clients use
    wbufsize = -1  # headers and body in one write: else delayed ACKs add 40 ms to each round trip
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        question = json.loads(self.rfile.read(int(self.headers["content-length"])))
        body = json.dumps({"id": question["messages"][-1]["content"], "text": PADDING[:900]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def by_transport(samples: int) -> None:
    """Hit and miss cost through requests and aiohttp, each against a plain round trip of the same transport
    to a local server, on a cache of 1,000 entries."""
    import aiohttp
    import requests

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    print(f"\n{samples} calls of each kind per transport, to a local server, on a cache of 1,000 entries")
    print("| transport | plain round trip | hit | hit / plain | miss (record) | miss / plain |")
    print("|---|---:|---:|---:|---:|---:|")
    session = requests.Session()
    loop = asyncio.new_event_loop()
    aio = loop.run_until_complete(_aiohttp_session(aiohttp))

    async def aiohttp_post(payload: dict) -> dict:
        async with aio.post(url, json=payload) as response:
            return await response.json()

    transports = {
        "requests": lambda payload: session.post(url, json=payload).json(),
        "aiohttp": lambda payload: loop.run_until_complete(aiohttp_post(payload)),
    }
    for name, post in transports.items():
        folder = Path(tempfile.mkdtemp(prefix="cachy-bench-"))
        enable_cachy(folder, doms=("127.0.0.1",))
        for n in range(1000):
            post(question(n))
        on = lambda f=folder: enable_cachy(f, doms=("127.0.0.1",))  # noqa: E731
        figures = interleaved(
            {
                "plain": (disable_cachy, lambda n, post=post: post(question(n % 1000)), samples),
                "hit": (on, lambda n, post=post: post(question(n % 1000)), samples),
                "miss": (on, lambda n, post=post: post(question(10**6 + n)), samples // 2),
            },
            clock=time.perf_counter,  # the server answers in another thread
        )
        disable_cachy()
        print(f"| {name} | {_row(figures)} |")
    loop.run_until_complete(aio.close())
    server.shutdown()


def _row(figures: Figures) -> str:
    """Plain round trip, hit, hit / plain, miss, miss / plain: a row of the tables by transport and by file size."""
    plain, hit, miss = (figures.median(name) for name in ("plain", "hit", "miss"))
    return f"{plain:.0f} us | {hit:.0f} us | {figures.ratio('hit'):.2f}x | {miss:.0f} us | {figures.ratio('miss'):.2f}x"


async def _aiohttp_session(aiohttp):
    return aiohttp.ClientSession()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="cache sizes to measure at")
    parser.add_argument("--samples", type=int, default=4000, help="calls per median")
    parser.add_argument("--bodies", default="2,50,200", help="request body sizes in KB (empty: skip)")
    parser.add_argument("--transports", action=argparse.BooleanOptionalAction, default=True, help="requests, aiohttp")
    parser.add_argument("--cold", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        return cold_start(args.cold, hits=args.samples)
    if args.bodies and not IS_ORIGINAL:
        by_request_size(client(), [int(size) for size in args.bodies.split(",")], min(args.samples, 1000))
    if args.transports and not IS_ORIGINAL:
        by_transport(min(args.samples, 1000))
    if not args.sizes:
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    http = client()
    name = "pycachy 0.0.22 (the original)" if IS_ORIGINAL else f"cachy {cachy.__version__}"
    print(f"{name}, Python {sys.version.split()[0]}, 1 KB responses, {args.samples} calls of each kind per size")
    print("| entries | plain round trip | hit | hit / plain | miss (record) | miss / plain |")
    print("|---:|---:|---:|---:|---:|---:|")
    folder = Path(tempfile.mkdtemp(prefix="cachy-bench-"))
    entries, asked = 0, 0  # entries in the file; questions asked so far (each new one is a miss)
    for size in sizes:
        enable_cachy(folder)
        if IS_ORIGINAL and entries >= 1000:
            pad_original(folder, size - entries)
        else:
            fill(http, asked, asked + size - entries)
            asked += size - entries
        entries, first_asked = size, asked
        misses = 40 if IS_ORIGINAL else args.samples // 2
        recorded = 1000 if IS_ORIGINAL else size  # the original's larger files are padding beyond its first 1,000

        def spread(n: int, recorded: int = recorded) -> int:
            """Hits all over the file, not only at its start."""
            return n * 7919 % recorded

        figures = interleaved(
            {
                "plain": (disable_cachy, lambda n: http.post(URL, json=question(n)), args.samples),
                "hit": (
                    lambda: enable_cachy(folder),
                    lambda n, spread=spread: http.post(URL, json=question(spread(n))),
                    args.samples,
                ),
                "miss": (
                    lambda: enable_cachy(folder),
                    lambda n, first=first_asked: http.post(URL, json=question(first + n)),
                    misses,
                ),
            }
        )
        asked, entries = asked + misses, entries + misses
        print(f"| {size:,} | {_row(figures)} |")
    disable_cachy()
    cold = subprocess.run(
        [sys.executable, __file__, "--cold", str(folder), "--samples", str(min(args.samples, 1000))],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(cold.stdout.splitlines()[-1])
    size_mb = (folder / "cachy.jsonl").stat().st_size / 2**20
    print(
        f"\ncold file of {entries:,} entries ({size_mb:.0f} MB): first request after enable_cachy "
        f"{figures['first_request_s']:.3f} s; memory growth after it and {min(args.samples, 1000):,} hits {figures['memory_growth_mb']:.1f} MB"
    )
    print(f"(files left in {folder})")


if __name__ == "__main__":
    main()
