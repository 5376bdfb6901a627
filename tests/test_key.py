"""The request key: what goes into it, and what is left out on purpose."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import httpx2
import pytest
from helpers import CHAT, Upstream, as_a_new_process, entries

from cachy import CachyWarning, core, disable_cachy, enable_cachy, normalise, request_key
from cachy.cli import main

URL = "https://api.openai.com/v1/chat/completions"


def key(method="POST", url=URL, stream=False, module=httpx, **kwargs) -> str:
    return request_key(module.Request(method, url, **kwargs), stream)


def test_api_key_rotation_still_hits():
    assert key(json={"a": 1}, headers={"authorization": "Bearer old"}) == key(
        json={"a": 1}, headers={"authorization": "Bearer new", "x-api-key": "other"}
    )


def test_gemini_key_param_is_stripped_but_other_params_count():
    gemini = "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent"
    assert key(url=f"{gemini}?key=AAA") == key(url=f"{gemini}?key=BBB") == key(url=gemini)
    assert key(url=f"{gemini}?alt=sse&key=AAA") == key(url=f"{gemini}?alt=sse")
    assert key(url=f"{gemini}?alt=sse") != key(url=gemini)


def test_json_key_order_does_not_matter():
    assert key(content=b'{"model": "m", "n": 1}') == key(content=b'{"n":1,"model":"m"}')
    assert key(json={"model": "m", "n": 1}) != key(json={"model": "m", "n": 2})


def test_method_counts():
    assert key("GET", url="https://api.openai.com/v1/files/f1") != key(
        "DELETE", url="https://api.openai.com/v1/files/f1"
    )


def test_stream_flag_counts():
    assert key(json={"a": 1}, stream=True) != key(json={"a": 1}, stream=False)


def test_multipart_boundary_is_ignored_but_content_counts():
    def upload(content: bytes, module=httpx) -> str:
        request = module.Request("POST", "https://api.anthropic.com/v1/files", files={"file": ("a.txt", content)})
        request.read()
        return request_key(request)

    first, second = upload(b"hello"), upload(b"hello")
    assert first == second
    assert upload(b"other") != first
    assert upload(b"hello", module=httpx2) == first


def test_key_is_64_bits_of_hex_and_the_same_for_httpx_and_httpx2():
    assert len(key(json={"a": 1})) == 16
    assert set(key(json={"a": 1})) <= set("0123456789abcdef")
    assert key(json={"a": 1}) == key(module=httpx2, json={"a": 1})


def test_raw_bytes_that_claim_to_be_json_are_hashed_as_they_are():
    blob = bytes(range(256))
    assert key(content=blob, headers={"content-type": "application/json"}) != key(content=blob[::-1])


# ------------------------------------------------------------------------ keys that travel (issue 12)
def chat(text: str, model: str = "gpt-4.1-mini", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def hits(folder, recorded: dict, replayed: dict) -> bool:
    """Record `recorded` in `folder`, then send `replayed`: whether it was answered without a live call."""
    upstream = Upstream(lambda request, n: (200, {"content-type": "application/json"}, b'{"n": %d}' % n))
    enable_cachy(folder)
    upstream.client().post(URL, json=recorded)
    upstream.client().post(URL, json=replayed)
    disable_cachy()
    return upstream.calls == 1


NOTEBOOK_RULES = normalise.key_rules[len(normalise.machine_rules()) :]


def machine_rules(monkeypatch, home: str, prefix: str) -> list[tuple[str, str]]:
    """`key_rules` as another machine builds them at import: its home folder and Python prefix."""
    with monkeypatch.context() as machine:
        machine.setenv("HOME", home)
        machine.setattr(sys, "prefix", prefix)
        machine.setattr(sys, "base_prefix", prefix)
        return [*normalise.machine_rules(), *NOTEBOOK_RULES]


def traceback(site_packages: str, project: Path, home: str, prefix: str) -> str:
    return (
        "This failed, why?\nTraceback (most recent call last):\n"
        f'  File "{project}/nbs/00_core.py", line 12, in <module>\n'
        f'  File "{site_packages}/toolslm/funccall.py", line 40, in call_func\n'
        f"FileNotFoundError: {home}/.config/tool.toml (run by {prefix}/bin/python)"
    )


def projects(tmp_path) -> tuple[Path, Path]:
    """Alice's checkout and this machine's, in different places, each with its pyproject.toml."""
    alice_project, here = tmp_path / "alice" / "proj", tmp_path / "bob" / "work" / "proj"
    for project in (alice_project, here):
        project.mkdir(parents=True)
        (project / "pyproject.toml").write_text("")
    return alice_project, here


def record_elsewhere(monkeypatch, upstream, project: Path, body: dict, home: str, prefix: str) -> None:
    """Record `body` in `project` as a machine with this home folder and Python prefix would."""
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr(normalise, "key_rules", machine_rules(monkeypatch, home, prefix))
        elsewhere.chdir(project)
        enable_cachy(project)
        upstream.client().post(URL, json=body)
        disable_cachy()


def replay_here(monkeypatch, upstream, recorded_in: Path, project: Path, body: dict) -> httpx.Response:
    """Replay `body` on this machine, from a copy of the file recorded in `recorded_in`: CachyMiss if it misses."""
    monkeypatch.chdir(project)
    shutil.copy(recorded_in / "cachy.jsonl", project / "cachy.jsonl")
    enable_cachy(project, mode="replay")
    return upstream.client().post(URL, json=body)


def echoed(request, n):
    """Answers with the request's exact body: what the upstream received, and what the file stores."""
    return 200, {"content-type": "application/json"}, request.content


def test_a_body_recorded_on_one_machine_hits_on_another(tmp_path, monkeypatch):
    """Alice records with her paths; this machine replays with its own home, prefix and project folder,
    and another Python's site-packages: the same key. Upstream and file see the exact original."""
    alice_project, here = projects(tmp_path)
    alice = chat(
        traceback("/home/alice/.venv/lib/python3.11/site-packages", alice_project, "/home/alice", "/home/alice/.venv")
    )
    bob = chat(traceback("/Users/bob/venvs/x/lib/python3.12/site-packages", here, str(Path.home()), sys.prefix))
    echo = Upstream(echoed)
    record_elsewhere(monkeypatch, echo, alice_project, alice, "/home/alice", "/home/alice/.venv")
    replayed = replay_here(monkeypatch, echo, alice_project, here, bob)
    assert echo.calls == 1
    assert json.loads(replayed.content) == alice  # alice's answer, to this machine's request
    sent = echo.requests[0].content
    assert sent == httpx.Request("POST", URL, json=alice).content  # the upstream got alice's exact body
    line = (here / "cachy.jsonl").read_text()
    assert json.loads(line)["response"] == sent.decode()
    for placeholder in ("<site-packages>", "<project>", "<python>", "~/", "<tmp>", "<cell>"):
        assert placeholder not in line


def test_a_virtual_environment_inside_the_project_travels_too(tmp_path, monkeypatch):
    """uv's default: the venv is `.venv` in the project, so its site-packages and prefix are also under the
    project folder. They must key as any other site-packages and prefix do, not as project files."""
    alice_project, here = projects(tmp_path)
    venv = f"{alice_project}/.venv"
    alice = chat(traceback(f"{venv}/lib/python3.11/site-packages", alice_project, "/home/alice", venv))
    bob = chat(traceback("/Users/bob/venvs/x/lib/python3.12/site-packages", here, str(Path.home()), sys.prefix))
    echo = Upstream(echoed)
    record_elsewhere(monkeypatch, echo, alice_project, alice, "/home/alice", venv)
    assert json.loads(replay_here(monkeypatch, echo, alice_project, here, bob).content) == alice


def test_a_folder_rule_matches_a_whole_path_not_the_end_of_another(tmp_path, monkeypatch):
    """This machine's home folder inside a URL or another absolute path is not the home folder: it must
    key alike on a machine whose home is elsewhere. (The project paths make the two bodies differ, so the
    replay is found by its normalised key, not by its exact bytes.)"""
    alice_project, here = projects(tmp_path)
    text = f"see https://example.com{Path.home()}/docs and /srv/backup{Path.home()}/notes, then " + "{}/app.py"
    echo = Upstream(echoed)
    alice = chat(text.format(alice_project))
    record_elsewhere(monkeypatch, echo, alice_project, alice, "/home/alice", "/home/alice/.venv")
    assert json.loads(replay_here(monkeypatch, echo, alice_project, here, chat(text.format(here))).content) == alice


def test_the_machine_rules_are_in_the_public_list():
    """`key_rules` holds (pattern, replacement) pairs for installed packages, the interpreter and home."""

    def normalised(text: str) -> str:
        for pattern, replacement in normalise.key_rules:
            text = re.sub(pattern, replacement, text)
        return text

    for folder in (sys.prefix, str(Path.home()), "/opt/py/lib/python3.13/dist-packages"):
        assert folder not in normalised(f"{folder}/x/y.py")


def test_the_project_folder_is_a_rule_from_enable_time(tmp_path, monkeypatch):
    """Both the folder of cachy.jsonl and the nearest pyproject.toml's folder: two checkouts in different
    places key the same body, each with its own paths, alike."""
    keys = []
    for checkout in ("one", "elsewhere/two"):
        project = tmp_path / checkout / "proj"
        (project / "recordings").mkdir(parents=True)
        (project / "pyproject.toml").write_text("")
        monkeypatch.chdir(project)
        enable_cachy(project / "recordings")
        keys.append(key(json=chat(f"see {project}/src/app.py and {project / 'recordings'}/notes.md")))
        assert key(json=chat(f"see {project}/src/other.py and {project / 'recordings'}/notes.md")) != keys[-1]
        disable_cachy()
    assert keys[0] == keys[1]


# ------------------------------------------------------------------------------- notebook noise
NOISE = {
    "ipykernel cell": (
        'File "/tmp/ipykernel_12345/3385730958.py", line 3',
        'File "/tmp/ipykernel_999/11.py", line 3',
        'File "/tmp/ipykernel_12345/3385730958.py", line 4',
    ),
    "ipython input": (
        "<ipython-input-3-a1b2c3d4e5f6> in f()",
        "<ipython-input-12-0f9e8d7c6b5a> in f()",
        "<ipython-input-3-a1b2c3d4e5f6> in g()",
    ),
    "memory address": (
        "got <function add at 0x7f3a2b1c4d50>",
        "got <function add at 0x55d0c0ffee00>",
        "got <function sub at 0x7f3a2b1c4d50>",
    ),
    "linux temp folder": ("open /tmp/tmpab12cd34/x.txt", "open /tmp/tmp9_zz8yq1/x.txt", "open /tmp/tmpab12cd34/y.txt"),
    "macos temp folder": (
        "open /var/folders/xy/abc123/T/tmpq1w2e3r4/x",
        "open /var/folders/k7/zz_99q/T/tmp00aa11bb/x",
        "open /var/folders/xy/abc123/T/tmpq1w2e3r4/y",
    ),
}


@pytest.mark.parametrize("rule", NOISE)
def test_notebook_noise_does_not_change_the_key_but_what_follows_it_does(tmp_path, rule):
    recorded, same, other = NOISE[rule]
    assert hits(tmp_path / "same", chat(recorded), chat(same))
    assert not hits(tmp_path / "other", chat(recorded), chat(other))


def test_a_short_hex_number_is_no_memory_address(tmp_path):
    assert not hits(tmp_path, chat("flags 0x1f"), chat("flags 0x2f"))


@pytest.mark.parametrize(
    ("recorded", "replayed"),
    [
        ("Convert 0xFF00FF to RGB.", "Convert 0x00FF00 to RGB."),
        ("mask = 0xFFFF0000; explain", "mask = 0x0000FFFF; explain"),
        (
            "Balance of 0x742d35Cc6634C0532925a3b844Bc454e4438f44e?",
            "Balance of 0xde0B295669a9FD93d5F28D9Ec85E40f4cb697BAe?",
        ),
    ],
    ids=["colour", "mask", "ethereum address"],
)
def test_a_hex_number_in_the_prompt_is_no_memory_address(tmp_path, recorded, replayed):
    """Only the address in a repr (`<function f at 0x7f...>`) is noise: other hex numbers are the question."""
    assert not hits(tmp_path, chat(recorded), chat(replayed))


def test_openais_prompt_cache_key_does_not_change_the_key(tmp_path):
    """Wrappers make a new one per session; it is a routing hint, not part of the question."""
    assert hits(tmp_path / "same", chat("hi", prompt_cache_key="sess-1"), chat("hi", prompt_cache_key="sess-2"))
    assert not hits(tmp_path / "other", chat("hi", prompt_cache_key="sess-1"), chat("ho", prompt_cache_key="sess-1"))


@pytest.mark.parametrize(
    ("recorded", "replayed"),
    [
        (chat("hi"), chat("hello")),
        (chat("hi"), chat("hi", model="gpt-4.1")),
        (
            chat("in /home/a/.venv/lib/python3.11/site-packages/toolslm/funccall.py"),
            chat("in /home/a/.venv/lib/python3.11/site-packages/toolslm/shell.py"),
        ),
        (
            chat("in /home/a/.venv/lib/python3.11/site-packages/toolslm/funccall.py"),
            chat("in /home/a/.venv/lib/python3.11/site-packages/fastcore/funccall.py"),
        ),
    ],
    ids=["prompt", "model", "file under site-packages", "package under site-packages"],
)
def test_what_the_rules_leave_alone_still_misses(tmp_path, recorded, replayed):
    assert not hits(tmp_path, recorded, replayed)


def test_a_rule_appended_by_the_user_works(tmp_path, monkeypatch):
    monkeypatch.setattr(normalise, "key_rules", list(normalise.key_rules))  # put back after the test
    assert not hits(tmp_path / "before", chat("run 2024-05-01 ok"), chat("run 2025-06-02 ok"))
    normalise.key_rules.append((r"\d{4}-\d\d-\d\d", "<date>"))
    assert hits(tmp_path / "after", chat("run 2024-05-01 ok"), chat("run 2025-06-02 ok"))
    assert not hits(tmp_path / "still", chat("run 2024-05-01 ok"), chat("run 2025-06-02 failed"))


# ---------------------------------------------------------------------------------- key versions
REFERENCE = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_the_key_formula_is_pinned():
    """If this fails, the key formula changed: bump KEY_VERSION, and note it in the README.

    Version 1 (the cachy before key versions) gave this request the same key: version 2 only added
    normalisation rules, and none of them touches this body. 325408a81cb69f07 was computed with the
    version 1 code (commit d2471e2) and with this one."""
    version_2, version_1 = "325408a81cb69f07", "325408a81cb69f07"
    assert core.KEY_VERSION == 2
    assert key(json=REFERENCE) == version_2 == version_1
    assert key(json=REFERENCE, stream=True) == "3dd3dbbc5cc2d70a"


def version_1_line(request: httpx.Request, response: dict) -> str:
    """A line as the cachy before key versions wrote it: no "v", no "raw", no "n"."""
    entry = {
        "key": request_key(request),
        "method": request.method,
        "url": str(request.url),
        "status_code": 200,
        "headers": {"content-type": "application/json"},
        "response": json.dumps(response),
    }
    return json.dumps(entry, ensure_ascii=False) + "\n"


@pytest.fixture
def mixed_file(tmp_path):
    """A cache file with two version 1 entries (questions 1 and 2) and one that this cachy recorded (3)."""
    lines = [version_1_line(httpx.Request("POST", URL, json=chat(f"q{n}")), {"old": n}) for n in (1, 2)]
    (tmp_path / "cachy.jsonl").write_text("".join(lines))
    enable_cachy(tmp_path)
    with pytest.warns(CachyWarning):
        Upstream(lambda request, n: (200, {}, b'{"new": 3}')).client().post(URL, json=chat("q3"))
    disable_cachy()
    as_a_new_process()
    return tmp_path / "cachy.jsonl"


def test_new_entries_carry_the_key_version(tmp_path):
    enable_cachy(tmp_path)
    Upstream(lambda request, n: (200, {}, b"{}")).client().post(URL, json=chat("hi"))
    assert [entry["v"] for entry in entries(tmp_path)] == [core.KEY_VERSION] == [2]


def test_version_1_entries_still_hit_with_one_warning_naming_the_fix(mixed_file):
    enable_cachy(mixed_file.parent, mode="replay")
    client = Upstream(lambda request, n: (200, {}, b"{}")).client()
    with pytest.warns(CachyWarning) as warned:
        answers = [client.post(URL, json=chat(f"q{n}")).json() for n in (1, 2, 3, 1)]
    assert answers == [{"old": 1}, {"old": 2}, {"new": 3}, {"old": 1}]
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "2 by key version 1" in message
    assert "cachy compact --drop-stale" in message


def test_stats_shows_the_key_versions_and_compact_drops_the_stale_ones(mixed_file, capsys):
    assert main(["stats", str(mixed_file)]) == 0
    assert "key versions: 2 by version 1, 1 by version 2" in capsys.readouterr().out
    assert main(["compact", "--drop-stale", str(mixed_file)]) == 0
    assert "kept 1 entries" in (out := capsys.readouterr().out) and "dropped 2 entries of other key versions" in out
    assert [entry.get("v") for entry in entries(mixed_file.parent)] == [2]
    assert main(["stats", str(mixed_file)]) == 0
    assert "key versions: 1 by version 2" in capsys.readouterr().out


def test_the_text_before_a_package_path_is_not_part_of_it(tmp_path):
    """Only the folders up to site-packages are normalised. In the body as sent, a newline before the path
    is the JSON escape `\\n`, whose backslash the rule takes for a path separator: it must stay prompt text,
    or a newline and a tab there (two different prompts) share a key, and one gets the other's answer."""
    path = "/home/a/.venv/lib/python3.11/site-packages/toolslm/funccall.py"
    assert not hits(tmp_path, chat(f"files:\n{path}"), chat(f"files:\t{path}"))


def test_a_default_port_does_not_change_the_key():
    """requests keeps an explicit `:443` in the URL where httpx drops it: the same request either way."""
    assert core.public_url("https://api.openai.com:443/v1/chat/completions") == URL
    assert core.public_url("http://127.0.0.1:80/v1") == "http://127.0.0.1/v1"
    assert core.public_url("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"


# ------------------------------------------------------ normalisation at its edges, and headers
def key_of(text: str) -> str:
    return key(json={"messages": [{"role": "user", "content": text}]})


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
