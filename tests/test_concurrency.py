"""Real processes and threads writing one cachy.jsonl: nothing lost, nothing garbled."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from helpers import CHAT

from cachy import CachyWarning, enable_cachy

WRITER = """
import sys, threading, httpx
from cachy import enable_cachy
folder, process, threads, requests, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
enable_cachy(folder)
answer = lambda request: httpx.Response(200, json={"request": request.content.decode(), "pad": "x" * size})
def work(thread):
    client = httpx.Client(transport=httpx.MockTransport(answer))
    for n in range(requests):
        client.post("https://api.openai.com/v1/chat/completions", json={"process": process, "thread": thread, "n": n})
        print(process, thread, n, flush=True)
workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[w.start() for w in workers]
[w.join() for w in workers]
"""


def writer(folder, process: int, threads: int, requests: int, size: int = 1000) -> subprocess.Popen:
    args = [str(folder), str(process), str(threads), str(requests), str(size)]
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), *args], stdout=subprocess.PIPE, text=True)


def request_of(entry: dict) -> dict:
    """The request body that the fake upstream echoed into a recorded entry."""
    return json.loads(json.loads(entry["response"])["request"])


@pytest.mark.slow
def test_eight_processes_of_four_threads_lose_nothing(tmp_path):
    processes = [writer(tmp_path, p, threads=4, requests=25) for p in range(8)]
    assert [process.wait(timeout=120) for process in processes] == [0] * 8
    lines = (tmp_path / "cachy.jsonl").read_text().splitlines()
    assert len(lines) == 8 * 4 * 25
    recorded = {tuple(request_of(json.loads(line)).values()) for line in lines}
    assert recorded == {(p, t, n) for p in range(8) for t in range(4) for n in range(25)}


@pytest.mark.slow
def test_a_writer_killed_mid_recording_leaves_a_file_that_loads(tmp_path):
    """SIGKILL at an arbitrary moment: mid-line or between lines, the file loads and every whole entry replays.
    (That the kill may fall between lines is why test_store pins the cut-off last line on its own.)"""
    process = writer(tmp_path, 0, threads=2, requests=10_000, size=200_000)
    for _ in range(20):  # let it record some entries, then kill it without warning, mid-write or not
        process.stdout.readline()
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    data = (tmp_path / "cachy.jsonl").read_bytes()
    complete = [json.loads(line) for line in data.split(b"\n")[:-1]]  # all but a possibly truncated last line
    assert len(complete) >= 20

    def network(request):
        raise AssertionError(f"replay mode went to the network for {request.content}")

    enable_cachy(tmp_path, mode="replay")
    client = httpx.Client(transport=httpx.MockTransport(network))
    with pytest.warns(CachyWarning, match="damaged") if not data.endswith(b"\n") else contextlib.nullcontext():
        for entry in complete:
            assert client.post(CHAT, json=request_of(entry)).json() == json.loads(entry["response"])
    enable_cachy(tmp_path)
    later = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"after": 1})))
    later.post(CHAT, json={"after": "the kill"})
    assert json.loads((tmp_path / "cachy.jsonl").read_text().splitlines()[-1])["response"] == '{"after":1}'


def record_then_replay(folder, process: int, count: int = 50) -> None:
    """In a forked child: record `count` questions, then check that each replays its own answer."""
    calls = []

    def upstream(request):
        calls.append(request)
        return httpx.Response(200, json={"answer to": json.loads(request.content)})

    client = httpx.Client(transport=httpx.MockTransport(upstream))
    questions = [{"process": process, "n": n} for n in range(count)]
    for question in questions:
        client.post(CHAT, json=question)
    for question in questions:
        assert client.post(CHAT, json=question).json() == {"answer to": question}
    assert len(calls) == count, "a replay went to the upstream"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork exists on POSIX only")
def test_forked_children_keep_their_own_offsets_and_lock(tmp_path):
    enable_cachy(tmp_path)
    record_then_replay(tmp_path, process=-1, count=5)  # the parent's index and descriptors exist before the fork
    fork = multiprocessing.get_context("fork")
    children = [fork.Process(target=record_then_replay, args=(tmp_path, p)) for p in range(4)]
    for child in children:
        child.start()
    record_then_replay(tmp_path, process=99)  # the parent works on while its children do
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0] * 4
    lines = [json.loads(line) for line in (tmp_path / "cachy.jsonl").read_text().splitlines()]
    assert len(lines) == 5 + 4 * 50 + 50
    assert len({line["key"] for line in lines}) == len(lines)
