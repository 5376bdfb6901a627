"""Identical requests in flight at once make one upstream call (cachy/inflight.py): through the real openai
client, httpx, requests and aiohttp, across threads and tasks, plain and streamed; a leader that fails, is
cancelled or leaves its stream unread leaves nobody waiting; repeats and replay are untouched."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import httpx
import httpx2
import openai
import pytest
import requests
import urllib3
from helpers import JSON, SSE, Server, entries, sse

from cachy import cachy_stats, disable_cachy, enable_cachy, inflight

LATENCY = 0.15  # how long the fake provider thinks before it answers


def _text(body: dict) -> str:
    return f"answer to {body['messages'][-1]['content']}"


def _reply(request: httpx.Request, n: int, fails: int = 0):
    """A slow chat completion that answers each prompt with its own text, streamed when asked; call `fails`, a 500."""
    time.sleep(LATENCY)
    if n == fails:
        return 500, JSON, b'{"error": "overloaded"}'
    body = json.loads(request.content)
    if body.get("stream"):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        words = [{**chunk, "choices": [{"index": 0, "delta": {"content": word}}]} for word in _text(body).split(" ")]
        return 200, SSE, sse([(None, event) for event in words] + [(None, "[DONE]")])
    message = {"role": "assistant", "content": _text(body)}
    answer = {"id": "c", "object": "chat.completion", "created": 0, "model": "m"}
    answer["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
    return 200, JSON, json.dumps(answer).encode()


@pytest.fixture
def server():
    with Server(_reply, pause=0.005) as upstream:
        yield upstream


@pytest.fixture
def local(tmp_path):
    """cachy on, caching the fake provider's host."""
    enable_cachy(tmp_path, doms=("127.0.0.1",))
    yield tmp_path
    disable_cachy()


def _body(prompt: str, stream: bool = False) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], **({"stream": True} if stream else {})}


def _replays(folder, run) -> None:
    """`run()` again in replay mode, with the provider gone: every call hits."""
    disable_cachy()
    enable_cachy(folder, doms=("127.0.0.1",), mode="replay")
    run()
    stats = cachy_stats()
    assert (stats.recorded, stats.joined, stats.replay_misses) == (0, 0, 0)
    assert stats.hits > 0


def _openai(server: Server, tasks: int, prompts: int, stream: bool) -> list[tuple[str, str]]:
    """`tasks` chats at once through openai's async client, over `prompts` prompts: (prompt, answer) each."""

    async def chat(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, str]:
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            completion = await client.chat.completions.create(model="m", messages=messages)
            return prompt, completion.choices[0].message.content
        words = [
            chunk.choices[0].delta.content
            async for chunk in await client.chat.completions.create(model="m", messages=messages, stream=True)
        ]
        return prompt, " ".join(words)

    async def main():
        async with openai.AsyncOpenAI(api_key="k", base_url=server.url + "/v1", max_retries=0) as client:
            return await asyncio.gather(*(chat(client, f"prompt {i % prompts}") for i in range(tasks)))

    return asyncio.run(main())


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_200_openai_tasks_over_50_prompts_make_50_calls(server, local, stream):
    answers = _openai(server, 200, 50, stream)
    assert all(answer == f"answer to {prompt}" for prompt, answer in answers)
    assert server.calls == 50
    assert len(entries(local)) == 50
    stats = cachy_stats()
    assert (stats.recorded, stats.joined) == (50, 150)
    server.__exit__()
    _replays(local, lambda: _openai(server, 200, 50, stream))


def _threads(send, count: int, prompts: int) -> list:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(send, [f"prompt {i % prompts}" for i in range(count)]))


@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_64_threads_over_16_prompts_make_16_calls(server, local, library):
    url = server.url + "/v1/chat/completions"
    if library == "httpx":
        client = httpx.Client(timeout=5)
        send = lambda prompt: (prompt, client.post(url, json=_body(prompt)).json())  # noqa: E731
    else:
        send = lambda prompt: (prompt, requests.post(url, json=_body(prompt), timeout=5).json())  # noqa: E731
    answers = _threads(send, 64, 16)
    assert all(answer["choices"][0]["message"]["content"] == f"answer to {prompt}" for prompt, answer in answers)
    assert server.calls == 16
    assert len(entries(local)) == 16
    stats = cachy_stats()
    assert stats.joined + stats.hits == 48  # threads that start after a landing hit
    server.__exit__()
    _replays(local, lambda: _threads(send, 64, 16))


def _aiohttp(server: Server, tasks: int, prompts: int) -> list[tuple[str, dict]]:
    async def main():
        async with aiohttp.ClientSession() as session:

            async def chat(prompt: str):
                async with session.post(server.url + "/v1/chat/completions", json=_body(prompt)) as response:
                    return prompt, await response.json()

            return await asyncio.gather(*(chat(f"prompt {i % prompts}") for i in range(tasks)))

    return asyncio.run(main())


def test_64_aiohttp_tasks_over_16_prompts_make_16_calls(server, local):
    answers = _aiohttp(server, 64, 16)
    assert all(answer["choices"][0]["message"]["content"] == f"answer to {prompt}" for prompt, answer in answers)
    assert server.calls == 16
    assert len(entries(local)) == 16
    assert cachy_stats().joined == 48
    server.__exit__()
    _replays(local, lambda: _aiohttp(server, 64, 16))


def test_a_streamed_request_that_waited_gets_the_whole_recorded_stream(server, local):
    url = server.url + "/v1/chat/completions"

    def stream(prompt: str) -> bytes:
        with httpx2.Client(timeout=5) as client, client.stream("POST", url, json=_body(prompt, True)) as response:
            return b"".join(response.iter_bytes())

    bodies = _threads(stream, 8, 1)
    assert server.calls == 1
    assert len(set(bodies)) == 1
    assert bodies[0] == entries(local)[0]["response"].encode()
    assert bodies[0].endswith(b"data: [DONE]\n\n")


def _async_calls(url: str, count: int, stream: bool = False, first=None):
    """`count` identical calls at once through an httpx AsyncClient; `first(task)` is handed the first task."""

    async def call(client: httpx.AsyncClient):
        request = client.build_request("POST", url, json=_body("same", stream))
        response = await client.send(request, stream=stream)
        await response.aread()
        return response

    async def main():
        async with httpx.AsyncClient(timeout=5) as client:
            tasks = [asyncio.create_task(call(client)) for _ in range(count)]
            if first is not None:
                await first(tasks[0])
            return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(main())


def test_a_cancelled_leader_leaves_the_others_their_answer(server, local):
    async def cancel(task):
        await asyncio.sleep(0.05)
        task.cancel()

    started = time.perf_counter()
    results = _async_calls(server.url + "/v1/chat/completions", 10, first=cancel)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [response.json()["choices"][0]["message"]["content"] for response in results[1:]] == ["answer to same"] * 9
    assert time.perf_counter() - started < 5
    assert server.calls == 2  # the cancelled one, then one of the nine
    assert len(entries(local)) == 1


def test_a_leader_answered_500_hands_nobody_its_failure(tmp_path):
    with Server(lambda request, n: _reply(request, n, fails=1), pause=0.005) as server:
        enable_cachy(tmp_path, doms=("127.0.0.1",))
        started = time.perf_counter()
        results = _async_calls(server.url + "/v1/chat/completions", 10)
        assert time.perf_counter() - started < 5
        assert sorted(response.status_code for response in results) == [200] * 9 + [500]  # the 500 is the leader's
        assert server.calls == 2
    assert [entry["status_code"] for entry in entries(tmp_path)] == [200]
    assert cachy_stats().joined == 8


def test_with_repeats_nothing_is_coalesced(server, tmp_path):
    enable_cachy(tmp_path, doms=("127.0.0.1",), repeats=True)
    _async_calls(server.url + "/v1/chat/completions", 5)
    assert server.calls == 5
    assert cachy_stats().joined == 0


def test_inside_no_cachy_a_request_neither_leads_nor_waits(server, local):
    from cachy import no_cachy

    url = server.url + "/v1/chat/completions"

    def bypassing(prompt: str):
        with no_cachy():
            return httpx.post(url, json=_body(prompt))

    with ThreadPoolExecutor(4) as pool:
        live = [pool.submit(bypassing, "same") for _ in range(3)]
        cached = [pool.submit(lambda: httpx.post(url, json=_body("same")))]
        assert all(future.result().status_code == 200 for future in live + cached)
    assert server.calls == 4
    assert cachy_stats().joined == 0


def test_different_cache_files_never_share_a_call(server, tmp_path):
    from cachy import cachy as cachy_block

    url = server.url + "/v1/chat/completions"

    def call(folder):
        with cachy_block(cache_dir=folder, doms=("127.0.0.1",)):
            return httpx.post(url, json=_body("same")).status_code

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(call, [tmp_path / "a", tmp_path / "b"])) == [200, 200]
    assert server.calls == 2
    assert len(entries(tmp_path / "a")) == len(entries(tmp_path / "b")) == 1


async def _in_flight(server: Server, calls: int) -> None:
    """Until the provider has `calls` calls: the last one is then in flight for LATENCY."""
    while server.calls < calls:
        await asyncio.sleep(0.002)


def test_a_thread_waits_for_a_tasks_flight_and_a_task_for_a_threads(server, local):
    url = server.url + "/v1/chat/completions"
    threads = httpx.Client(timeout=5)  # made beforehand: a client takes a while to make under load

    async def task_leads_thread_waits():
        async with httpx.AsyncClient(timeout=5) as client:
            leader = asyncio.create_task(client.post(url, json=_body("task first")))
            await _in_flight(server, 1)
            waiter = await asyncio.to_thread(threads.post, url, json=_body("task first"))
            return (await leader).json(), waiter.json()

    async def thread_leads_task_waits():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with httpx.AsyncClient(timeout=5) as client:
            leader = asyncio.create_task(asyncio.to_thread(threads.post, url, json=_body("thread first")))
            await _in_flight(server, 2)
            ticker = asyncio.create_task(tick())
            waiter = await client.post(url, json=_body("thread first"))
            ticker.cancel()
            return (await leader).json(), waiter.json(), ticks

    led, waited = asyncio.run(task_leads_thread_waits())
    assert led == waited
    led, waited, ticks = asyncio.run(thread_leads_task_waits())
    assert led == waited and waited["choices"][0]["message"]["content"] == "answer to thread first"
    assert ticks >= 3  # the loop ran on while its task waited
    assert server.calls == 2
    assert cachy_stats().joined == 2
    server.__exit__()
    _replays(local, lambda: (asyncio.run(task_leads_thread_waits()), asyncio.run(thread_leads_task_waits())))


def _streamed(client: httpx.Client, url: str, timeout: float = 5) -> httpx.Response:
    """The same streamed request sent with `stream=True`, as SDKs send it; left unread."""
    return client.send(client.build_request("POST", url, json=_body("same", True), timeout=timeout), stream=True)


def test_a_stream_closed_unread_sends_its_waiters_on_by_themselves(server, local):
    url = server.url + "/v1/chat/completions"
    with httpx.Client(timeout=5) as client:
        unread = _streamed(client, url)
        with ThreadPoolExecutor(3) as pool:
            waiting = [pool.submit(lambda: _streamed(client, url).read()) for _ in range(3)]
            time.sleep(0.05)
            unread.close()
            bodies = [future.result() for future in waiting]
    assert len(set(bodies)) == 1 and bodies[0].endswith(b"data: [DONE]\n\n")
    assert server.calls == 2  # the unread one, then one of the three
    assert [entry["response"].encode() for entry in entries(local)] == bodies[:1]
    assert cachy_stats().joined == 2


def test_a_waiter_gives_up_at_its_clients_timeout_and_goes_live(server, local):
    url = server.url + "/v1/chat/completions"
    with httpx.Client(timeout=5) as client:
        unread = _streamed(client, url)
        started = time.perf_counter()
        with ThreadPoolExecutor(1) as pool:
            waited = pool.submit(lambda: _streamed(client, url, timeout=0.3).read()).result()
        assert 0.3 + LATENCY <= time.perf_counter() - started < 0.3 + 1  # waited 0.3 s, then went live
        assert unread.read() == waited
    assert server.calls == 2


def test_a_waiter_that_gave_up_takes_the_stale_flight_over(tmp_path):
    with Server(lambda request, n: _reply(request, n, fails=2), pause=0.005) as server:
        enable_cachy(tmp_path, doms=("127.0.0.1",))
        url = server.url + "/v1/chat/completions"
        with httpx.Client(timeout=5) as client:
            unread = _streamed(client, url)
            with ThreadPoolExecutor(1) as pool:
                assert pool.submit(_streamed, client, url, 0.3).result().status_code == 500  # led in its place
                started = time.perf_counter()
                assert pool.submit(lambda: _streamed(client, url).read()).result().endswith(b"data: [DONE]\n\n")
            assert time.perf_counter() - started < 1  # no wait for the unread stream: its flight was taken over
            unread.close()
        assert server.calls == 3


def test_a_thread_never_waits_for_its_own_unread_stream(server, local):
    url = server.url + "/v1/chat/completions"
    with httpx.Client(timeout=5) as client:
        first = _streamed(client, url)
        started = time.perf_counter()
        second = _streamed(client, url)
        assert time.perf_counter() - started < 1  # went live at once: only this thread could read the first
        assert first.read() == second.read()
    assert server.calls == 2


def test_joined_requests_are_counted_and_printed(server, tmp_path, capsys):
    enable_cachy(tmp_path, doms=("127.0.0.1",), debug=True)
    _async_calls(server.url + "/v1/chat/completions", 3)
    stats = cachy_stats()
    assert stats.joined == 2
    assert "2 joined" in str(stats)
    assert "<th>joined</th>" in stats._repr_html_()
    assert capsys.readouterr().err.count("cachy joined") == 2


def test_identical_streams_sent_together_then_read_wait_for_each_other_no_longer_than_a_moment(server, local):
    """Observed (review of the coalescing): two identical streamed requests sent together (`asyncio.gather`, or a
    pool of two threads) and read only once both were sent took the whole read timeout: the second waited for the
    first's stream, which its caller read only after the second returned. A waiter now goes on by itself once the
    stream it waits for has stayed unread for `UNREAD_GRACE`."""
    url = server.url + "/v1/chat/completions"

    async def gathered() -> list[bytes]:
        async with httpx.AsyncClient(timeout=5) as client:

            def send():
                request = client.build_request("POST", url, json=_body("same", True))
                return client.send(request, stream=True)

            responses = await asyncio.gather(send(), send())
            return [await response.aread() for response in responses]

    started = time.perf_counter()
    bodies = asyncio.run(gathered())
    with httpx.Client(timeout=5) as client, ThreadPoolExecutor(2) as pool:
        pooled = [response.read() for response in pool.map(lambda _: _streamed(client, url), range(2))]
    assert time.perf_counter() - started < 4 * LATENCY + 2 * inflight.UNREAD_GRACE + 1  # not the 5 s timeout
    assert len({*bodies, *pooled}) == 1 and bodies[0].endswith(b"data: [DONE]\n\n")


def test_a_stream_dropped_after_its_first_chunk_sends_its_waiters_on(server, local):
    """Observed (review of the coalescing): a stream read in part and dropped without being closed (a `break` out
    of an SDK's loop) never landed its flight, and an identical request from another thread waited its whole
    timeout. Dropping it now lands the flight empty, and the waiter goes live."""
    url = server.url + "/v1/chat/completions"
    with httpx.Client(timeout=5) as client:

        def read_one_chunk() -> None:
            for _ in _streamed(client, url).iter_bytes():
                break

        with ThreadPoolExecutor(1) as pool:
            pool.submit(read_one_chunk).result()
            started = time.perf_counter()
            body = pool.submit(lambda: _streamed(client, url).read()).result()
    assert time.perf_counter() - started < LATENCY + 1
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_requests_timeout_with_a_total_is_read_as_its_wait(server, local):
    """Observed (review of the coalescing): `timeout=urllib3.Timeout(total=5)`, which requests documents, raised
    TimeoutStateError out of `send` on every miss: its read_timeout cannot be read before a connection starts it."""
    url = server.url + "/v1/chat/completions"
    response = requests.post(url, json=_body("total"), timeout=urllib3.Timeout(total=5))
    assert response.json()["choices"][0]["message"]["content"] == "answer to total"
