"""Switching cachy on and off: `enable_cachy` (its arguments, enabling twice) and `disable_cachy`, `cachy()`
blocks and `no_cachy()` blocks, as context managers and as decorators of plain, async and generator
functions, in threads and tasks, nested, overlapping or left out of order."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import httpx
import httpx2
import pytest
from helpers import CHAT, ask, counting, engine_in_use, entries, n_of, record

from cachy import CachyMiss, cachy, cachy_stats, disable_cachy, enable_cachy, no_cachy


# --------------------------------------------------------------- enable_cachy and disable_cachy
def test_enable_twice_wraps_once_and_the_last_configuration_wins(tmp_path, upstream):
    original = httpx.Client.__dict__["send"]
    enable_cachy(tmp_path / "a")
    enable_cachy(tmp_path / "b")
    assert httpx.Client.__dict__["send"].__wrapped__ is original
    upstream.client().post(CHAT, json={})
    assert not (tmp_path / "a" / "cachy.jsonl").exists()
    assert len(entries(tmp_path / "b")) == 1


def test_disable_restores_the_exact_originals_and_is_a_no_op_when_off(tmp_path):
    classes = [httpx.Client, httpx.AsyncClient, httpx2.Client, httpx2.AsyncClient]
    originals = [cls.__dict__["send"] for cls in classes]
    disable_cachy()
    enable_cachy(tmp_path)
    assert all(cls.__dict__["send"] is not original for cls, original in zip(classes, originals, strict=True))
    disable_cachy()
    disable_cachy()
    assert [cls.__dict__["send"] for cls in classes] == originals


def test_clients_opened_before_enable_and_subclasses_are_cached(tmp_path, upstream):
    opened_before = upstream.client()

    class Overriding(httpx.Client):
        def send(self, request, **kwargs):
            request.headers["x-sub"] = "1"
            return super().send(request, **kwargs)

    enable_cachy(tmp_path)
    subclassed = Overriding(transport=httpx.MockTransport(upstream))
    for client in (opened_before, subclassed, opened_before, subclassed):
        client.post(CHAT, json={})
    assert upstream.calls == 1


def test_default_cache_dir_is_the_nearest_pyproject_folder(tmp_path, monkeypatch, upstream):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "notebooks" / "deep")
    enable_cachy()
    upstream.client().post(CHAT, json={})
    assert len(entries(tmp_path)) == 1


def test_wrong_arguments_are_clear_errors(tmp_path):
    with pytest.raises(TypeError, match=r"doms=\('api.x.ai',\)"):
        enable_cachy(tmp_path, doms="api.x.ai")
    with pytest.raises(ValueError, match="record, replay, refresh"):
        enable_cachy(tmp_path, mode="playback")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match=r"cache_dir .*file is a file"):
        enable_cachy(tmp_path / "file")
    with pytest.raises(TypeError, match="hdrs takes names as strings"):
        enable_cachy(tmp_path, hdrs=[b"x-goog-upload-url"])


def test_a_relative_cache_dir_stays_put_when_the_working_directory_changes(tmp_path, monkeypatch, upstream):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    enable_cachy(".")
    monkeypatch.chdir(tmp_path / "elsewhere")
    upstream.client().post(CHAT, json={})
    upstream.client().post(CHAT, json={})
    assert upstream.calls == 1
    assert len(entries(tmp_path)) == 1 and not (tmp_path / "elsewhere" / "cachy.jsonl").exists()


# ------------------------------------------------------------------------------- cachy() blocks
def counts_are_zero() -> bool:
    """What `cachy_stats()` says when cachy is off."""
    stats = cachy_stats()
    return (stats.hits, stats.recorded, stats.passed, stats.replay_misses) == (0, 0, 0, 0)


def test_cachy_block_restores_the_previous_configuration(tmp_path, upstream):
    client = upstream.client()
    enable_cachy(tmp_path / "outer")
    with cachy(cache_dir=tmp_path / "inner") as stats:
        client.post(CHAT, json={})
    assert stats.recorded == 1
    client.post(CHAT, json={"outer": 1})
    assert len(entries(tmp_path / "inner")) == 1
    assert len(entries(tmp_path / "outer")) == 1
    disable_cachy()
    with cachy(cache_dir=tmp_path / "inner"):
        pass
    assert engine_in_use() is None
    assert httpx.Client.send is httpx.Client.__dict__["send"] and not hasattr(httpx.Client.send, "__wrapped__")


def test_a_cachy_block_left_in_another_thread_or_out_of_order_restores_what_was_there(tmp_path):
    block = cachy(cache_dir=tmp_path / "a")
    block.__enter__()
    leaving = threading.Thread(target=block.__exit__, args=(None, None, None))
    leaving.start()
    leaving.join()
    assert engine_in_use() is None
    outer, inner = cachy(cache_dir=tmp_path / "outer"), cachy(cache_dir=tmp_path / "inner")
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # out of order: the inner block still holds
    assert engine_in_use().store.path.parent == tmp_path / "inner"
    inner.__exit__(None, None, None)
    assert engine_in_use() is None


def test_nested_cachy_blocks_that_end_out_of_order_restore_what_was_before(tmp_path, upstream):
    record(tmp_path / "outer", upstream, ["outer"])  # answer 1
    record(tmp_path / "inner", upstream, ["inner"])  # answer 2
    outer, inner = (
        cachy(cache_dir=tmp_path / "outer", mode="replay"),
        cachy(cache_dir=tmp_path / "inner", mode="replay"),
    )
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # the outer block ends first: the inner one still holds
    assert ask(upstream, "inner") == 2
    with pytest.raises(CachyMiss):
        ask(upstream, "outer")
    inner.__exit__(None, None, None)
    assert counts_are_zero()
    assert ask(upstream, "inner") == 3
    assert upstream.calls == 3


@pytest.mark.parametrize("before", ["off", "enabled"])
def test_overlapping_cachy_blocks_in_two_tasks_each_answer_from_their_own_folder(tmp_path, upstream, before):
    """The shorter block ends while the longer one is open; the longer one's request, made after that, is
    answered from its own folder; after both, cachy is exactly as it was before them."""
    record(tmp_path / "short", upstream, ["short"])  # answer 1
    record(tmp_path / "long", upstream, ["long"])  # answer 2
    record(tmp_path / "before", upstream, ["before"])  # answer 3
    if before == "enabled":
        enable_cachy(tmp_path / "before", mode="replay")

    async def scenario():
        short_entered, long_entered, short_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        async with upstream.async_client() as client:

            async def post(question):
                return (await client.post(CHAT, json={"q": question})).json()["n"]

            @cachy(cache_dir=tmp_path / "short", mode="replay")
            async def short():
                answer = await post("short")
                short_entered.set()
                await long_entered.wait()
                return answer

            @cachy(cache_dir=tmp_path / "long", mode="replay")
            async def long():
                long_entered.set()
                await short_done.wait()
                return await post("long")

            async def short_then_done():
                answer = await short()
                short_done.set()
                return answer

            short_task = asyncio.create_task(short_then_done())
            await short_entered.wait()
            return await asyncio.gather(short_task, long())

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [1, 2]
    assert upstream.calls == 3
    if before == "off":
        assert counts_are_zero()
        assert ask(upstream, "long") == 4  # untouched: straight to the upstream
        assert len(entries(tmp_path / "long")) == 1
    else:
        assert ask(upstream, "before") == 3
        with pytest.raises(CachyMiss):
            ask(upstream, "long")
        stats = cachy_stats()
        assert (stats.hits, stats.replay_misses) == (1, 1)


# ---------------------------------------------------------------------------- no_cachy() blocks
def test_no_cachy_goes_live_without_reading_or_writing(cache_dir, upstream):
    client = upstream.client()
    client.post(CHAT, json={})
    with no_cachy():
        assert client.post(CHAT, json={}).json()["n"] == 2
        assert client.post(CHAT, json={"new": 1}).json()["n"] == 3
    assert len(entries(cache_dir)) == 1
    assert client.post(CHAT, json={}).json()["n"] == 1


def test_no_cachy_is_scoped_to_its_own_thread_and_task(cache_dir, upstream):
    client = upstream.client()
    client.post(CHAT, json={})  # recorded as answer 1
    inside, entered = threading.Event(), threading.Event()
    answers = {}

    def live():
        with no_cachy():
            entered.set()
            inside.wait(5)
            answers["live"] = client.post(CHAT, json={}).json()["n"]

    thread = threading.Thread(target=live)
    thread.start()
    entered.wait(5)
    answers["cached"] = client.post(CHAT, json={}).json()["n"]  # while the other thread is inside no_cachy
    inside.set()
    thread.join()
    assert answers == {"cached": 1, "live": 2}

    async def both():
        async def bypassed():
            with no_cachy():
                await asyncio.sleep(0.01)
                return (await async_client.post(CHAT, json={})).json()["n"]

        async def cached():
            return (await async_client.post(CHAT, json={})).json()["n"]

        async with upstream.async_client() as async_client:
            return await asyncio.gather(bypassed(), cached())

    assert asyncio.run(both()) == [3, 1]


def test_no_cachy_left_in_another_task_does_not_bypass_forever(tmp_path):
    upstream = counting()
    enable_cachy(tmp_path)
    switch = no_cachy()

    async def main() -> None:
        async def enter():
            switch.__enter__()

        async def leave_then_ask():
            switch.__exit__(None, None, None)
            async with upstream.async_client() as client:
                await client.post(CHAT, json={})

        await asyncio.create_task(enter())
        await asyncio.create_task(leave_then_ask())

    asyncio.run(main())
    assert cachy_stats().recorded == 1


def test_one_no_cachy_instance_can_be_entered_nested_and_caching_resumes_after(cache_dir, upstream):
    assert ask(upstream, 1) == 1
    bypass = no_cachy()

    def nested():
        with bypass:
            with bypass:
                assert ask(upstream, 1) == 2
            assert ask(upstream, 1) == 3  # still inside the outer block
        assert ask(upstream, 1) == 1

    contextvars.copy_context().run(nested)  # a block left open by a failure stays in this context, not the next test's


def test_one_no_cachy_instance_can_be_entered_by_two_threads_at_once(cache_dir, upstream):
    assert ask(upstream, 1) == 1
    bypass = no_cachy()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    answers, errors = {}, []

    def first():
        try:
            with bypass:
                first_in.set()
                second_in.wait(5)
                answers["first inside"] = ask(upstream, 1)
        except BaseException as error:
            errors.append(error)
        finally:
            first_out.set()
        answers["first after"] = ask(upstream, 1)

    def second():
        first_in.wait(5)
        try:
            with bypass:
                second_in.set()
                first_out.wait(5)  # the first thread leaves its block while this one is inside
                answers["second inside"] = ask(upstream, 1)
        except BaseException as error:
            errors.append(error)
        answers["second after"] = ask(upstream, 1)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert answers == {"first inside": 2, "second inside": 3, "first after": 1, "second after": 1}


# ----------------------------------------------------------------------------------- decorators
def test_switches_work_as_decorators_of_plain_and_async_functions(tmp_path, upstream):
    @cachy(cache_dir=tmp_path)
    def cached_call():
        return upstream.client().post(CHAT, json={}).json()["n"]

    @cachy(cache_dir=tmp_path)
    async def cached_async_call():
        async with upstream.async_client() as client:
            return (await client.post(CHAT, json={})).json()["n"]

    @no_cachy()
    async def live_async_call():
        async with upstream.async_client() as client:
            return (await client.post(CHAT, json={})).json()["n"]

    assert [cached_call(), cached_call(), asyncio.run(cached_async_call())] == [1, 1, 1]
    assert engine_in_use() is None
    enable_cachy(tmp_path)
    assert asyncio.run(live_async_call()) == 2


def test_cachy_and_no_cachy_decorate_generators_while_they_run(tmp_path):
    upstream = counting()

    @cachy(cache_dir=tmp_path)
    def cached():
        yield n_of(upstream.client(), {"q": 1})

    @cachy(cache_dir=tmp_path)
    async def cached_async():
        async with upstream.async_client() as client:
            yield (await client.post(CHAT, json={"q": 1})).json()["n"]

    async def drain():
        return [n async for n in cached_async()]

    assert [*cached(), *cached(), *asyncio.run(drain())] == [1, 1, 1]
    enable_cachy(tmp_path)

    @no_cachy()
    def live():
        yield n_of(upstream.client(), {"q": 1})

    assert list(live()) == [2]
