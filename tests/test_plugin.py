"""The pytest plugin, tested by running real inner pytest sessions with pytester."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import cachy.core
import cachy.plugin

pytest_plugins = ["pytester"]

# An inner test module that calls the real openai SDK against a fake upstream at OpenAI's real URL.
# The upstream counts calls in a file, so the outer test can see whether the inner session went live.
INNER_TESTS = """
import json, pathlib
import httpx2, openai, pytest

CALLS = pathlib.Path(__file__).parent / "upstream_calls"


def upstream(request):
    if pathlib.Path(__file__).parent.joinpath("upstream_down").exists():
        raise httpx2.ConnectError("the upstream is unreachable")
    CALLS.write_text(str(int(CALLS.read_text() or 0) + 1) if CALLS.exists() else "1")
    question = json.loads(request.content)["messages"][0]["content"]
    message = {"role": "assistant", "content": f"answer to {question}"}
    return httpx2.Response(200, json={"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def ask(question):
    client = openai.OpenAI(api_key="k", max_retries=2, http_client=httpx2.Client(transport=httpx2.MockTransport(upstream)))
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": question}])


{tests}
"""

SESSION_TESTS = """
def test_one():
    assert ask("one").choices[0].message.content == "answer to one"

def test_two():
    assert ask("two").choices[0].message.content == "answer to two"
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    """A pytester folder with the inner tests; returns a function that writes them and counts upstream calls."""
    monkeypatch.delenv("CACHY_MODE", raising=False)

    def write(tests: str = SESSION_TESTS, **files):
        pytester.makepyfile(test_inner=INNER_TESTS.replace("{tests}", textwrap.dedent(tests)), **files)

    return write


def upstream_calls(pytester) -> int:
    path = pytester.path / "upstream_calls"
    return int(path.read_text()) if path.exists() else 0


def cache_lines(pytester) -> list[dict]:
    return [json.loads(line) for line in (pytester.path / "cachy.jsonl").read_text().splitlines()]


HEAVY = f"sorted(name for name in {('httpx', 'httpx2', 'cachy.core')!r} if name in sys.modules)"


def test_importing_the_plugin_imports_neither_httpx_nor_the_core(tmp_path):
    """pytest imports the plugin at the start of every session, so it must cost next to nothing."""
    code = f"import sys, cachy.plugin; print({HEAVY})"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_a_session_that_does_not_use_cachy_never_imports_its_core(pytester):
    pytester.makeconftest(f"""
        import pathlib, sys

        def pytest_unconfigure(config):
            loaded = config.pluginmanager.has_plugin("cachy")
            pathlib.Path("imported").write_text(repr((loaded, {HEAVY})))
    """)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    assert (pytester.path / "imported").read_text() == "(True, [])"


def test_the_plugins_mode_names_are_the_cores():
    assert cachy.plugin.MODES == cachy.core.MODES


def test_a_session_records_then_replays_with_the_upstream_down(pytester, inner):
    inner()
    first = pytester.runpytest("--cachy")
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["cachy: 0 hits, 2 recorded, * 0 replay misses"])
    assert upstream_calls(pytester) == 2
    (pytester.path / "upstream_down").touch()
    replay = pytester.runpytest("--cachy", "--cachy-mode=replay")
    replay.assert_outcomes(passed=2)
    replay.stdout.fnmatch_lines(["cachy: 2 hits, 0 recorded, * 0 replay misses"])
    assert upstream_calls(pytester) == 2


def test_the_ini_setting_and_cachy_dir(pytester, inner):
    inner()
    pytester.makeini("[pytest]\ncachy = true\n")
    pytester.runpytest("--cachy-dir", "recordings").assert_outcomes(passed=2)
    assert len((pytester.path / "recordings" / "cachy.jsonl").read_text().splitlines()) == 2
    assert not (pytester.path / "cachy.jsonl").exists()


def test_a_replay_miss_fails_its_test_fast_with_the_clear_message(pytester, inner):
    inner()
    pytester.runpytest("--cachy", "-k", "one").assert_outcomes(passed=1)
    result = pytester.runpytest("--cachy", "--cachy-mode=replay", "--durations=0", "-vv")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*CachyMiss: cachy: no recorded response for POST https://api.openai.com/v1/chat/completions (key *) in *"
            "cachy.jsonl, and cachy is in replay mode. Record it by running once with API keys in record mode*",
            "*Why it missed: The closest recorded request (key *) differs in messages[[]0[]].content.",
            "cachy: 1 hits, 0 recorded, * 1 replay misses",
        ]
    )
    assert "Connection error" not in result.stdout.str()
    assert upstream_calls(pytester) == 1  # only the recording run went live


def test_the_mode_comes_from_cachy_mode_by_default(pytester, inner, monkeypatch):
    inner()
    monkeypatch.setenv("CACHY_MODE", "replay")
    pytester.runpytest("--cachy").assert_outcomes(failed=2)
    assert upstream_calls(pytester) == 0


def test_the_fixture_and_the_marker_cache_one_test_and_restore_afterwards(pytester, inner):
    inner(
        """
        from cachy import core

        def test_fixture(cachy):
            ask("one")
            ask("one")
            assert (cachy.hits, cachy.recorded) == (1, 1)

        @pytest.mark.cachy(mode="refresh")
        def test_marker():
            ask("one")
            assert core._current_engine().mode == "refresh"

        def test_neither():
            assert core._current_engine() is None
            ask("one")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)
    assert upstream_calls(pytester) == 3  # fixture: one live call; marker: refreshed; no cachy: live
    assert len(cache_lines(pytester)) == 2
    result.stdout.fnmatch_lines(["cachy: 1 hits, 2 recorded, * 0 replay misses"])


def test_prune_after_a_complete_green_session_keeps_only_used_entries(pytester, inner):
    inner()
    pytester.runpytest("--cachy").assert_outcomes(passed=2)
    inner(SESSION_TESTS.replace("two", "three"))
    result = pytester.runpytest("--cachy", "--cachy-prune")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["cachy: pruned 1 unused entries, kept 2"])
    answers = sorted(
        json.loads(entry["response"])["choices"][0]["message"]["content"] for entry in cache_lines(pytester)
    )
    assert answers == ["answer to one", "answer to three"]


@pytest.mark.parametrize(
    ("args", "tests", "reason"),
    [
        (["-k", "one"], SESSION_TESTS, "1 tests deselected"),
        (["test_inner.py::test_one"], SESSION_TESTS, "only test_inner.py::test_one selected"),
        ([], SESSION_TESTS + "\ndef test_fails():\n    assert False\n", "exit status 1"),
        ([], SESSION_TESTS + "\n@pytest.mark.skip\ndef test_skipped():\n    ask('other')\n", "1 tests skipped"),
    ],
    ids=["deselected", "narrowed", "failed", "skipped"],
)
def test_prune_refuses_a_partial_run(pytester, inner, args, tests, reason):
    inner()
    pytester.runpytest("--cachy").assert_outcomes(passed=2)
    before = (pytester.path / "cachy.jsonl").read_text()
    inner(tests)
    result = pytester.runpytest("--cachy", "--cachy-prune", *args)
    result.stdout.fnmatch_lines([f"cachy: not pruned, the run was partial: *{reason}*"])
    assert (pytester.path / "cachy.jsonl").read_text() == before


@pytest.mark.slow
def test_prune_under_xdist_merges_every_workers_keys(pytester, inner):
    tests = "\n".join(f"def test_{n}():\n    ask('{n}')\n" for n in ("a", "b", "c", "d"))
    inner(tests)
    pytester.runpytest("--cachy").assert_outcomes(passed=4)
    inner(tests.replace("ask('d')", "ask('e')"))
    pytester.runpytest("--cachy").assert_outcomes(passed=4)
    assert len(cache_lines(pytester)) == 5
    result = pytester.runpytest("--cachy", "--cachy-prune", "-n", "2")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["cachy: 4 hits, 0 recorded, * 0 replay misses", "cachy: pruned 1 unused entries, kept 4"]
    )
    answers = {json.loads(entry["response"])["choices"][0]["message"]["content"] for entry in cache_lines(pytester)}
    assert answers == {f"answer to {n}" for n in "abce"}


@pytest.mark.slow
def test_prune_cachy_inside_an_xdist_worker_refuses(pytester, inner):
    inner(
        """
        from cachy import prune_cachy

        def test_prune_in_worker(cachy):
            ask("one")
            with pytest.raises(RuntimeError, match="worker gw"):
                prune_cachy()
        """
    )
    pytester.runpytest("-n", "1").assert_outcomes(passed=1)
