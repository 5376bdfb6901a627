"""The modes: record (the default) answers hits and records misses, replay answers hits and makes a miss a
clear CachyMiss, refresh goes live and records over; CACHY_MODE sets the default."""

from __future__ import annotations

import httpx
import pytest
from helpers import CHAT

from cachy import CachyMiss, cachy_stats, enable_cachy, request_key


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


def test_an_unknown_cachy_mode_names_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHY_MODE", "replya")
    with pytest.raises(ValueError, match=r"'replya' \(from CACHY_MODE\): use one of record, replay, refresh"):
        enable_cachy(tmp_path)
