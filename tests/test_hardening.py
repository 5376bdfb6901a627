"""What an adversarial review of the engine found: each test failed before its fix."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from helpers import CHAT, SSE, Upstream, counting, entries, hand_edit, n_of

from cachy import compact_cachy, core, disable_cachy, enable_cachy, request_key


def key_of(text: str) -> str:
    return request_key(httpx.Request("POST", CHAT, json={"messages": [{"role": "user", "content": text}]}))


# ------------------------------------------------------------------------------------ the key
def test_a_long_run_of_slashes_is_normalised_in_linear_time(tmp_path):
    """The site-packages rule once re-scanned from every slash: 120 KB of `/ab` took two minutes."""
    script = (
        "import json, httpx; from cachy import request_key\n"
        "body = json.dumps({'m': '/ab' * 40_000 + ' 2024/01/02,' * 2_000})\n"
        "request_key(httpx.Request('POST', 'https://api.openai.com/v1/x', content=body.encode()))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30, cwd=tmp_path)


def test_a_file_named_like_a_temp_folder_is_not_one():
    assert key_of("Summarise /tmp/tmp_report_2023.csv") != key_of("Summarise /tmp/tmp_report_2024.csv")
    assert key_of("open /tmp/tmpab12cd34/x") == key_of("open /tmp/tmpzz99yy88/x")  # tempfile's own names


def test_a_notebook_traceback_keys_alike_on_linux_and_macos():
    linux = 'File "/tmp/ipykernel_4242/3385730958.py", line 3'
    macos = 'File "/var/folders/x1/abc_de/T/ipykernel_77/1234.py", line 3'
    assert key_of(linux) == key_of(macos)


def test_beta_headers_change_the_key_and_other_headers_do_not():
    def key(headers: dict) -> str:
        return request_key(httpx.Request("POST", CHAT, json={"q": 1}, headers=headers))

    assert key({"anthropic-beta": "context-1m"}) != key({})
    assert key({"openai-beta": "assistants=v2"}) != key({})
    assert key({"x-api-key": "one", "user-agent": "a"}) == key({"x-api-key": "two", "user-agent": "b"})


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://generativelanguage.googleapis.com/v1/x?alt=sse;key=AIza-secret", "AIza-secret"),
        ("https://api.openai.com/v1/x?bearer=tok-secret", "tok-secret"),
        ("https://api.openai.com/v1/x?Authorization=tok-secret", "tok-secret"),
        ("https://api.openai.com/v1/x#access_token=tok-secret", "tok-secret"),
    ],
)
def test_secrets_in_other_corners_of_a_url_stay_out(url, secret):
    assert secret not in core.public_url(url)


# ---------------------------------------------------------------------------------- the file
def test_a_file_replaced_by_rename_is_read_again_before_a_replay_miss(tmp_path):
    """A git checkout or pull replaces the file: its entries hit at once, without a re-enable."""
    upstream = counting()
    client = upstream.client()
    enable_cachy(tmp_path / "other")
    n_of(client, {"q": "other"})
    enable_cachy(tmp_path / "d")
    n_of(client, {"q": "mine"})
    enable_cachy(tmp_path / "d", mode="replay")
    assert n_of(client, {"q": "mine"}) == 2
    merged = (tmp_path / "d" / "cachy.jsonl").read_bytes() + (tmp_path / "other" / "cachy.jsonl").read_bytes()
    (tmp_path / "d" / "new").write_bytes(merged)
    os.replace(tmp_path / "d" / "new", tmp_path / "d" / "cachy.jsonl")
    assert n_of(client, {"q": "other"}) == 1
    assert upstream.calls == 2


def test_a_deleted_file_is_started_afresh_and_keeps_recording(tmp_path):
    upstream = counting()
    client = upstream.client()
    enable_cachy(tmp_path)
    n_of(client, {"q": 1})
    (tmp_path / "cachy.jsonl").unlink()
    assert n_of(client, {"q": 2}) == 2
    assert [entry["response"] for entry in entries(tmp_path)] == ['{"n": 2}']


def test_another_programs_json_lines_are_no_entries(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"key": "user1", "event": "login"}\n{"key": "user1", "event": "logout"}\n')
    with pytest.raises(ValueError, match="not a cachy file"):
        compact_cachy(events)
    assert "login" in events.read_text()


def test_compaction_keeps_the_good_copy_when_a_later_one_is_damaged(tmp_path):
    enable_cachy(tmp_path)
    counting().client().post(CHAT, json={"q": 1})
    disable_cachy()
    path = tmp_path / "cachy.jsonl"
    good = path.read_text()
    damaged = good.replace('"response": "{\\"n\\": 1}"', '"response": {"n": 1}')  # hand-edited: not a string
    path.write_text(good + damaged)
    result = compact_cachy(tmp_path)
    assert (result.kept, result.damaged) == (1, [2])
    assert path.read_text() == good


def test_a_stored_header_cachy_never_writes_cannot_break_a_hit(tmp_path):
    upstream = counting()
    enable_cachy(tmp_path)
    n_of(upstream.client(), {"q": 1})
    hand_edit(tmp_path, headers={"content-type": "application/json", "content-encoding": "gzip"})
    enable_cachy(tmp_path)
    assert n_of(upstream.client(), {"q": 1}) == 1


# ------------------------------------------------------------------------------- what is recorded
def test_an_error_event_in_a_streamed_200_is_not_recorded(tmp_path):
    """anthropic reports overload inside a 200 stream: replaying it would freeze a transient failure."""
    bodies = [
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n',
        b"event: x\ndata: 1\n\n",
    ]
    upstream = Upstream(lambda request, n: (200, SSE, bodies[min(n, 2) - 1]))
    enable_cachy(tmp_path)
    client = upstream.client()
    for expected in bodies:
        with client.stream("POST", "https://api.anthropic.com/v1/messages", json={"stream": True}) as response:
            assert response.read() == expected
    assert upstream.calls == 2
    assert len(entries(tmp_path)) == 1
