"""Misses that explain themselves (cachy/explain.py): the fingerprint an entry keeps of its request, small and
free of its text, and what a replay miss (or a debug line) says about the closest recorded request, in
short chats, long lists and odd bodies. Long chats through the real SDKs are in test_explain_sdks.py."""

from __future__ import annotations

import json
import re

import httpx
import httpx2
import openai
import pytest
from helpers import (
    CHAT,
    JSON,
    Upstream,
    answer_to,
    counting,
    entries,
    hand_edit,
    n_of,
    numbered,
    old_line,
    openai_reply,
)

from cachy import CachyMiss, CachyWarning, disable_cachy, enable_cachy, explain, request_key
from cachy.cli import main

# ----------------------------------------------------------- the closest entry and what differs
TOOL = {"name": "add", "description": "Add two numbers", "input_schema": {"type": "object"}}
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


def request(**changes) -> dict:
    return {"model": "gpt-4.1-mini", "temperature": 0.2, "messages": CONVERSATION, "tools": [TOOL], **changes}


def recorded_three(folder) -> list[str]:
    """Three recorded requests to one endpoint; the second is `request()`. Returns their keys."""
    enable_cachy(folder)
    client = Upstream(numbered).client()
    answer_to(client, request(messages=[{"role": "user", "content": "Tell me a joke."}], tools=[]))
    answer_to(client, request())
    answer_to(client, request(model="gpt-4.1", temperature=1.0, tools=[{**TOOL, "name": "mul"}]))
    answer_to(client, {"other": "endpoint"}, url="https://api.openai.com/v1/embeddings")
    disable_cachy()
    return [entry["key"] for entry in entries(folder)[:3]]


def near_the_second() -> dict:
    messages = [*CONVERSATION[:2], {**CONVERSATION[2], "content": "four"}, CONVERSATION[3]]
    return request(temperature=0.7, messages=messages, tools=[{**TOOL, "description": "Adds numbers"}])


def differing_fields(message: str) -> set[str]:
    return set(re.search(r"differs in (.*?)(?:; |\.$)", message).group(1).split(", "))


def test_a_replay_miss_names_the_closest_entry_and_the_fields_that_differ(tmp_path):
    keys = recorded_three(tmp_path)
    enable_cachy(tmp_path, mode="replay")
    with pytest.raises(CachyMiss) as miss:
        answer_to(Upstream(numbered).client(), near_the_second())
    message = str(miss.value)
    assert f"closest recorded request (key {keys[1]})" in message
    assert differing_fields(message) == {"temperature", "messages[2].content", "tools[0].description"}


def test_a_whole_new_list_element_is_named_once(tmp_path):
    recorded_three(tmp_path)
    enable_cachy(tmp_path, mode="replay")
    with pytest.raises(CachyMiss) as miss:
        answer_to(Upstream(numbered).client(), request(messages=[*CONVERSATION, {"role": "assistant", "content": "6"}]))
    assert differing_fields(str(miss.value)) == {"messages[4]"}


def test_a_miss_with_nothing_recorded_for_its_endpoint_says_so(tmp_path):
    recorded_three(tmp_path)
    enable_cachy(tmp_path, mode="replay")
    with pytest.raises(CachyMiss, match=r"Nothing is recorded for POST /v1/responses"):
        answer_to(Upstream(numbered).client(), {"input": "hi"}, url="https://api.openai.com/v1/responses")


def test_a_miss_that_differs_only_in_streaming_says_so(tmp_path):
    """Same endpoint, same body, read as a stream: no field differs, and the explanation must not claim one."""
    enable_cachy(tmp_path)
    client = Upstream(numbered).client()
    answer_to(client, request())
    enable_cachy(tmp_path, mode="replay")
    with pytest.raises(CachyMiss) as miss, client.stream("POST", CHAT, json=request()) as response:
        response.read()
    why = str(miss.value).split("Why it missed: ")[1]
    assert "stream" in why
    assert "fields it lacks" not in why


def test_a_debug_miss_prints_the_same_explanation(tmp_path, capsys):
    keys = recorded_three(tmp_path)
    enable_cachy(tmp_path, mode="replay", debug=True)
    with pytest.raises(CachyMiss) as miss:
        answer_to(Upstream(numbered).client(), near_the_second())
    why = str(miss.value).split("Why it missed: ")[1].rstrip(".")
    err = capsys.readouterr().err
    assert "replay miss" in err and CHAT in err
    assert why in err and f"key {keys[1]}" in why


def test_a_debug_miss_in_record_mode_prints_why_on_its_recorded_line(tmp_path, capsys):
    keys = recorded_three(tmp_path)
    enable_cachy(tmp_path, debug=True)
    answer_to(Upstream(numbered).client(), near_the_second())
    (line,) = capsys.readouterr().err.splitlines()
    assert line.split()[1] == "recorded"
    assert f"why: The closest recorded request (key {keys[1]}) differs in " in line


# ----------------------------------------------------------------------------------- long lists
def why(client, body: dict) -> str:
    """The explanation of a replay miss."""
    with pytest.raises(CachyMiss) as miss:
        answer_to(client, body)
    return str(miss.value)


def chat(length: int) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(length)]


def test_a_long_conversation_is_fingerprinted_by_its_two_ends(tmp_path):
    """A long chat changes at its ends (the system prompt, the latest turns); the middle goes unnamed, which
    keeps the fingerprint under 200 bytes and a long chat's miss about as cheap as a short one's. Against a
    shorter or longer chat, only what the fingerprint holds is compared: no unchanged message is named."""
    chat = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(300)]
    enable_cachy(tmp_path)
    client = Upstream(numbered).client()
    answer_to(client, request(messages=chat))
    assert len(entries(tmp_path)[0]["shape"].encode()) <= 200
    enable_cachy(tmp_path, mode="replay")

    def why(messages: list[dict]) -> str:
        with pytest.raises(CachyMiss) as miss:
            answer_to(client, request(messages=messages))
        return str(miss.value)

    for changed in (3, 290):
        edited = [*chat[:changed], {**chat[changed], "content": "edited"}, *chat[changed + 1 :]]
        assert differing_fields(why(edited)) == {f"messages[{changed}].content"}
    edited = [*chat[:150], {**chat[150], "content": "edited"}, *chat[151:]]
    assert "looks the same: it may differ where its fingerprint does not look" in why(edited)
    assert differing_fields(why([*chat, {"role": "user", "content": "more"}])) == {"messages[300]"}
    shorter = why([*chat[:280], {"role": "user", "content": "edited"}])
    assert differing_fields(shorter) == {"messages[280].content", "messages[281:300]"}  # not [232] to [279]


def test_a_long_list_of_another_length_is_named_as_a_range_not_miscounted(tmp_path):
    """A fingerprint holds a long list by its ends, so the fields it counted are not the request's: a recorded
    300-message chat against its first 100 messages (a history trimmed to fit a context window) said "it had
    96 more fields" where it had 400 more. The explanation now names the messages that are gone as a range,
    and claims no count it cannot know."""
    client = Upstream(numbered).client()
    enable_cachy(tmp_path)
    answer_to(client, {"model": "m", "messages": chat(300)})
    enable_cachy(tmp_path, mode="replay")
    message = why(client, {"model": "m", "messages": chat(100)})
    assert message.endswith("differs in messages[100:300].")
    longer = why(client, {"model": "m", "messages": [*chat(300), *chat(2)]})
    assert longer.endswith("differs in messages[300:302].")


def test_a_long_chats_miss_hashes_only_the_window_also_against_a_shorter_recorded_chat(tmp_path, monkeypatch):
    """README: "a long chat's miss costs about what a short one's does". That holds against a recorded chat of
    the same length only. Against a shorter recorded chat (R elements), `_indexes` also hashes every element
    from R on, though each of them is new by construction (the recorded list ended at R), so its Bloom check
    can only lose it to a collision. A conversation recorded turn by turn (chats of 2, 4, ... 400 messages)
    makes a replay miss at the last turn compare against all of them: about 1 s per miss (measured: 994 ms
    for 200 entries, against 1.4 ms for the one same-length entry), the cost the change set out to remove.
    Here: a 400-message miss against a recorded 100-message chat hashes 729 fields, 5.6 times what a
    100-message miss against it hashes. Suggested fix: name elements from R on as new without hashing them
    (and stop listing them after a few). A list absent from the suffix was held whole, so past 64 elements
    the same holds, except for fingerprints written before the suffix existed (mark the new ones)."""
    client = Upstream(numbered).client()
    enable_cachy(tmp_path)
    answer_to(client, {"model": "m", "messages": chat(100)})
    enable_cachy(tmp_path, mode="replay")
    hashed, bits = [], explain.field_bits

    def counting(path, value):
        hashed.append(path)
        return bits(path, value)

    monkeypatch.setattr(explain, "field_bits", counting)
    why(client, {"model": "m", "messages": [*chat(99), {"role": "assistant", "content": "edited"}]})
    same_length = len(hashed)
    hashed.clear()
    why(client, {"model": "m", "messages": chat(400)})
    assert len(hashed) <= 2 * same_length, f"{len(hashed)} fields hashed, against {same_length}"


EMBEDDINGS = "https://api.openai.com/v1/embeddings"


def test_a_batch_of_token_arrays_keeps_its_fingerprint_small_and_able_to_name_a_change(tmp_path):
    """langchain's OpenAIEmbeddings sends its texts as token arrays by default (`input: [[ids...], ...]`,
    up to 1000 texts a request). Both levels are long lists at depth < 4, so each is windowed separately:
    64 texts of 64 tokens, 4098 fields in a 960-bit Bloom filter, and one `:id=length` suffix per held text.
    Observed: a 1010-byte fingerprint on every such entry (README: "under 200 bytes"; before the change it
    was 165), and a filter with every bit set, so a miss can never name anything: the failure the change set
    out to fix ("a Bloom filter too full to name anything") remains for nested long lists. Expected: under
    200 bytes, and a changed last text named. Suggested fix: bound the fields, not only each list: e.g. hash
    a long list whose elements are all scalars as one field (as a depth-4 value is), or window only the
    outermost long list on a path and hash longer lists inside it whole."""
    texts = [[(31 * text + token) % 100_000 for token in range(300)] for text in range(100)]
    body = {"model": "text-embedding-3-small", "input": texts, "encoding_format": "base64"}
    client = Upstream(numbered).client()
    enable_cachy(tmp_path)
    client.post(EMBEDDINGS, json=body)
    shape = entries(tmp_path)[0]["shape"]
    assert len(shape.encode()) < 200, len(shape.encode())
    enable_cachy(tmp_path, mode="replay")
    changed = {**body, "input": [*texts[:99], [*texts[99][:299], 7]]}
    with pytest.raises(CachyMiss) as miss:
        client.post(EMBEDDINGS, json=changed)
    assert "differs in input[99]" in str(miss.value)


# ------------------------------------------------------------------------------ the fingerprint
def test_the_fingerprint_is_small_and_holds_no_request_text_nor_header(tmp_path):
    """Up to 50 messages fit in 200 bytes; the line has neither the prompts' words nor the API key."""
    enable_cachy(tmp_path)
    client = openai.OpenAI(api_key="sk-SECRETKEY123", http_client=Upstream(openai_reply).client(httpx2))
    history = [
        {"role": ("user", "assistant")[i % 2], "content": f"Zanzibar{i} quokka{i} marmalade{i}"} for i in range(50)
    ]
    client.chat.completions.create(
        model="gpt-x", messages=history, temperature=0.3, extra_headers={"x-team": "Ouagadougou"}
    )
    line = (tmp_path / "cachy.jsonl").read_text()
    entry = json.loads(line)
    assert 0 < len(entry["shape"].encode()) <= 200
    for secret in ("Zanzibar", "quokka", "marmalade", "SECRETKEY", "Ouagadougou", "temperature"):
        assert secret not in line


def test_cachy_show_shows_the_fingerprint(tmp_path, capsys):
    keys = recorded_three(tmp_path)
    assert main(["show", keys[1], "--file", str(tmp_path)]) == 0
    assert re.search(r"fingerprint of \d+ request fields", capsys.readouterr().out)


# ---------------------------------------------------------------- a body that cannot be encoded
# `json.dumps` (ensure_ascii, the default; requests' `json=` too) writes a lone surrogate as a `\udce9`
# escape: valid JSON in pure ASCII, which providers accept. Python strings hold such surrogates wherever
# text was decoded with surrogateescape: `os.listdir`, `os.environ`, `sys.argv`, `os.fsdecode` of a
# Latin-1 file name on Linux. `_fields` then calls `str.encode()` on the value, which raises.
SURROGATE_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "summarise caf\udce9.txt"}]})


def test_a_body_with_an_escaped_lone_surrogate_is_answered_not_crashed_in_record_mode(tmp_path):
    """Observed: UnicodeEncodeError ('surrogates not allowed') out of `client.post`, raised by `_fingerprint`
    (`_fields` encodes the value with strict UTF-8) in `Engine.save` after the live call succeeded: the
    provider's answer (already paid for) is lost and nothing is recorded. The README promises "an answer is
    never lost to the cache". Expected: the answer is returned and the entry recorded (`_fields`, `_bits` and
    `_path_id` encode with "surrogatepass", or the fingerprint is skipped when it cannot be made)."""
    enable_cachy(tmp_path)
    upstream = Upstream(numbered)
    response = upstream.client().post(CHAT, content=SURROGATE_BODY.encode(), headers=JSON)
    assert response.json() == {"answer": 1}
    assert len(entries(tmp_path)) == 1


def test_a_replay_miss_of_a_body_with_an_escaped_lone_surrogate_is_a_cachy_miss(tmp_path):
    """Observed: UnicodeEncodeError out of `Engine.explain` (`_differences` -> `_fields`) instead of CachyMiss:
    the pytest plugin and users catching CachyMiss see an unrelated crash, without the explanation.
    Expected: a CachyMiss that explains itself like any other."""
    enable_cachy(tmp_path)
    answer_to(Upstream(numbered).client(), {"model": "m", "messages": [{"role": "user", "content": "hello"}]})
    enable_cachy(tmp_path, mode="replay")
    with pytest.raises(CachyMiss):
        Upstream(numbered).client().post(CHAT, content=SURROGATE_BODY.encode(), headers=JSON)


# ---------------------------------------------- entries without a fingerprint, or a damaged one
def test_a_miss_against_entries_without_fingerprints_still_explains(tmp_path):
    key = request_key(httpx.Request("POST", CHAT, json={"q": "old"}))
    (tmp_path / "cachy.jsonl").write_text(old_line(key, 7) + "\n")
    enable_cachy(tmp_path, mode="replay")
    with pytest.warns(CachyWarning), pytest.raises(CachyMiss, match="none with a fingerprint"):
        answer_to(Upstream(numbered).client(), {"q": "new"})


def test_a_damaged_fingerprint_leaves_a_replay_miss_a_clear_miss(tmp_path):
    upstream = counting()
    enable_cachy(tmp_path)
    n_of(upstream.client(), {"q": 1})
    hand_edit(tmp_path, shape="oops")
    enable_cachy(tmp_path, mode="replay")
    with pytest.raises(CachyMiss, match="none with a fingerprint"):
        n_of(upstream.client(), {"q": 2})
