"""Repeats (`repeats=True`): the n-th identical request gets the n-th recorded answer, in every mode, through
compaction, a git union merge and the pytest marker; without it, identical requests share one answer."""

from __future__ import annotations

import json

import pytest
from helpers import JSON, Upstream, answer_to, as_a_new_process, entries, git, numbered

from cachy import CachyMiss, cachy, compact_cachy, disable_cachy, enable_cachy

pytest_plugins = ["pytester"]


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


# ------------------------------------------------------------------------ compaction and merges
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


# ---------------------------------------------------------------------------- the pytest marker
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
