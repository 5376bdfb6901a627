"""Entries that expire: `max_age` in its forms and from the environment, an expired entry recorded again in
record mode and served with one warning in replay mode, entries without a recording time, and the command
line's ages and `compact --older-than`."""

from __future__ import annotations

import datetime
import json
import textwrap

import pytest
from helpers import CHAT, counting, entries, n_of

from cachy import CachyWarning, cachy, cachy_stats, compact_cachy, disable_cachy, enable_cachy
from cachy.cli import main
from cachy.expiry import seconds_of

pytest_plugins = ["pytester"]
DAY = 86400


def days_ago(days: float) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def aged(folder, *ages: float | None) -> None:
    """Give the entries of `folder/cachy.jsonl`, in order, these ages in days (None: no recording time)."""
    path = folder / "cachy.jsonl"
    rewritten = []
    for entry, age in zip(entries(folder), ages, strict=True):
        entry.pop("recorded_at")
        rewritten.append({**entry, **({} if age is None else {"recorded_at": days_ago(age)})})
    path.write_text("".join(json.dumps(entry) + "\n" for entry in rewritten))


def recorded(folder, questions, *ages: float | None):
    """An upstream that answered `questions` once each, recorded into `folder` with these ages."""
    upstream = counting()
    enable_cachy(folder)
    for question in questions:
        n_of(upstream.client(), {"q": question})
    disable_cachy()
    aged(folder, *ages)
    return upstream


@pytest.mark.parametrize(
    "value, seconds",
    [
        (30, 30.0),
        (2.5, 2.5),
        (datetime.timedelta(hours=2), 7200.0),
        ("30d", 30 * DAY),
        ("12h", 43200.0),
        ("90m", 5400.0),
        ("45s", 45.0),
        ("3600", 3600.0),
        (" 1.5D ", 1.5 * DAY),
    ],
)
def test_max_age_takes_seconds_a_timedelta_or_a_spelled_age(value, seconds):
    assert seconds_of(value) == seconds


@pytest.mark.parametrize("value", ["soon", "30y", "-1d", "", 0, -5, float("inf"), True, [30], datetime.timedelta(0)])
def test_anything_else_is_a_value_error_that_lists_the_forms(tmp_path, value):
    with pytest.raises(ValueError, match=r'max_age .* a datetime.timedelta, or a string such as "45s", "90m"'):
        enable_cachy(tmp_path, max_age=value)


def test_record_mode_records_an_expired_entry_again_and_later_hits_get_the_new_answer(tmp_path):
    upstream = recorded(tmp_path, ["old", "young"], 40, 1)
    enable_cachy(tmp_path, max_age="30d")
    client = upstream.client()
    assert n_of(client, {"q": "old"}) == 3  # live again
    assert n_of(client, {"q": "young"}) == 2  # still the recorded answer
    assert n_of(client, {"q": "old"}) == 3  # the new recording
    stats = cachy_stats()
    assert (stats.expired, stats.recorded, stats.hits) == (1, 1, 2)
    assert "1 expired" in str(stats)


def test_an_entry_without_a_recording_time_never_expires(tmp_path):
    upstream = recorded(tmp_path, ["undated"], None)
    enable_cachy(tmp_path, max_age=1)
    assert n_of(upstream.client(), {"q": "undated"}) == 1
    assert cachy_stats().expired == 0


def test_replay_serves_expired_entries_with_one_warning(tmp_path):
    upstream = recorded(tmp_path, ["a", "b", "c"], 40, 90, 2)
    enable_cachy(tmp_path, max_age="30d", mode="replay")
    client = upstream.client()
    with pytest.warns(CachyWarning) as warned:
        assert [n_of(client, {"q": q}) for q in ("a", "b", "c", "a")] == [1, 2, 3, 1]
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "recorded 40 days ago, older than max_age (30 days)" in message
    assert "2 entries of" in message and "the oldest recorded 90 days ago" in message
    assert (cachy_stats().expired, cachy_stats().hits, upstream.calls) == (3, 4, 3)


def test_cachy_max_age_from_the_environment_and_the_argument_wins(tmp_path, monkeypatch):
    upstream = recorded(tmp_path, ["q"], 2)
    monkeypatch.setenv("CACHY_MAX_AGE", "1d")
    enable_cachy(tmp_path)
    assert n_of(upstream.client(), {"q": "q"}) == 2  # expired by the environment's max_age
    aged(tmp_path, 2, 2)
    with cachy(cache_dir=tmp_path, max_age="7d"):
        assert n_of(upstream.client(), {"q": "q"}) == 2
    monkeypatch.setenv("CACHY_MAX_AGE", "a week")
    with pytest.raises(ValueError, match="CACHY_MAX_AGE 'a week' is not an age"):
        enable_cachy(tmp_path)


def test_the_marker_and_the_option_take_max_age(pytester, monkeypatch):
    monkeypatch.delenv("CACHY_MODE", raising=False)
    monkeypatch.delenv("CACHY_MAX_AGE", raising=False)
    pytester.makepyfile(
        test_inner=textwrap.dedent(f"""
        import json, pathlib
        import httpx, pytest
        from cachy import cachy_stats

        def ask():
            client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={{}})))
            client.post({CHAT!r}, json={{"q": 1}})

        def age_the_file():
            path = pathlib.Path("cachy.jsonl")
            old = {{"recorded_at": "2020-01-01T00:00:00+00:00"}}
            path.write_text("".join(json.dumps({{**json.loads(line), **old}}) + "\\n" for line in path.open()))

        @pytest.mark.cachy(cache_dir=".")
        def test_a_record():
            ask()
            age_the_file()

        @pytest.mark.cachy(cache_dir=".", max_age="30d")
        def test_b_marker():
            ask()
            assert cachy_stats().expired == 1
            age_the_file()

        @pytest.mark.cachy(cache_dir=".")
        def test_c_option():
            ask()
            assert cachy_stats().expired == 1
        """)
    )
    pytester.runpytest("-p", "no:randomly", "--cachy-max-age", "30d").assert_outcomes(passed=3)


def test_stats_shows_ages_and_compact_drops_old_entries(tmp_path, capsys):
    recorded(tmp_path, ["hour", "days", "weeks", "months", "undated"], 0.01, 3, 20, 100, None)
    path = tmp_path / "cachy.jsonl"
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ages: 1 under a day, 1 under a week, 1 under 30 days, 1 older, 1 no recording time" in out
    assert main(["compact", str(path), "--older-than", "10d"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 entries older than 10d (kept 1 with no recording time)" in out
    assert len(entries(tmp_path)) == 3
    assert compact_cachy(path, older_than=datetime.timedelta(days=1)).expired == 1
    assert main(["compact", str(path), "--older-than", "soon"]) == 1
    assert "older_than 'soon' is not an age" in capsys.readouterr().err
    disable_cachy()


@pytest.mark.parametrize(
    "value", ["\uff13\uff10d", "\u0663\u0660d", 10**400], ids=["fullwidth", "arabic-indic", "10**400"]
)
def test_an_age_in_other_digits_or_too_large_is_a_value_error(value):
    """Observed (review of expiry): Unicode digits were read as an age (thirty days in full-width digits), and
    10**400 raised OverflowError, not the ValueError that lists the forms."""
    with pytest.raises(ValueError, match="is not an age"):
        seconds_of(value)


def test_half_an_hour_may_be_spelled_without_its_zero():
    assert seconds_of(".5h") == 1800
