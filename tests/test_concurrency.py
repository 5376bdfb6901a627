"""Real processes and threads writing one cachy.jsonl: nothing lost, nothing garbled; a fork never hangs
its child, and every process shares one lock, wherever its temp folder is."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import httpx
import pytest
from helpers import CHAT, ask, entries

from cachy import CachyWarning, compact_cachy, enable_cachy, request_key

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


# ----------------------------------------------------------------- fork while other threads hit
FORKS = """
import os, select, signal, sys, threading
import httpx
from cachy import enable_cachy

folder, forks = sys.argv[1], int(sys.argv[2])
CHAT = "https://api.openai.com/v1/chat/completions"
calls = []

def upstream(request):
    calls.append(request)
    return httpx.Response(200, json={"n": len(calls), "pad": "x" * 20_000})  # lines longer than a read buffer

enable_cachy(folder)
client = httpx.Client(transport=httpx.MockTransport(upstream))
for n in range(8):
    client.post(CHAT, json={"q": n})
stop = threading.Event()

def hits():
    while not stop.is_set():
        for n in range(8):
            client.post(CHAT, json={"q": n})

threading.Thread(target=hits, daemon=True).start()
for number in range(forks):
    pid = os.fork()
    if pid == 0:  # the child: a hit every tenth time, then leave at once
        code = 0
        try:
            if number % 10 == 0:
                code = 0 if client.post(CHAT, json={"q": 3}).json()["n"] == 4 and len(calls) == 8 else 3
        except BaseException:
            code = 4
        os._exit(code)
    pidfd = os.pidfd_open(pid)
    exited = select.select([pidfd], [], [], 5)[0]
    os.close(pidfd)
    if not exited:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        sys.exit(f"child {number + 1} of {forks} hung after fork")
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        sys.exit(f"child {number + 1} of {forks} exited with {code}")
stop.set()
print("forked", forks)
"""


def run_script(script: str, *args: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `script` in a child python in its own session; on timeout its whole process group is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the script did not finish within {timeout} s: {err[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs os.fork and os.pidfd_open (Linux)")
def test_forking_while_other_threads_hit_never_hangs_the_child(tmp_path):
    """The at-fork hook that runs in the child must not wait for a lock that a parent thread held at fork time."""
    result = run_script(FORKS, str(tmp_path), "200", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["forked", "200"]


# ------------------------------------------------------------------------------------- the lock
APPENDER = """
import sys, httpx
from cachy import enable_cachy
folder, count = sys.argv[1], int(sys.argv[2])
enable_cachy(folder)
client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": 1})))
for n in range(count):
    client.post("https://api.openai.com/v1/chat/completions", json={"n": n})
"""
COMPACTOR = """
import os, sys
from cachy import compact_cachy
folder, stop = sys.argv[1], sys.argv[2]
compact_cachy(folder)
print("compacting", flush=True)
count = 0
while not os.path.exists(stop):
    compact_cachy(folder)
    count += 1
print(count, flush=True)
"""


@pytest.mark.slow
def test_processes_with_different_tmpdirs_share_the_lock(tmp_path):
    """One process appends while another, whose TMPDIR differs, compacts over and over: nothing is lost."""
    folder, stop, count = tmp_path / "cache", tmp_path / "stop", 500
    folder.mkdir()
    env = {}
    for name in ("a", "b"):
        (tmp_path / f"tmp-{name}").mkdir()
        env[name] = {**os.environ, "TMPDIR": str(tmp_path / f"tmp-{name}")}
    compactor = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(COMPACTOR), str(folder), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
        env=env["b"],
    )
    try:
        assert compactor.stdout.readline() == "compacting\n"
        appender = run_script(APPENDER, str(folder), str(count), timeout=120, env=env["a"])
        assert appender.returncode == 0, appender.stderr[-2000:]
    finally:
        stop.touch()
        compactor.wait(timeout=60)
    assert compactor.returncode == 0
    recorded = {entry["key"] for entry in entries(folder)}
    expected = {request_key(httpx.Request("POST", CHAT, json={"n": n})) for n in range(count)}
    assert len(expected - recorded) == 0, f"{len(expected - recorded)} of {count} appended entries were lost"


def test_enabling_and_recording_create_nothing_in_the_temp_folder(tmp_path, upstream, monkeypatch):
    """The lock must not live in a world-writable shared folder, nor depend on TMPDIR."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    enable_cachy(tmp_path / "cache")
    assert [ask(upstream, 1), ask(upstream, 1)] == [1, 1]
    compact_cachy(tmp_path / "cache")
    assert os.listdir(temp) == []
