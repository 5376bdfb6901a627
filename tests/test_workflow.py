"""Workflows around the patch: modes, scoped switches, what cachy reports, and pruning."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import httpx
import pytest
from helpers import CHAT, engine_in_use, entries

from cachy import CachyMiss, cachy, cachy_stats, disable_cachy, enable_cachy, no_cachy, prune_cachy, request_key


# ---------------------------------------------------------------------------------------- modes
def test_replay_miss_is_a_clear_exception_naming_what_to_do(tmp_path, upstream):
    enable_cachy(tmp_path, mode="replay")
    url = "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key=SECRET"
    with pytest.raises(CachyMiss) as miss:
        upstream.client().post(url, json={"q": 1})
    message = str(miss.value)
    assert "POST https://generativelanguage.googleapis.com/v1beta/models/g:generateContent " in message
    assert "SECRET" not in message
    assert str(tmp_path / "cachy.jsonl") in message
    assert "record" in message and "API key" in message
    key = message.split("(key ")[1][:16]
    assert request_key(httpx.Request("POST", url, json={"q": 1})) == key
    assert upstream.calls == 0
    assert cachy_stats().replay_misses == 1


def test_replay_answers_what_record_recorded(tmp_path, upstream):
    enable_cachy(tmp_path)
    recorded = upstream.client().post(CHAT, json={"q": 1}).json()
    enable_cachy(tmp_path, mode="replay")
    assert upstream.client().post(CHAT, json={"q": 1}).json() == recorded
    assert upstream.calls == 1


def test_refresh_goes_live_and_the_new_answer_wins(tmp_path, upstream):
    enable_cachy(tmp_path)
    client = upstream.client()
    assert client.post(CHAT, json={}).json()["n"] == 1
    enable_cachy(tmp_path, mode="refresh")
    assert client.post(CHAT, json={}).json()["n"] == 2
    enable_cachy(tmp_path)
    assert client.post(CHAT, json={}).json()["n"] == 2
    assert upstream.calls == 2


def test_cachy_mode_environment_variable_sets_the_default(tmp_path, monkeypatch, upstream):
    monkeypatch.setenv("CACHY_MODE", "replay")
    enable_cachy(tmp_path)
    with pytest.raises(CachyMiss):
        upstream.client().post(CHAT, json={})
    enable_cachy(tmp_path, mode="record")
    upstream.client().post(CHAT, json={})
    assert upstream.calls == 1


# ------------------------------------------------------------------------------ scoped switches
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


# -------------------------------------------------------------------------------------- pruning
def test_prune_keeps_what_this_run_used(tmp_path, upstream):
    enable_cachy(tmp_path)
    for n in range(3):
        upstream.client().post(CHAT, json={"n": n})
    os.chmod(tmp_path / "cachy.jsonl", 0o640)
    enable_cachy(tmp_path)
    upstream.client().post(CHAT, json={"n": 1})
    upstream.client().post(CHAT, json={"n": 3})
    result = prune_cachy()
    assert (result.kept, result.pruned) == (2, 2)
    assert sorted(json.loads(json.loads(e["response"])["echo"])["n"] for e in entries(tmp_path)) == [1, 3]
    assert (tmp_path / "cachy.jsonl").stat().st_mode & 0o777 == 0o640


def test_prune_refuses_what_would_lose_entries(tmp_path, upstream, monkeypatch):
    with pytest.raises(RuntimeError, match="not enabled"):
        prune_cachy()
    enable_cachy(tmp_path)
    upstream.client().post(CHAT, json={})
    enable_cachy(tmp_path)
    with pytest.raises(RuntimeError, match="no entry was used"):
        prune_cachy()
    upstream.client().post(CHAT, json={})
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    with pytest.raises(RuntimeError, match=r"gw1.*--cachy-prune"):
        prune_cachy()
    assert len(entries(tmp_path)) == 1
