"""Real client libraries end to end through cachy, against a fake upstream: a whole run records, and a
second run replays it without reaching the upstream and ends the same way.

claudette 0.3.15 needs anthropic 0.x, so this runs in `.ci/run`'s classic environment, and is skipped
where claudette is not installed."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import Upstream, entries, http_module

claudette = pytest.importorskip("claudette")
anthropic = pytest.importorskip("anthropic")


def sums(
    a: int,  # the first number
    b: int,  # the second number
) -> int:  # their sum
    "Adds a and b."
    return a + b


def claude_reply(request, n: int):
    """Asks for `sums(2, 3)` until the conversation holds a tool result, then answers with that result."""
    body = json.loads(request.content)
    last = body["messages"][-1]["content"]
    results = [block for block in last if block.get("type") == "tool_result"] if isinstance(last, list) else []
    if results:
        content, stop = [{"type": "text", "text": f"2 + 3 = {results[0]['content']} (answer {n})"}], "end_turn"
    else:
        content, stop = (
            [{"type": "tool_use", "id": f"toolu_{n}", "name": "sums", "input": {"a": 2, "b": 3}}],
            "tool_use",
        )
    message = {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": body["model"], "content": content}
    message |= {"stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
    return 200, {"content-type": "application/json"}, json.dumps(message).encode()


def claudette_toolloop(upstream: Upstream, asynchronous: bool):
    """A run of claudette's tool loop on a fresh chat: what the loop yields, and the final answer."""
    module = http_module("anthropic")
    if asynchronous:
        cli = anthropic.AsyncAnthropic(api_key="k", http_client=upstream.async_client(module))
        chat = claudette.AsyncChat(cli=claudette.AsyncClient("claude-x", cli=cli), tools=[sums])

        async def loop():
            return [step async for step in chat.toolloop("What is 2 + 3? Use the tool.")]

        steps = asyncio.run(loop())
    else:
        cli = anthropic.Anthropic(api_key="k", http_client=upstream.client(module))
        chat = claudette.Chat(cli=claudette.Client("claude-x", cli=cli), tools=[sums])
        steps = list(chat.toolloop("What is 2 + 3? Use the tool."))
    return steps, claudette.contents(chat.c.result)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_claudette_toolloop_replays_without_the_upstream(cache_dir, asynchronous):
    """The loop asks for a tool, sends back its result, and gets the answer: two calls, both replayed."""
    upstream = Upstream(claude_reply)
    steps, answer = claudette_toolloop(upstream, asynchronous)
    assert answer == "2 + 3 = 5 (answer 2)"
    assert steps[1]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_1", "content": "5"}
    assert (upstream.calls, len(entries(cache_dir))) == (2, 2)
    assert claudette_toolloop(upstream, asynchronous) == (steps, answer)
    assert upstream.calls == 2, "the second run reached the upstream"
