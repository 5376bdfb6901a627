"""What cachy counts and reports (cachy/stats.py): hits, recordings, pass-throughs and replay misses in Stats and
debug lines; what an entry records of its call (when, how long, the tokens the provider reported) and so
what a hit saves, in `cachy_stats()` and `cachy stats`, also for entries that lack or garble those fields."""

from __future__ import annotations

import datetime
import json
import re
import time

import anthropic
import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import types
from helpers import (
    CHAT,
    JSON,
    SSE,
    Upstream,
    answer_to,
    anthropic_answer,
    as_a_new_process,
    counting,
    entries,
    n_of,
    numbered,
    old_line,
    openai_reply,
    sse,
)

from cachy import CachyWarning, cachy_stats, disable_cachy, enable_cachy, request_key
from cachy.cli import main


# ------------------------------------------------------------------ what is counted and printed
def test_stats_count_this_configuration(tmp_path, upstream):
    client = upstream.client()
    enable_cachy(tmp_path)
    client.post(CHAT, json={})
    enable_cachy(tmp_path)
    for _ in range(3):
        client.post(CHAT, json={})
    client.get("https://example.com/")
    stats = cachy_stats()
    assert (stats.hits, stats.recorded, stats.passed, stats.replay_misses) == (3, 0, 1, 0)
    assert str(stats) == "3 hits, 0 recorded, 1 passed through, 0 replay misses"
    disable_cachy()
    assert cachy_stats().hits == 0


def test_debug_prints_one_line_per_request_and_nothing_unless_asked(tmp_path, upstream, capsys):
    client = upstream.client()
    enable_cachy(tmp_path)
    client.post(CHAT, json={})
    assert capsys.readouterr() == ("", "")
    enable_cachy(tmp_path, debug=True)
    client.post(CHAT, json={})
    client.post(CHAT, json={"new": 1})
    client.get("https://example.com/")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["hit", "recorded", "passed"]
    assert all(CHAT in line for line in lines[:2]) and "https://example.com/" in lines[2]
    assert lines[0].split()[2] == entries(tmp_path)[0]["key"]


# -------------------------------------------------- what an entry records, and what a hit saves
def slow(reply):
    """The reply after 50 ms, as a provider takes its time."""

    def answer(request, n):
        time.sleep(0.05)
        return reply(request, n)

    return answer


def anthropic_reply(request, n):
    return anthropic_answer(json.loads(request.content), n, f"claude {n}", tokens=(13, 9))


def gemini_reply(request, n):
    candidate = {"content": {"role": "model", "parts": [{"text": f"gemini {n}"}]}, "finishReason": "STOP"}
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9}
    if "streamGenerateContent" in request.url.path:
        first = {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}}
        return 200, SSE, sse([(None, first), (None, {"candidates": [candidate], "usageMetadata": usage})])
    return 200, JSON, json.dumps({"candidates": [candidate], "usageMetadata": usage}).encode()


def openai_client(upstream):
    return openai.OpenAI(api_key="k", http_client=upstream.client(httpx2))


def anthropic_client(upstream):
    return anthropic.Anthropic(api_key="k", http_client=upstream.client(httpx2))


def gemini_client(upstream):
    return genai.Client(api_key="k", http_options=types.HttpOptions(httpx_client=upstream.client(httpx2)))


def chat_stream(client):
    stream = client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def responses_stream(client):
    with client.responses.stream(model="gpt-x", input="hi") as stream:
        return stream.get_final_response().output_text


def anthropic_stream(client):
    with client.messages.stream(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
        return "".join(s.text_stream)


SCENARIOS = {  # reply, client, call, (input tokens, output tokens) the provider reported
    "openai chat": (
        openai_reply,
        openai_client,
        lambda c: (
            c.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
            .choices[0]
            .message.content
        ),
        (11, 7),
    ),
    "openai chat stream": (openai_reply, openai_client, chat_stream, (11, 7)),
    "openai responses": (
        openai_reply,
        openai_client,
        lambda c: c.responses.create(model="gpt-x", input="hi").output_text,
        (21, 8),
    ),
    "openai responses stream": (openai_reply, openai_client, responses_stream, (21, 8)),
    "anthropic": (
        anthropic_reply,
        anthropic_client,
        lambda c: (
            c.messages.create(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
            .content[0]
            .text
        ),
        (13, 9),
    ),
    "anthropic stream": (anthropic_reply, anthropic_client, anthropic_stream, (13, 9)),
    "gemini": (
        gemini_reply,
        gemini_client,
        lambda c: c.models.generate_content(model="gemini-x", contents="hi").text,
        (5, 4),
    ),
    "gemini stream": (
        gemini_reply,
        gemini_client,
        lambda c: "".join(chunk.text for chunk in c.models.generate_content_stream(model="gemini-x", contents="hi")),
        (5, 4),
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_an_entry_records_when_how_long_and_the_tokens_reported(tmp_path, scenario):
    reply, make_client, call, (input_tokens, output_tokens) = SCENARIOS[scenario]
    enable_cachy(tmp_path)
    call(make_client(Upstream(slow(reply))))
    [entry] = entries(tmp_path)
    recorded_at = datetime.datetime.fromisoformat(entry["recorded_at"])
    assert entry["recorded_at"].endswith("+00:00") and recorded_at.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - recorded_at) < datetime.timedelta(minutes=1)
    assert 0.05 <= entry["seconds"] < 5
    assert entry["usage"] == {"input": input_tokens, "output": output_tokens}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_hits_through_the_sdks_report_what_they_saved(tmp_path, scenario):
    reply, make_client, call, (input_tokens, output_tokens) = SCENARIOS[scenario]
    upstream = Upstream(slow(reply))
    client = make_client(upstream)
    enable_cachy(tmp_path)
    answer = call(client)
    assert cachy_stats().saved_seconds == 0
    enable_cachy(tmp_path, mode="replay")
    assert [call(client) for _ in range(2)] == [answer, answer]
    stats = cachy_stats()
    assert (stats.hits, upstream.calls) == (2, 1)
    assert stats.saved_seconds == pytest.approx(2 * entries(tmp_path)[0]["seconds"]) and stats.saved_seconds >= 0.1
    assert (stats.saved_input_tokens, stats.saved_output_tokens) == (2 * input_tokens, 2 * output_tokens)
    assert f"saved {stats.saved_seconds:.1f} s and {2 * (input_tokens + output_tokens)} tokens" in str(stats)


def test_a_stream_that_opens_with_an_sse_comment_reports_its_usage(tmp_path):
    """OpenRouter (one of `doms`) starts its streams with `: OPENROUTER PROCESSING`, an SSE comment."""
    usage = {"prompt_tokens": 11, "completion_tokens": 7}
    body = [b": OPENROUTER PROCESSING\n\n", *sse([(None, {"choices": [], "usage": usage}), (None, "[DONE]")])]
    upstream = Upstream(lambda request, n: (200, SSE, body))
    enable_cachy(tmp_path)
    with upstream.client().stream("POST", "https://openrouter.ai/api/v1/chat/completions", json={}) as response:
        response.read()
    assert entries(tmp_path)[0]["usage"] == {"input": 11, "output": 7}


# ------------------------------------------------------- old, missing or garbled savings fields
def test_cachy_stats_shows_the_recording_dates_and_what_a_replay_saves(tmp_path, capsys):
    enable_cachy(tmp_path)
    client = Upstream(slow(openai_reply)).client()
    for question in ("one", "two"):
        client.post(CHAT, json={"model": "gpt-x", "messages": [{"role": "user", "content": question}]})
    disable_cachy()
    lines = (tmp_path / "cachy.jsonl").read_text().splitlines()
    seconds = sum(json.loads(line)["seconds"] for line in lines)
    dates = iter(["2025-03-04T05:06:07+00:00", "2024-01-02T03:04:05+00:00"])
    lines = [re.sub(r'"recorded_at": "[^"]*"', f'"recorded_at": "{next(dates)}"', line) for line in lines]
    old = old_line(request_key(httpx.Request("POST", CHAT, json={"q": "old"})), 0)
    (tmp_path / "cachy.jsonl").write_text("\n".join([*lines, old]) + "\n")
    assert main(["stats", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2024-01-02T03:04:05+00:00 to 2025-03-04T05:06:07+00:00" in out
    assert f"a replay of every entry saves {seconds:.1f} s and 36 tokens" in out  # the old entry's usage is not counted


def test_entries_recorded_before_count_no_savings_and_break_nothing(tmp_path, capsys):
    key = request_key(httpx.Request("POST", CHAT, json={"q": "old"}))
    (tmp_path / "cachy.jsonl").write_text(old_line(key, 7) + "\n")
    enable_cachy(tmp_path, mode="replay")
    with pytest.warns(CachyWarning, match="1 by key version 1"):
        assert answer_to(Upstream(numbered).client(), {"q": "old"}) == 7
    stats = cachy_stats()
    assert (stats.hits, stats.saved_seconds, stats.saved_input_tokens, stats.saved_output_tokens) == (1, 0, 0, 0)
    assert str(stats) == "1 hits, 0 recorded, 0 passed through, 0 replay misses"
    assert main(["stats", str(tmp_path)]) == 0
    assert "saves 0.0 s and 0 tokens" in capsys.readouterr().out
    assert main(["show", key, "--file", str(tmp_path)]) == 0
    assert '"answer": 7' in capsys.readouterr().out


def test_savings_fields_that_are_null_count_nothing_and_break_nothing(tmp_path, capsys):
    """A hit already reads such a line as "no savings known"; `cachy stats` must read it the same way."""
    enable_cachy(tmp_path)
    answer_to(Upstream(numbered).client(), {"q": 1})
    disable_cachy()
    entry = {**entries(tmp_path)[0], "recorded_at": None, "seconds": None, "usage": None}
    (tmp_path / "cachy.jsonl").write_text(json.dumps(entry) + "\n")
    as_a_new_process()
    enable_cachy(tmp_path, mode="replay")
    assert answer_to(Upstream(numbered).client(), {"q": 1}) == 1
    assert (cachy_stats().hits, cachy_stats().saved_seconds) == (1, 0)
    assert main(["stats", str(tmp_path)]) == 0
    assert "saves 0.0 s and 0 tokens" in capsys.readouterr().out


def test_a_saved_time_that_is_no_number_counts_nothing(tmp_path, capsys):
    upstream = counting()
    enable_cachy(tmp_path)
    n_of(upstream.client(), {"q": 1})
    (tmp_path / "cachy.jsonl").write_text(  # whatever the call took: 0.0 s, or 0.001 s on a busy machine
        re.sub(r'"seconds": [0-9.]+', '"seconds": NaN', (tmp_path / "cachy.jsonl").read_text())
    )
    enable_cachy(tmp_path)
    assert n_of(upstream.client(), {"q": 1}) == 1
    assert "1 hits" in str(cachy_stats())
    assert main(["stats", str(tmp_path)]) == 0
