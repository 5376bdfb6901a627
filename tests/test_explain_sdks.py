"""Long conversations through the real SDKs (openai chat.completions and Responses, anthropic messages,
google-genai generate_content), recorded against a fake upstream and replayed with one change each: the
replay miss must be a CachyMiss that names exactly what changed (README, "Misses that explain
themselves"), and the recorded fingerprint must stay under 200 bytes.

What a long list's fingerprint can and cannot see, by the README: of a list of more than 64 elements, its
first elements up to 24 fields and its last up to 72 are compared; a change between them "looks the same";
elements new at the end, or gone, are named as a range (`messages[300:302]`, `messages[80:300]`). A changed
field also goes unnamed when its hashes collide ("once in a while"): the edits below use values that do not
collide, and the last test measures how often that happens. The tests whose docstrings start "Was a defect"
failed before the fix they describe."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
import shutil

import anthropic
import openai
import pytest
from google import genai
from google.genai import types
from helpers import JSON, SSE, Upstream, anthropic_answer, entries, http_module, sse

from cachy import CachyMiss, disable_cachy, enable_cachy, explain

OPENAI_HTTPX, ANTHROPIC_HTTPX, GENAI_HTTPX = (http_module(sdk) for sdk in ("openai", "anthropic", "google-genai"))
LOOKS_THE_SAME = "looks the same: it may differ where its fingerprint does not look"
LACKS_ONE = "differs in fields it lacks; it had 1 more fields."  # a field gone: the fingerprint has no names


# ------------------------------------------------------------------------------ the conversations
def openai_chat(length: int) -> list[dict]:
    """A chat.completions history of `length` messages: a system prompt, then turns of a question, a tool
    call, its result and the answer. 100 and 300 messages both end on a tool result, where an agent calls
    the model again."""
    messages = [{"role": "system", "content": "You are a careful assistant with a calculator."}]
    turn = 0
    while len(messages) < length:
        call_id = f"call_{turn:04d}"
        arguments = json.dumps({"a": turn, "b": 7})
        messages += [
            {"role": "user", "content": f"Question {turn}: what is {turn} times 7?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": "multiply", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": str(turn * 7)},
            {"role": "assistant", "content": f"{turn} times 7 is {turn * 7}."},
        ]
        turn += 1
    return messages[:length]


def responses_input(length: int) -> list[dict]:
    """The same conversation as Responses API input items: messages, function calls and their outputs."""
    items = [{"role": "developer", "content": "You are a careful assistant with a calculator."}]
    turn = 0
    while len(items) < length:
        call_id = f"call_{turn:04d}"
        items += [
            {"role": "user", "content": f"Question {turn}: what is {turn} times 7?"},
            {
                "type": "function_call",
                "call_id": call_id,
                "name": "multiply",
                "arguments": json.dumps({"a": turn, "b": 7}),
            },
            {"type": "function_call_output", "call_id": call_id, "output": str(turn * 7)},
            {"role": "assistant", "content": f"{turn} times 7 is {turn * 7}."},
        ]
        turn += 1
    return items[:length]


def anthropic_chat(length: int) -> list[dict]:
    """An anthropic history whose every `content` is a list of blocks (text, tool_use, tool_result). Turns
    alternate user/assistant; 103 and 303 messages end on a user message holding a tool result."""
    messages = []
    turn = 0
    while len(messages) < length:
        tool_id = f"toolu_{turn:04d}"
        messages += [
            {"role": "user", "content": [{"type": "text", "text": f"Question {turn}: what is {turn} times 7?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me use the calculator."},
                    {"type": "tool_use", "id": tool_id, "name": "multiply", "input": {"a": turn, "b": 7}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_id, "content": str(turn * 7)},
                    {"type": "text", "text": "Here is the result."},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": f"{turn} times 7 is {turn * 7}."}]},
        ]
        turn += 1
    return messages[:length]


ANTHROPIC_SYSTEM = [
    {"type": "text", "text": "You are a careful assistant with a calculator."},
    {"type": "text", "text": "Answer in one sentence.", "cache_control": {"type": "ephemeral"}},
]
ANTHROPIC_TOOLS = [
    {
        "name": "multiply",
        "description": "Multiply two numbers",
        "input_schema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
    }
]


def gemini_contents(length: int) -> list[types.Content]:
    """google-genai contents: questions, function calls, function responses and answers; 103 entries end
    on a function response."""
    contents = []
    turn = 0
    while len(contents) < length:
        contents += [
            types.Content(role="user", parts=[types.Part.from_text(text=f"Question {turn}: what is {turn} times 7?")]),
            types.Content(
                role="model", parts=[types.Part.from_function_call(name="multiply", args={"a": turn, "b": 7})]
            ),
            types.Content(
                role="user",
                parts=[types.Part.from_function_response(name="multiply", response={"result": turn * 7})],
            ),
            types.Content(role="model", parts=[types.Part.from_text(text=f"{turn} times 7 is {turn * 7}.")]),
        ]
        turn += 1
    return contents[:length]


def edited(items: list, index: int, **changes) -> list:
    """`items` with element `index` replaced by itself updated with `changes` (a dict element)."""
    return [*items[:index], {**items[index], **changes}, *items[index + 1 :]]


# ------------------------------------------------------------------------------ the fake upstream
def provider(request, n: int):
    """One fake upstream for the three providers, streamed or not, told apart by the path."""
    path = request.url.path
    body = json.loads(request.content)
    if path.endswith("/chat/completions"):
        head = {"id": f"c{n}", "created": 1, "model": body["model"]}
        if body.get("stream"):
            chunk = {**head, "object": "chat.completion.chunk"}
            events = [
                {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": f"answer {n}"}}]},
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
            return 200, SSE, sse([*((None, event) for event in events), (None, "[DONE]")])
        message = {"role": "assistant", "content": f"answer {n}"}
        completion = {**head, "object": "chat.completion"}
        completion["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        completion["usage"] = {"prompt_tokens": 1000, "completion_tokens": 5, "total_tokens": 1005}
        return 200, JSON, json.dumps(completion).encode()
    if path.endswith("/responses"):
        part = {"type": "output_text", "text": f"answer {n}", "annotations": []}
        output = [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [part]}]
        response = {
            "id": f"resp_{n}",
            "object": "response",
            "created_at": 1,
            "model": body["model"],
            "output": output,
            "status": "completed",
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        return 200, JSON, json.dumps(response).encode()
    if path.endswith("/messages"):
        return anthropic_answer(body, n, f"answer {n}", tokens=(1000, 5))
    candidate = {"content": {"role": "model", "parts": [{"text": f"answer {n}"}]}, "finishReason": "STOP"}
    answer = {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 1000, "totalTokenCount": 1005}}
    if "streamGenerateContent" in path:
        return 200, SSE, sse([(None, answer)])
    return 200, JSON, json.dumps(answer).encode()


class Clients:
    """The three SDKs' clients, sync and async, all talking to one fake upstream; each made when first used."""

    def __init__(self):
        self.upstream = Upstream(provider)

    @functools.cached_property
    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(api_key="sk-test", http_client=self.upstream.client(OPENAI_HTTPX))

    @functools.cached_property
    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key="sk-ant-test", http_client=self.upstream.client(ANTHROPIC_HTTPX))

    @functools.cached_property
    def async_anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(api_key="sk-ant-test", http_client=self.upstream.async_client(ANTHROPIC_HTTPX))

    @functools.cached_property
    def gemini(self) -> genai.Client:
        options = types.HttpOptions(
            httpx_client=self.upstream.client(GENAI_HTTPX), httpx_async_client=self.upstream.async_client(GENAI_HTTPX)
        )
        return genai.Client(api_key="AIza-test", http_options=options)


@pytest.fixture
def sdk() -> Clients:
    return Clients()


# ------------------------------------------------------------------------- record, then replay
def record(folder, sdk: Clients, *calls) -> list[dict]:
    """Make each call live in record mode; return the entries. Each call reached the upstream once."""
    enable_cachy(folder)
    before = sdk.upstream.calls
    for call in calls:
        call()
    disable_cachy()
    assert sdk.upstream.calls == before + len(calls)
    return entries(folder)


@pytest.fixture(scope="module")
def recorded_once(tmp_path_factory):
    """`recorded_once(folder, sdk, name, call)`: the entries of `call` recorded in `folder`, made live once per
    name for this module and copied for each test (a 300-message SDK call takes ~0.1 to 0.2 s to build)."""
    sources = {}

    def into(folder, sdk: Clients, name: str, call) -> list[dict]:
        if name not in sources:
            sources[name] = tmp_path_factory.mktemp("recorded")
            record(sources[name], sdk, call)
        shutil.copy(sources[name] / "cachy.jsonl", folder / "cachy.jsonl")
        return entries(folder)

    return into


def replay_miss(folder, sdk: Clients, call) -> str:
    """The explanation of the CachyMiss that `call` raises in replay mode, without reaching the upstream.
    pytest.raises(CachyMiss) fails on any other exception: an SDK's wrapping, or a crash in `explain`."""
    enable_cachy(folder, mode="replay")
    before = sdk.upstream.calls
    try:
        with pytest.raises(CachyMiss) as miss:
            call()
    finally:
        disable_cachy()
    assert sdk.upstream.calls == before, "replay mode reached the upstream"
    return str(miss.value).split("Why it missed: ", 1)[1]


def named(why: str) -> list[str]:
    """The paths an explanation names, in its order (at most 8 are shown, then "and N more")."""
    found = re.search(r"differs in (.*?)(?: and \d+ more)?(?:; .*)?\.$", why)
    assert found, why
    return found.group(1).split(", ")


def closest_key(why: str) -> str:
    return re.search(r"closest recorded request \(key ([0-9a-f]{16})\)", why).group(1)


def small(entry: dict) -> None:
    """README: the fingerprint of a chat fits in 200 bytes; a chat with one long list must too."""
    assert len(entry["shape"].encode()) < 200, (len(entry["shape"].encode()), entry["shape"])


# ------------------------------------------------------------------ openai chat.completions
def openai_cases(n: int) -> dict[str, tuple[dict, set[str] | str]]:
    """Each replayed change to the recorded `openai_chat(n)` request, with what the miss must name: a set of
    paths, or LOOKS_THE_SAME for a change in the unheld middle."""
    chat = openai_chat(n)
    call = chat[n - 2]["tool_calls"][0]
    other_call = {**call, "function": {**call["function"], "arguments": '{"a": 1, "b": 8}'}}
    return {
        "edited_near_the_end": (
            {"messages": edited(chat, n - 3, content="What is 6 times 9?")},
            {f"messages[{n - 3}].content"},
        ),
        "tool_call_edited_near_the_end": (
            {"messages": edited(chat, n - 2, tool_calls=[other_call])},
            {f"messages[{n - 2}].tool_calls[0]"},
        ),
        "tool_result_edited_last": ({"messages": edited(chat, n - 1, content="-1")}, {f"messages[{n - 1}].content"}),
        "system_prompt_edited": ({"messages": edited(chat, 0, content="You are terse.")}, {"messages[0].content"}),
        "edited_near_the_start": ({"messages": edited(chat, 5, content="What is 1 plus 1?")}, {"messages[5].content"}),
        "edited_in_the_middle": ({"messages": edited(chat, n // 2, content="edited")}, LOOKS_THE_SAME),
        "new_turn_appended": (
            {"messages": [*chat, {"role": "assistant", "content": "Done."}, {"role": "user", "content": "Thanks!"}]},
            {f"messages[{n}:{n + 2}]"},
        ),
        "one_message_appended": ({"messages": [*chat, {"role": "assistant", "content": "Done."}]}, {f"messages[{n}]"}),
        "temperature_changed": ({"messages": chat, "temperature": 0.9}, {"temperature"}),
        "a_new_parameter": ({"messages": chat, "seed": 7}, {"seed"}),
        "temperature_dropped": ({"messages": chat, "temperature": openai.omit}, LACKS_ONE),
    }


@pytest.mark.parametrize("n", [100, 300])
@pytest.mark.parametrize("case", list(openai_cases(100)))
def test_openai_chat_long_history(tmp_path, sdk, recorded_once, n, case):
    chat = openai_chat(n)
    create = sdk.openai.chat.completions.create
    (entry,) = recorded_once(
        tmp_path, sdk, f"openai chat {n}", lambda: create(model="gpt-x", messages=chat, temperature=0.2)
    )
    small(entry)
    changes, expected = openai_cases(n)[case]
    why = replay_miss(tmp_path, sdk, lambda: create(**{"model": "gpt-x", "temperature": 0.2, **changes}))
    assert closest_key(why) == entry["key"]
    if isinstance(expected, str):
        assert expected in why, why
    else:
        assert set(named(why)) == expected, why


def test_openai_chat_trimmed_to_the_last_80_messages(tmp_path, sdk):
    """A history trimmed to fit (`messages[-80:]`, no system prompt kept) is compared position by position:
    positions 0..15 hold other messages now, and 80..299 are gone. Only paths that really changed are
    named, and with every one of the 16 positions naming something, the gone range is listed after them."""
    chat = openai_chat(300)
    create = sdk.openai.chat.completions.create
    (entry,) = record(tmp_path, sdk, lambda: create(model="gpt-x", messages=chat))
    trimmed = chat[-80:]
    why = replay_miss(tmp_path, sdk, lambda: create(model="gpt-x", messages=trimmed))
    for path in named(why):
        if re.fullmatch(r"messages\[\d+:\d+\]", path):
            assert path == "messages[80:300]"
            continue
        index = int(re.match(r"messages\[(\d+)\]", path).group(1))
        assert index < 16 and trimmed[index] != chat[index], path
    assert closest_key(why) == entry["key"]


def test_openai_chat_trimmed_keeping_the_system_prompt_names_the_gone_range(tmp_path, sdk):
    """Was a defect. The usual way a long chat is trimmed: keep the system prompt, drop the oldest turns
    (`[messages[0], *messages[-79:]]`). Observed: "differs in messages[1].content, messages[2].tool_calls[0],
    messages[3].tool_call_id, ... messages[7].content and 10 more": each of positions 1..15 now holds
    another message, so their paths fill the 8 names shown, and `messages[80:300]` - the one name that says
    what happened, and the README's own example of "a history trimmed to fit" - is appended last in
    `_differences` (`named + fields.beyond`) and hidden in "and N more". Expected: the range is shown.
    Suggested fix: list `fields.beyond` first (a range names many elements in one name), or always show
    ranges whatever the cut at 8."""
    chat = openai_chat(300)
    create = sdk.openai.chat.completions.create
    record(tmp_path, sdk, lambda: create(model="gpt-x", messages=chat))
    trimmed = [chat[0], *chat[-79:]]
    why = replay_miss(tmp_path, sdk, lambda: create(model="gpt-x", messages=trimmed))
    assert "messages[0]" not in why  # the system prompt did not change
    assert "messages[80:300]" in named(why), why


def test_openai_chat_history_of_70_recorded_then_100_names_the_new_messages_as_a_range(tmp_path, sdk):
    """Recorded long, replayed longer: the new messages are one range, and no held message is named."""
    create = sdk.openai.chat.completions.create
    record(tmp_path, sdk, lambda: create(model="gpt-x", messages=openai_chat(70)))
    why = replay_miss(tmp_path, sdk, lambda: create(model="gpt-x", messages=openai_chat(100)))
    assert named(why) == ["messages[70:100]"], why


def test_openai_chat_recorded_short_then_replayed_long_names_new_messages_as_ranges(tmp_path, sdk):
    """README: "a run of [new elements] ... as one range". A list of at most 64 elements is fingerprinted whole,
    without its length, so against a recorded 40-message chat a 100-message one was named "messages[40],
    messages[41], ..., messages[47] and 18 more" (each new message one by one, then `messages[64:100]`).
    Runs of elements new as a whole now merge with the range past 64. A new message one of whose fields
    happens to collide in the Bloom filter (messages[51] here) cannot be told from an edited one, so it is
    named field by field and splits the range: that is the filter's documented false match, not a field
    that did not change. What must hold: every new message is named, in a range or by its fields, and no
    message of the recorded 40 is named."""
    create = sdk.openai.chat.completions.create
    record(tmp_path, sdk, lambda: create(model="gpt-x", messages=openai_chat(40)))
    why = replay_miss(tmp_path, sdk, lambda: create(model="gpt-x", messages=openai_chat(100)))
    covered = set()
    for name in named(why):
        span = re.fullmatch(r"messages\[(\d+)(?::(\d+))?\](?:\..*)?", name)
        assert span, why
        start = int(span.group(1))
        covered.update(range(start, int(span.group(2) or start + 1)))
    assert covered == set(range(40, 100)), why
    assert len(named(why)) <= 4, why  # ranges, not sixty names


def test_an_agent_loop_recorded_turn_by_turn_explains_against_its_last_turn(tmp_path, sdk):
    """Was a defect. An agent loop records one request per step: the same chat growing by a tool call and its
    result each time (here 100, 120, ... 300 messages; a real loop records every step). Replayed one step
    further (302 messages, the run went on), the closest recorded request is the 300-message one: only
    messages[300:302] are new. Observed: "The closest recorded request (key <the 100-message entry>)
    differs in messages[100:302]". Against every recorded prefix longer than 64 the window sees no changed
    field, only one range of new messages, and `_Differences.weight` counts a range as one difference
    whatever it spans: all 11 entries tie at weight 1 and `min` keeps the first in the file, the shortest
    prefix. The same happens to an edit of the last message (weight 1 against the 300-message entry, 1
    against each prefix): observed "differs in messages[100:300]" against the 100-message entry, not the
    edited message. So the more turns a run records, the less its misses say.
    Expected: the 300-message entry, and "differs in messages[300:302]"; for the edit, "differs in
    messages[299].content". Suggested fix: weigh a range by the elements it spans (or by fields per
    element), so a shorter prefix scores worse; break ties toward the entry of the same length."""
    create = sdk.openai.chat.completions.create
    chat = openai_chat(302)
    steps = [lambda length=length: create(model="gpt-x", messages=chat[:length]) for length in range(100, 301, 20)]
    recorded = record(tmp_path, sdk, *steps)
    last = recorded[-1]["key"]
    further = replay_miss(tmp_path, sdk, lambda: create(model="gpt-x", messages=chat))
    last_edited = replay_miss(
        tmp_path, sdk, lambda: create(model="gpt-x", messages=edited(chat[:300], 299, content="-1"))
    )
    observed = [(closest_key(why), named(why)) for why in (further, last_edited)]
    assert observed == [(last, ["messages[300:302]"]), (last, ["messages[299].content"])], (further, last_edited)


def test_openai_chat_debug_in_record_mode_explains_a_long_chat(tmp_path, sdk, capsys):
    """debug=True in record mode prints why each miss missed on its recorded line: a long chat neither
    crashes that nor slows it, and the explanation names the edited tool call."""
    chat = openai_chat(300)
    create = sdk.openai.chat.completions.create
    record(tmp_path, sdk, lambda: create(model="gpt-x", messages=chat))
    call = chat[298]["tool_calls"][0]
    changed = edited(chat, 298, tool_calls=[{**call, "function": {**call["function"], "arguments": "{}"}}])
    enable_cachy(tmp_path, debug=True)
    assert create(model="gpt-x", messages=changed).choices[0].message.content == "answer 2"
    disable_cachy()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.split()[1] == "recorded" and line.endswith("differs in messages[298].tool_calls[0]"), line


# ---------------------------------------------------------------------------- openai responses
def responses_cases(n: int) -> dict[str, tuple[dict, set[str] | str]]:
    items = responses_input(n)
    return {
        "output_edited_last": (
            {"input": edited(items, n - 1, output="error: division by zero")},
            {f"input[{n - 1}].output"},
        ),
        "arguments_edited_near_the_end": (
            {"input": edited(items, n - 2, arguments="{}")},
            {f"input[{n - 2}].arguments"},
        ),
        "edited_near_the_start": ({"input": edited(items, 1, content="Hello?")}, {"input[1].content"}),
        "edited_in_the_middle": ({"input": edited(items, n // 2, content="edited")}, LOOKS_THE_SAME),
        "new_turn_appended": ({"input": [*items, {"role": "assistant", "content": "Done."}]}, {f"input[{n}]"}),
        "trimmed_to_a_prefix": ({"input": items[:80]}, {f"input[80:{n}]"}),
        "temperature_changed": ({"input": items, "temperature": 0.9}, {"temperature"}),
    }


@pytest.mark.parametrize("n", [100, 300])
@pytest.mark.parametrize("case", list(responses_cases(100)))
def test_openai_responses_long_input(tmp_path, sdk, recorded_once, n, case):
    items = responses_input(n)
    create = sdk.openai.responses.create
    (entry,) = recorded_once(
        tmp_path, sdk, f"responses {n}", lambda: create(model="gpt-x", input=items, temperature=0.2)
    )
    small(entry)
    changes, expected = responses_cases(n)[case]
    why = replay_miss(tmp_path, sdk, lambda: create(**{"model": "gpt-x", "temperature": 0.2, **changes}))
    if isinstance(expected, str):
        assert expected in why, why
    else:
        assert set(named(why)) == expected, why


# ------------------------------------------------------------------------------------ anthropic
def anthropic_cases(n: int) -> dict[str, tuple[dict, set[str] | str]]:
    chat = anthropic_chat(n)
    last = chat[n - 1]
    result = {**last["content"][0], "content": "error: division by zero"}
    return {
        "block_edited_in_the_last_message": (
            {"messages": edited(chat, n - 1, content=[result, last["content"][1]])},
            {f"messages[{n - 1}].content[0]"},
        ),
        "block_added_to_the_last_message": (
            {"messages": edited(chat, n - 1, content=[*last["content"], {"type": "text", "text": "Hurry."}])},
            {f"messages[{n - 1}].content[2]"},
        ),
        "tool_use_edited_near_the_end": (
            {
                "messages": edited(
                    chat, n - 2, content=[chat[n - 2]["content"][0], {**chat[n - 2]["content"][1], "input": {}}]
                )
            },
            {f"messages[{n - 2}].content[1]"},
        ),
        "turn_appended": (
            {
                "messages": [
                    *chat,
                    {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
                    {"role": "user", "content": [{"type": "text", "text": "Thanks!"}]},
                ]
            },
            {f"messages[{n}:{n + 2}]"},
        ),
        "system_block_edited": (
            {"system": [ANTHROPIC_SYSTEM[0], {**ANTHROPIC_SYSTEM[1], "text": "Answer in French."}]},
            {"system[1].text"},
        ),
        "edited_in_the_middle": (
            {"messages": edited(chat, n // 2, content=[{"type": "text", "text": "edited"}])},
            LOOKS_THE_SAME,
        ),
        "max_tokens_changed": ({"max_tokens": 2048}, {"max_tokens"}),
    }


@pytest.mark.parametrize("n", [103, 303])
@pytest.mark.parametrize("case", list(anthropic_cases(103)))
def test_anthropic_messages_long_history_of_blocks(tmp_path, sdk, recorded_once, n, case):
    base = {
        "model": "claude-x",
        "max_tokens": 1024,
        "system": ANTHROPIC_SYSTEM,
        "tools": ANTHROPIC_TOOLS,
        "messages": anthropic_chat(n),
    }
    create = sdk.anthropic.messages.create
    (entry,) = recorded_once(tmp_path, sdk, f"anthropic {n}", lambda: create(**base))
    small(entry)
    changes, expected = anthropic_cases(n)[case]
    why = replay_miss(tmp_path, sdk, lambda: create(**{**base, **changes}))
    if isinstance(expected, str):
        assert expected in why, why
    else:
        assert set(named(why)) == expected, why


# --------------------------------------------------------------------------------- google-genai
GEMINI_CONFIG = types.GenerateContentConfig(
    system_instruction="You are a careful assistant with a calculator.",
    temperature=0.2,
    tools=[
        types.Tool(
            function_declarations=[
                types.FunctionDeclaration(
                    name="multiply",
                    description="Multiply two numbers",
                    parameters=types.Schema(
                        type="OBJECT", properties={"a": types.Schema(type="NUMBER"), "b": types.Schema(type="NUMBER")}
                    ),
                )
            ]
        )
    ],
)


def gemini_cases(n: int) -> dict[str, tuple[list, set[str] | str]]:
    contents = gemini_contents(n)
    answer = types.Part.from_function_response(name="multiply", response={"result": -1})
    later = [
        types.Content(role="model", parts=[types.Part.from_text(text="Done.")]),
        types.Content(role="user", parts=[types.Part.from_text(text="Thanks!")]),
    ]
    return {
        "last_entry_edited": (
            [*contents[:-1], types.Content(role="user", parts=[answer])],
            {f"contents[{n - 1}].parts[0]"},
        ),
        "edited_near_the_start": (
            [types.Content(role="user", parts=[types.Part.from_text(text="Hello?")]), *contents[1:]],
            {"contents[0].parts[0]"},
        ),
        "edited_in_the_middle": (
            [
                *contents[: n // 2],
                types.Content(role="user", parts=[types.Part.from_text(text="edited")]),
                *contents[n // 2 + 1 :],
            ],
            LOOKS_THE_SAME,
        ),
        "turn_appended": ([*contents, *later], {f"contents[{n}:{n + 2}]"}),
    }


@pytest.mark.parametrize("case", list(gemini_cases(103)))
def test_gemini_generate_content_long_contents(tmp_path, sdk, recorded_once, case):
    n = 103
    generate = sdk.gemini.models.generate_content
    (entry,) = recorded_once(
        tmp_path, sdk, "gemini", lambda: generate(model="gemini-x", contents=gemini_contents(n), config=GEMINI_CONFIG)
    )
    small(entry)
    contents, expected = gemini_cases(n)[case]
    why = replay_miss(tmp_path, sdk, lambda: generate(model="gemini-x", contents=contents, config=GEMINI_CONFIG))
    if isinstance(expected, str):
        assert expected in why, why
    else:
        assert set(named(why)) == expected, why


def test_gemini_config_change_on_a_long_chat_is_named(tmp_path, sdk):
    generate = sdk.gemini.models.generate_content
    contents = gemini_contents(103)
    record(tmp_path, sdk, lambda: generate(model="gemini-x", contents=contents, config=GEMINI_CONFIG))
    hotter = GEMINI_CONFIG.model_copy(update={"temperature": 0.9})
    why = replay_miss(tmp_path, sdk, lambda: generate(model="gemini-x", contents=contents, config=hotter))
    assert named(why) == ["generationConfig.temperature"], why


# ------------------------------------------------------------------------------------- streamed
def test_openai_chat_stream_long_history(tmp_path, sdk):
    """Streamed: the recorded entry streams, the edited replay streams too, so only the edit is named; the
    recorded stream replays; the same chat recorded without streaming and asked as a stream is told apart."""
    chat = openai_chat(300)
    create = sdk.openai.chat.completions.create

    def streamed(messages):
        return lambda: "".join(
            chunk.choices[0].delta.content or "" for chunk in create(model="gpt-x", messages=messages, stream=True)
        )

    (entry,) = record(tmp_path, sdk, streamed(chat))
    assert entry["stream"] is True
    small(entry)
    why = replay_miss(tmp_path, sdk, streamed(edited(chat, 299, content="-1")))
    assert named(why) == ["messages[299].content"], why
    why = replay_miss(tmp_path, sdk, streamed([*chat, {"role": "assistant", "content": "Done."}]))
    assert named(why) == ["messages[300]"], why
    enable_cachy(tmp_path, mode="replay")
    assert streamed(chat)() == "answer 1"  # the recorded stream replays
    disable_cachy()
    record(tmp_path / "plain", sdk, lambda: create(model="gpt-x", messages=chat))
    why = replay_miss(tmp_path / "plain", sdk, streamed(chat))
    # `stream: true` is named, or (here, its hashes collide in this filter) the miss says the request streams
    assert named(why) == ["stream"] if "differs in" in why else "this request streams and it did not" in why, why


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_long_chat_recorded_streamed_and_asked_plain_says_streaming_differs(tmp_path, sdk, api):
    """Was a defect (README: "when only streaming differs, it says so"). openai and anthropic put `stream: true`
    in the body, so a chat recorded as a stream and asked again without `stream=True` differs in a field
    the new body lacks, which the fingerprint cannot name. Observed: "The closest recorded request (key ...)
    differs in fields it lacks; it had 1 more fields." - no word of streaming, though the entry is marked
    `"stream": true` and the request is not a stream. (The other way round, `stream` is named.)
    Expected: the explanation says that it streamed and this request does not. Suggested fix: in
    `Engine.explain`, compare `closest["stream"]` with `miss.call.stream` whatever the paths, and add
    "it streamed and this request does not" to the fields named."""
    if api == "openai":
        chat = openai_chat(300)
        ask = lambda **stream: sdk.openai.chat.completions.create(model="gpt-x", messages=chat, **stream)  # noqa: E731
    else:
        chat = anthropic_chat(303)
        ask = lambda **stream: sdk.anthropic.messages.create(  # noqa: E731
            model="claude-x", max_tokens=1024, messages=chat, **stream
        )
    record(tmp_path, sdk, lambda: list(ask(stream=True)))
    why = replay_miss(tmp_path, sdk, ask)
    assert "stream" in why, why


def test_anthropic_async_stream_long_history(tmp_path, sdk):
    base = {"model": "claude-x", "max_tokens": 1024, "system": ANTHROPIC_SYSTEM, "messages": anthropic_chat(303)}

    def streamed(**changes):
        async def run():
            async with sdk.async_anthropic.messages.stream(**{**base, **changes}) as stream:
                return "".join([text async for text in stream.text_stream])

        return lambda: asyncio.run(run())

    (entry,) = record(tmp_path, sdk, streamed())
    small(entry)
    last = base["messages"][-1]
    changed = edited(base["messages"], 302, content=[last["content"][0], {"type": "text", "text": "Quick!"}])
    why = replay_miss(tmp_path, sdk, streamed(messages=changed))
    assert named(why) == ["messages[302].content[1]"], why


def test_gemini_stream_long_contents(tmp_path, sdk):
    contents = gemini_contents(103)

    def streamed(contents):
        stream = sdk.gemini.models.generate_content_stream
        return lambda: [chunk.text for chunk in stream(model="gemini-x", contents=contents, config=GEMINI_CONFIG)]

    (entry,) = record(tmp_path, sdk, streamed(contents))
    small(entry)
    answer = types.Part.from_function_response(name="multiply", response={"result": -1})
    why = replay_miss(tmp_path, sdk, streamed([*contents[:-1], types.Content(role="user", parts=[answer])]))
    assert named(why) == ["contents[102].parts[0]"], why


# --------------------------------------------------------------------- how often a change goes unnamed
def unnamed_rate(body: dict, variants: int = 40) -> float:
    """The share of single-field changes to `body` that its own fingerprint cannot name: every field the
    fingerprint holds, changed `variants` ways each (its value with a suffix), checked against the filter as
    `_differences` checks it."""
    shape = explain.fingerprint(body)
    bits = base64.b64decode(shape.split(":")[1])
    fields = explain.request_fields(body)
    unnamed = sum(
        all(bits[bit >> 3] >> (bit & 7) & 1 for bit in explain.field_bits(path, value + b"#%d" % variant))
        for path, value in fields
        for variant in range(variants)
    )
    return unnamed / (len(fields) * variants)


def test_a_long_tool_chat_names_a_changed_field_about_as_often_as_the_readme_says(sdk):
    """Was a defect (the README's number). README: "once in a while (about 1.5% per field for a 50-message chat) a
    changed field goes unnamed". That holds for 50 messages of two fields (`role`, `content`): measured
    1.7%. But a long list is held by 64 elements, and an agent's messages have three fields or more (`role`,
    `content`, `tool_calls`; `role`, `tool_call_id`, `content`; `role` and two content blocks), so the
    960-bit filter of every long agent chat holds 160-180 fields. Measured on the bodies the SDKs send:
    5.8% for openai chat.completions (100 or 300 messages), 7.2% for the Responses API (300 items), 7.7% for
    anthropic (303 messages of blocks): four to five times the README's figure. In this file, 4 of about
    45 single changes first came out unnamed ("looks the same"): anthropic 303, a tool_result edited to
    "-1" and `system[1].text`; Responses 100, an output edited to "-1"; openai 300, `stream: true` added.
    Their values were changed (or both outcomes accepted) so the other tests show the rest.
    With 4 hashes already near the best count for 960 bits and ~170 fields, no hashing change helps.
    Suggested fix: hold a long list by its ends up to a number of fields rather than of elements (e.g.
    ~100 fields: a 3-field message counts 3), which keeps every filter as empty as the README's
    50-message chat; or state the long-chat rate (about 6-8%) in the README."""
    chats = {
        "openai chat 60": lambda: sdk.openai.chat.completions.create(model="gpt-x", messages=openai_chat(60)),
        "openai chat 300": lambda: sdk.openai.chat.completions.create(model="gpt-x", messages=openai_chat(300)),
        "openai responses 300": lambda: sdk.openai.responses.create(model="gpt-x", input=responses_input(300)),
        "anthropic 303": lambda: sdk.anthropic.messages.create(
            model="claude-x",
            max_tokens=1024,
            system=ANTHROPIC_SYSTEM,
            tools=ANTHROPIC_TOOLS,
            messages=anthropic_chat(303),
        ),
    }
    for call in chats.values():
        call()  # no cachy: only the bodies the SDKs send are wanted
    rates = {
        name: unnamed_rate(json.loads(request.content))
        for name, request in zip(chats, sdk.upstream.requests, strict=True)
    }
    assert all(rate <= 0.03 for rate in rates.values()), {name: f"{rate:.1%}" for name, rate in rates.items()}
