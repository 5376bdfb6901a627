"""Provenance: each new entry names the client that sent it (from the User-Agent, product tokens only) and the
model its response names, and `cachy stats` breaks the file down by both."""

from __future__ import annotations

import json

import anthropic
import httpx2
import openai
import pytest
from helpers import CHAT, JSON, MESSAGES, SSE, Upstream, anthropic_answer, entries, http_module, sse

from cachy.cli import main
from cachy.provenance import client, model


def test_the_openai_sdk_is_named_with_its_version_and_the_resolved_model(cache_dir):
    resolved = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-x-2025", "choices": []}
    upstream = Upstream(lambda request, n: (200, JSON, json.dumps(resolved).encode()))
    sdk = openai.OpenAI(api_key="sk-secret", http_client=upstream.client(http_module("openai")))
    sdk.chat.completions.create(model="gpt-x", messages=MESSAGES)
    (entry,) = entries(cache_dir)
    assert entry["client"] == f"OpenAI/Python {openai.__version__}"
    assert entry["model"] == "gpt-x-2025"  # what the response names, not what was asked
    assert "sk-secret" not in (cache_dir / "cachy.jsonl").read_text()


def test_a_stream_names_the_model_of_its_first_event_that_has_one(cache_dir):
    upstream = Upstream(lambda request, n: anthropic_answer(json.loads(request.content), n, "hi"))
    sdk = anthropic.Anthropic(api_key="k", http_client=upstream.client(http_module("anthropic")))
    with sdk.messages.stream(model="claude-x", max_tokens=5, messages=MESSAGES) as stream:
        stream.get_final_message()
    (entry,) = entries(cache_dir)
    assert entry["client"] == f"Anthropic/Python {anthropic.__version__}"
    assert entry["model"] == "claude-x"


def test_an_answer_without_a_model_and_a_client_without_a_version_record_neither(cache_dir):
    upstream = Upstream(lambda request, n: (200, JSON, b'{"answer": 1}'))
    httpx2.Client(transport=httpx2.MockTransport(upstream), headers={"user-agent": "my secret agent"}).post(
        CHAT, json={"q": 1}
    )
    (entry,) = entries(cache_dir)
    assert "client" not in entry and "model" not in entry


@pytest.mark.parametrize(
    "user_agent, named",
    [
        ("google-genai-sdk/1.2.0 gl-python/3.11.7", "google-genai-sdk/1.2.0 gl-python/3.11.7"),
        ("python-requests/2.32.3", "python-requests/2.32.3"),
        ("AsyncOpenAI/Python 3.1.0 (contact: me@example.com; key=abc)", "AsyncOpenAI/Python 3.1.0"),
        ("a/1 b/2 c/3 d/4", "a/1 b/2 c/3"),
        ("Bearer sk-abc", None),
    ],
)
def test_only_the_product_tokens_of_a_user_agent_are_kept(user_agent, named):
    assert client({"user-agent": user_agent}) == named


def test_gemini_names_its_model_version():
    events = b"".join(sse([(None, {"candidates": [], "modelVersion": "gemini-2.5-flash-001"})]))
    assert model(events) == "gemini-2.5-flash-001"
    assert model(b'{"object": "response", "model": "gpt-5"}') == "gpt-5"
    assert model(b"not json with model in it") is None


def test_stats_breaks_the_file_down_by_client_and_model(tmp_path, capsys):
    lines = [
        {"key": f"{n:016x}", "v": 2, "method": "POST", "url": CHAT, "status_code": 200, "headers": SSE, "response": ""}
        | extra
        for n, extra in enumerate(
            [{"client": "OpenAI/Python 3.57.0", "model": "gpt-5"}, {"client": "OpenAI/Python 3.57.0"}, {}]
        )
    ]
    path = tmp_path / "cachy.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "entries  client\n       2  OpenAI/Python 3.57.0\n       1  (not recorded)" in out
    assert "entries  model\n       2  (not recorded)\n       1  gpt-5" in out


@pytest.mark.parametrize(
    "user_agent",
    [
        "token/9f8e7d6c5b4a3928171615aa",
        "huggingface_hub/0.24; session_id/4b5e6f7a8b9c",
        "sk-proj-AbCdEfGhIjKlMnOp/1.0",
        "MyApp deploy-sk-proj-AbCdEf/9Xy8Zw7Vu6",
        "user@example.com/2",
    ],
)
def test_no_part_of_a_secret_in_a_user_agent_reaches_the_file(user_agent):
    """Observed (review of provenance): the product pattern was not anchored to a token's start and took any run
    of word characters for a version, so `token/9f8e…` and parts of `sk-proj-…` keys and session ids were stored.
    A product is now a name of short words, at a token's start, and a version of numbers."""
    assert client({"user-agent": user_agent}) is None


def test_the_sdks_user_agents_are_kept():
    agents = {
        "OpenAI/Python 3.57.0": "OpenAI/Python 3.57.0",
        "google-genai-sdk/1.2.0 gl-python/3.11.7": "google-genai-sdk/1.2.0 gl-python/3.11.7",
        "python-httpx2/2.16.2": "python-httpx2/2.16.2",
        "langchain-openai/0.3.1 (linux)": "langchain-openai/0.3.1",
    }
    assert {agent: client({"user-agent": agent}) for agent in agents} == agents
