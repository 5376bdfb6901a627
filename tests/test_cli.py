"""The `cachy` command: stats, show, compact, demo, and errors as one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CHAT, Upstream, entries

from cachy import disable_cachy, enable_cachy
from cachy.cli import main


@pytest.fixture
def recorded(tmp_path):
    """A cache file with two chat calls, one streamed call, one binary answer, a duplicate and a damaged line."""
    enable_cachy(tmp_path)
    Upstream(
        lambda request, n: (200, {"content-type": "application/json"}, b'{"answer": {"text": "hi"}}')
    ).client().post(CHAT, json={"q": 1})
    Upstream(lambda request, n: (200, {"content-type": "application/json"}, b'{"answer": 2}')).client().post(
        CHAT, json={"q": 2}
    )
    events = b'event: message_start\ndata: {"type": "message_start"}\n\nevent: message_stop\ndata: {"type": "x"}\n\n'
    sse = Upstream(lambda request, n: (200, {"content-type": "text/event-stream"}, events)).client()
    with sse.stream("POST", "https://api.anthropic.com/v1/messages", json={"stream": True}) as response:
        response.read()
    audio = Upstream(lambda request, n: (200, {"content-type": "audio/mpeg"}, bytes(range(256))))
    audio.client().post("https://api.openai.com/v1/audio/speech", json={"input": "hi"})
    disable_cachy()
    path = tmp_path / "cachy.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + lines[0] + "<<<<<<< HEAD\n")
    return path


def run(*args) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", "cachy", *args], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_stats_counts_entries_duplicates_damage_and_bytes_by_endpoint(recorded, capsys):
    assert main(["stats", str(recorded)]) == 0
    out = capsys.readouterr().out
    first_key = entries_key(recorded, 0)
    assert f"{recorded}: 4 entries, {recorded.stat().st_size:,} bytes" in out
    assert f"duplicate keys: 1 ({first_key})" in out
    assert "damaged lines: [6]" in out
    rows = {line.split()[-1]: line.split() for line in out.splitlines() if line.strip().startswith(("1", "2", "3"))}
    assert rows["api.openai.com/v1/chat/completions"][0] == "3"  # two entries, one of them twice
    assert rows["api.anthropic.com/v1/messages"][0] == "1"
    assert rows["api.openai.com/v1/audio/speech"][0] == "1"


def entries_key(path, index: int) -> str:
    return json.loads(path.read_text().splitlines()[index])["key"]


def test_show_pretty_prints_json_and_splits_events(recorded, capsys):
    assert main(["show", entries_key(recorded, 0), "--file", str(recorded)]) == 0
    out = capsys.readouterr().out
    assert "request: POST https://api.openai.com/v1/chat/completions" in out
    assert '{\n  "answer": {\n    "text": "hi"\n  }\n}' in out
    assert main(["show", entries_key(recorded, 2)[:6], "--file", str(recorded.parent)]) == 0
    out = capsys.readouterr().out
    assert '--- event 1\nevent: message_start\ndata: {"type": "message_start"}\n--- event 2' in out
    assert main(["show", entries_key(recorded, 3), "--file", str(recorded)]) == 0
    assert "<256 bytes of binary data>" in capsys.readouterr().out


def test_compact_reports_what_it_dropped(recorded, capsys):
    assert main(["compact", str(recorded)]) == 0
    out = capsys.readouterr().out
    assert "kept 4 entries, dropped 1 duplicates, damaged lines dropped: [6]" in out
    keys = [entry["key"] for entry in entries(recorded.parent)]
    assert keys == sorted(keys) and len(keys) == 4


def test_errors_are_one_line_and_exit_code_1(recorded, tmp_path):
    code, out, err = run("stats", str(tmp_path / "missing.jsonl"))
    assert (code, out) == (1, "")
    assert err == f"cachy stats: no cache file at {tmp_path / 'missing.jsonl'}\n"
    code, out, err = run("show", "ffffffffffffffff", "--file", str(recorded))
    assert code == 1 and err.startswith("cachy show: no entry with key 'ffffffffffffffff'") and "Traceback" not in err
    code, _, err = run("show", "", "--file", str(recorded))
    assert code == 1 and "is the start of 4 keys" in err


def test_help_lists_every_command():
    code, out, _ = run("--help")
    assert code == 0
    assert all(command in out for command in ("stats", "show", "compact", "demo"))


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "cachy"
    result = subprocess.run([script, "stats", "--help"], capture_output=True, text=True, check=True)
    assert "damaged lines" in result.stdout


def test_demo_records_then_replays_offline(tmp_path, capsys, monkeypatch):
    from cachy import demo

    monkeypatch.setattr(demo.tempfile, "tempdir", str(tmp_path))
    path = demo.run(delay=0.05)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[1:5]] == ["call 1", "call 2", "stream 1", "stream 2"]
    assert "miss, recorded" in lines[1] and "hit" in lines[2]
    assert "miss, recorded" in lines[3] and "hit" in lines[4]
    assert "2 hits, 2 recorded" in lines[5] and "The provider was called 2 times." in out
    assert len(entries(path.parent)) == 2
