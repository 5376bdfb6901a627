"""Issue 10: misses that explain themselves, repeated identical requests, and what the cache saves."""

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
    entries,
    git,
    numbered,
    old_line,
    openai_reply,
    sse,
)

from cachy import CachyMiss, CachyWarning, cachy, cachy_stats, compact_cachy, disable_cachy, enable_cachy, request_key
from cachy.cli import main

pytest_plugins = ["pytester"]


# ------------------------------------------------------------------------------------- repeats
def test_repeats_give_the_nth_identical_request_the_nth_answer(tmp_path):
    upstream = Upstream(numbered)
    enable_cachy(tmp_path, repeats=True)
    assert [answer_to(upstream.client(), {"q": "sample"}) for _ in range(3)] == [1, 2, 3]
    enable_cachy(tmp_path, repeats=True)  # a re-run
    assert [answer_to(upstream.client(), {"q": "sample"}) for _ in range(4)] == [1, 2, 3, 4]
    assert upstream.calls == 4  # the 4th ran out of recorded answers and was recorded
    assert [entry["n"] for entry in entries(tmp_path)] == [1, 2, 3, 4]


def test_without_repeats_identical_requests_get_the_same_answer(tmp_path):
    """Also from a file that holds several occurrences: the first answers every time."""
    upstream = Upstream(numbered)
    enable_cachy(tmp_path / "plain")
    assert [answer_to(upstream.client(), {"q": "sample"}) for _ in range(3)] == [1, 1, 1]
    enable_cachy(tmp_path / "sampled", repeats=True)
    [answer_to(upstream.client(), {"q": "sample"}) for _ in range(3)]
    enable_cachy(tmp_path / "sampled")
    assert [answer_to(upstream.client(), {"q": "sample"}) for _ in range(3)] == [2, 2, 2]
    assert upstream.calls == 4


def test_repeats_in_replay_name_the_occurrence_that_ran_out(tmp_path):
    upstream = Upstream(numbered)
    with cachy(cache_dir=tmp_path, repeats=True):
        [answer_to(upstream.client(), {"q": "sample"}) for _ in range(3)]
    with cachy(cache_dir=tmp_path, repeats=True, mode="replay"):
        assert [answer_to(upstream.client(), {"q": "sample"}) for _ in range(3)] == [1, 2, 3]
        with pytest.raises(CachyMiss) as miss:
            answer_to(upstream.client(), {"q": "sample"})
    assert "occurrence 4" in str(miss.value)
    assert "recorded 3 times" in str(miss.value)
    assert upstream.calls == 3


def test_repeats_count_requests_that_differ_only_in_noise_as_identical(tmp_path):
    """Identical means identical for the key: two samples whose bodies differ only in what `key_rules`
    ignores (a per-call prompt_cache_key, a memory address) are the 1st and 2nd occurrence of one request."""
    upstream = Upstream(numbered)
    enable_cachy(tmp_path, repeats=True)
    first = answer_to(upstream.client(), {"q": "sample", "prompt_cache_key": "call-1"})
    second = answer_to(upstream.client(), {"q": "sample", "prompt_cache_key": "call-2"})
    assert (first, second) == (1, 2)
    assert [entry["n"] for entry in entries(tmp_path)] == [1, 2]


def test_compaction_keeps_every_occurrence_in_order_and_the_last_duplicate_wins(tmp_path):
    upstream = Upstream(numbered)
    enable_cachy(tmp_path, repeats=True)
    [answer_to(upstream.client(), {"q": "sample"}) for _ in range(3)]
    enable_cachy(tmp_path, repeats=True, mode="refresh")
    [answer_to(upstream.client(), {"q": "sample"}) for _ in range(2)]  # occurrences 1 and 2 again: answers 4 and 5
    disable_cachy()
    result = compact_cachy(tmp_path)
    assert (result.kept, result.duplicates) == (3, 2)
    assert [(entry["n"], json.loads(entry["response"])["answer"]) for entry in entries(tmp_path)] == [
        (1, 4),
        (2, 5),
        (3, 3),
    ]
    enable_cachy(tmp_path, repeats=True, mode="replay")
    assert [answer_to(upstream.client(), {"q": "sample"}) for _ in range(3)] == [4, 5, 3]


def test_a_union_merge_of_two_branches_of_repeats_replays_a_complete_sequence(tmp_path):
    """Branch A recorded 2 occurrences of one request, branch B 3: after the merge, occurrences 1 to 3
    each answer once, with an answer recorded as that occurrence, and the 4th is a miss."""

    def record(branch: str, times: int) -> None:
        upstream = Upstream(lambda request, n: (200, JSON, json.dumps({"answer": f"{branch}{n}"}).encode()))
        enable_cachy(tmp_path, repeats=True)
        [answer_to(upstream.client(), {"q": "sample"}) for _ in range(times)]
        disable_cachy()

    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / ".gitattributes").write_text("cachy.jsonl merge=union\n")
    enable_cachy(tmp_path)
    answer_to(Upstream(numbered).client(), {"q": "base"})
    disable_cachy()
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "base")
    git(tmp_path, "checkout", "-qb", "a")
    record("A", 2)
    git(tmp_path, "commit", "-qam", "a")
    git(tmp_path, "checkout", "-q", "main")
    record("B", 3)
    git(tmp_path, "commit", "-qam", "b")
    git(tmp_path, "merge", "-q", "a", "-m", "merge")
    assert len(entries(tmp_path)) == 6
    as_a_new_process()

    enable_cachy(tmp_path, repeats=True, mode="replay")
    client = Upstream(numbered).client()
    answers = [answer_to(client, {"q": "sample"}) for _ in range(3)]
    assert [answer[1:] for answer in answers] == ["1", "2", "3"]
    assert len(set(answers)) == 3
    with pytest.raises(CachyMiss, match="occurrence 4"):
        answer_to(client, {"q": "sample"})


INNER_REPEATS = """
import pathlib
import httpx2, openai, pytest

CALLS = pathlib.Path(__file__).parent / "upstream_calls"


def upstream(request):
    n = int(CALLS.read_text()) + 1 if CALLS.exists() else 1
    CALLS.write_text(str(n))
    message = {"role": "assistant", "content": f"sample {n}"}
    return httpx2.Response(200, json={"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def sample():
    client = openai.OpenAI(api_key="k", http_client=httpx2.Client(transport=httpx2.MockTransport(upstream)))
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a number"}])
    return answer.choices[0].message.content


@pytest.mark.cachy(repeats=True)
def test_samples():
    assert [sample() for _ in range(3)] == ["sample 1", "sample 2", "sample 3"]
"""


def test_the_marker_takes_repeats(pytester, monkeypatch):
    monkeypatch.delenv("CACHY_MODE", raising=False)
    pytester.makepyfile(test_inner=INNER_REPEATS)
    pytester.runpytest().assert_outcomes(passed=1)
    replay = pytester.runpytest("--cachy-mode=replay")
    replay.assert_outcomes(passed=1)
    replay.stdout.fnmatch_lines(["cachy: 3 hits, 0 recorded, * 0 replay misses*"])
    assert (pytester.path / "upstream_calls").read_text() == "3"


# ------------------------------------------------------------------------------------- savings
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
