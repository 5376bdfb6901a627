"""The original cachy's (pycachy's) files: each release's key formula, its entries served (agreeing in kind, with
cachy's headers), upgraded in record mode and never in replay mode, counted by `cachy stats`, dropped by
`cachy compact --drop-stale` once upgraded; its damaged lines skipped; and its API (`norm_pats`, `debug="miss"`)."""

from __future__ import annotations

import base64
import inspect
import json
import re
from pathlib import Path

import httpx
import pytest
from helpers import CHAT, JSON, SSE, Upstream, as_a_new_process, entries, fresh_cache

import cachy
from cachy import CachyMiss, CachyWarning, cachy_stats, compact_cachy, disable_cachy, enable_cachy
from cachy.cli import main
from cachy.core import Call
from cachy.original import FORMULAS, formula_keys

pytestmark = pytest.mark.filterwarnings("ignore:.*8-character keys:cachy.CachyWarning")

# The keys each group of releases gave these requests, found by running every release from 0.0.2 to 0.0.22 (with
# httpx 0.28.1): `python tests/benchmarks/original_keys.py /tmp/pycachy-*`, each release installed with
# `pip install --no-deps --target /tmp/pycachy-X pycachy==X`. The groups are those of FORMULAS, in its order.
# "RequestNotRead": 0.0.2 to 0.0.4 could not key a multipart upload (they read no unread body).
EXPECTED = [
    # 0.0.22
    {
        "chat": "0197be0b",
        "chat, no stream argument": "9ff5d619",
        "stream": "b83fe8ea",
        "multipart upload": "eb34fa9b",
        "url with ?key=": "84908a1f",
        "notebook noise": "b1f0c5a5",
        "url with an address": "cb2cf9dc",
        "prompt_cache_key": "2451cc36",
        "binary upload": "34093571",
    },
    # 0.0.21
    {
        "chat": "0197be0b",
        "chat, no stream argument": "9ff5d619",
        "stream": "b83fe8ea",
        "multipart upload": "eb34fa9b",
        "url with ?key=": "84908a1f",
        "notebook noise": "b1f0c5a5",
        "url with an address": "cb2cf9dc",
        "prompt_cache_key": "425ab255",
        "binary upload": "72c0989d",
    },
    # 0.0.20
    {
        "chat": "58f81e31",
        "chat, no stream argument": "6c91f864",
        "stream": "d6830dff",
        "multipart upload": "60f9d700",
        "url with ?key=": "063f5fd7",
        "notebook noise": "2c09d616",
        "url with an address": "adf3d026",
        "prompt_cache_key": "edd35811",
        "binary upload": "edb7a7d4",
    },
    # 0.0.13, 0.0.14, 0.0.15, 0.0.16, 0.0.17, 0.0.18, 0.0.19
    {
        "chat": "58f81e31",
        "chat, no stream argument": "6c91f864",
        "stream": "d6830dff",
        "multipart upload": "60f9d700",
        "url with ?key=": "063f5fd7",
        "notebook noise": "2c09d616",
        "url with an address": "0d32489e",
        "prompt_cache_key": "edd35811",
        "binary upload": "edb7a7d4",
    },
    # 0.0.12
    {
        "chat": "58f81e31",
        "chat, no stream argument": "92f1dcf2",
        "stream": "d6830dff",
        "multipart upload": "60f9d700",
        "url with ?key=": "063f5fd7",
        "notebook noise": "86f8bf2c",
        "url with an address": "0d32489e",
        "prompt_cache_key": "edd35811",
        "binary upload": "ebcc42a1",
    },
    # 0.0.9, 0.0.10, 0.0.11
    {
        "chat": "58f81e31",
        "chat, no stream argument": "6c91f864",
        "stream": "c4dfe045",
        "multipart upload": "60f9d700",
        "url with ?key=": "063f5fd7",
        "notebook noise": "86f8bf2c",
        "url with an address": "0d32489e",
        "prompt_cache_key": "edd35811",
        "binary upload": "ebcc42a1",
    },
    # 0.0.5, 0.0.6, 0.0.7, 0.0.8
    {
        "chat": "645d5101",
        "chat, no stream argument": "aaebccdb",
        "stream": "10baee4a",
        "multipart upload": "60f9d700",
        "url with ?key=": "1574d339",
        "notebook noise": "29951c82",
        "url with an address": "0d32489e",
        "prompt_cache_key": "c386d834",
        "binary upload": "ebcc42a1",
    },
    # 0.0.2, 0.0.2.post1, 0.0.3, 0.0.4
    {
        "chat": "3306ae4c",
        "chat, no stream argument": "bb55d6f2",
        "stream": "72460945",
        "multipart upload": "RequestNotRead",
        "url with ?key=": "a52eeeb5",
        "notebook noise": "f4c001eb",
        "url with an address": "50cfc2b4",
        "prompt_cache_key": "3d57fcf7",
        "binary upload": "RequestNotRead",
    },
]

_CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
_HEADERS = {"accept": "application/json", "content-type": "application/json"}
_GEMINI = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent?key=SECRET"
_NOISE = 'File "/tmp/ipykernel_123/456.py", line 7, in f at 0x7f00aabbccdd'


def _as_httpx_0_28_sends(document: dict) -> bytes:
    """A JSON body as httpx 0.28's `json=` encodes it, the httpx the keys above were found with (0.27 adds spaces)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _build(method: str, url: str, json: dict | None = None, **kwargs) -> httpx.Request:
    content = {} if json is None else {"content": _as_httpx_0_28_sends(json)}
    return httpx.Client().build_request(method, url, **content, **kwargs)


def reference_requests() -> dict[str, tuple[httpx.Request, bool]]:
    """The requests of tests/benchmarks/original_keys.py, built alike, with the stream flag each was sent with."""
    build = _build
    upload = {"data": {"purpose": "batch"}, "files": {"file": ("a.jsonl", b"{}\n", "application/jsonl")}}
    binary = {"data": {"purpose": "batch"}, "files": {"file": ("a.bin", b"\xff\xfe\x00", "application/octet-stream")}}
    requests = {
        "chat": (build("POST", CHAT, json=_CHAT_BODY, headers=_HEADERS), False),
        "chat, no stream argument": (build("POST", CHAT, json={**_CHAT_BODY, "n": 2}, headers=_HEADERS), False),
        "stream": (
            build(
                "POST", CHAT, json={**_CHAT_BODY, "stream": True}, headers={**_HEADERS, "accept": "text/event-stream"}
            ),
            True,
        ),
        "multipart upload": (build("POST", "https://api.openai.com/v1/files", **upload), False),
        "url with ?key=": (
            build("POST", _GEMINI, json={"contents": [{"parts": [{"text": "hi"}]}]}, headers=_HEADERS),
            False,
        ),
        "notebook noise": (
            build(
                "POST", CHAT, json={**_CHAT_BODY, "messages": [{"role": "user", "content": _NOISE}]}, headers=_HEADERS
            ),
            False,
        ),
        "url with an address": (
            build("GET", "https://api.openai.com/v1/files/file-0xabcdef123/content", headers=_HEADERS),
            False,
        ),
        "prompt_cache_key": (
            build("POST", CHAT, json={**_CHAT_BODY, "prompt_cache_key": "s-42"}, headers=_HEADERS),
            False,
        ),
        "binary upload": (build("POST", "https://api.openai.com/v1/files", **binary), False),
    }
    for request, _ in requests.values():
        request.read()
    return requests


@pytest.mark.parametrize(
    "formula, expected", list(zip(FORMULAS, EXPECTED, strict=True)), ids=[f.releases for f in FORMULAS]
)
def test_each_release_group_keys_the_reference_requests_as_its_releases_did(formula, expected):
    for name, (request, stream) in reference_requests().items():
        if expected[name] == "RequestNotRead":
            continue
        call = Call(request.method, str(request.url), request.content, request.headers, stream)
        assert expected[name] in formula_keys(formula, call), name


def original_line(key: str, body: str | bytes, headers: dict | None = None, **fields) -> str:
    """A line as the original wrote it: key, response and, from 0.0.8 on, headers, status_code and binary."""
    entry = {"key": key, "response": body if isinstance(body, str) else base64.b64encode(body).decode()}
    if headers is not None:
        entry |= {"headers": headers, "status_code": 200, "binary": not isinstance(body, str)}
    return json.dumps(entry | fields)


def key_of(request: httpx.Request, stream: bool = False, formula: int = 0) -> str:
    """The original's key for `request` under FORMULAS[formula] (0.0.22 by default), as pinned above."""
    request.read()
    return formula_keys(
        FORMULAS[formula], Call(request.method, str(request.url), request.content, request.headers, stream)
    )[0]


def chat_request(client: httpx.Client, **body) -> httpx.Request:
    return _build("POST", CHAT, json={**_CHAT_BODY, **body}, headers=_HEADERS)


def down(request):
    raise AssertionError(f"the upstream is down, yet {request.url} was sent to it")


@pytest.fixture
def client():
    return httpx.Client(transport=httpx.MockTransport(down))


# The original stored every response header but content-encoding: these must never reach a new line.
_ORIGINAL_HEADERS = {
    "content-type": "application/json",
    "set-cookie": "__cf_bm=secret; path=/",
    "openai-organization": "org-secret",
    "openai-project": "proj_secret",
    "content-length": "999",
    "transfer-encoding": "chunked",
    "x-request-id": "req_1",
}


SERVING = [number for number, formula in enumerate(FORMULAS) if formula.serves]


@pytest.mark.parametrize("formula", SERVING, ids=[FORMULAS[number].releases for number in SERVING])
def test_replay_mode_serves_an_entry_of_every_release_and_writes_nothing(tmp_path, client, formula):
    request = chat_request(client)
    folder = fresh_cache(
        tmp_path / "c", original_line(key_of(request, formula=formula), '{"answer": 1}', _ORIGINAL_HEADERS) + "\n"
    )
    before = (folder / "cachy.jsonl").read_bytes()
    enable_cachy(folder, mode="replay")
    response = client.send(chat_request(client), stream=False)
    assert response.json() == {"answer": 1}
    assert dict(response.headers) == {"content-type": "application/json"}  # what cachy keeps, and nothing else
    assert (folder / "cachy.jsonl").read_bytes() == before
    assert (cachy_stats().hits, cachy_stats().upgraded) == (1, 0)


def test_record_mode_upgrades_once_and_then_every_run_hits_by_cachys_own_key(tmp_path, client):
    key = key_of(chat_request(client))
    folder = fresh_cache(tmp_path / "c", original_line(key, '{"answer": 1}', _ORIGINAL_HEADERS) + "\n")
    enable_cachy(folder)
    assert client.send(chat_request(client), stream=False).json() == {"answer": 1}
    assert (cachy_stats().hits, cachy_stats().upgraded, cachy_stats().recorded) == (1, 1, 0)
    upgraded = entries(folder)[1]
    assert (upgraded["from"], upgraded["v"], upgraded["headers"]) == (
        key,
        cachy.KEY_VERSION,
        {"content-type": "application/json"},
    )
    assert len(upgraded["key"]) == 16 and len(upgraded["raw"]) == 16 and "shape" in upgraded
    assert not re.search("secret|org-|proj_|999|chunked", json.dumps(upgraded))
    disable_cachy()
    lines = (folder / "cachy.jsonl").read_text().splitlines()
    (folder / "cachy.jsonl").write_text(lines[1] + "\n")  # without the original's line: cachy's own key hits
    as_a_new_process()
    enable_cachy(folder, mode="replay")
    assert client.send(chat_request(client), stream=False).json() == {"answer": 1}
    assert cachy_stats().hits == 1


def test_a_match_agrees_in_kind_with_the_request(tmp_path, client):
    """A 32-bit key tried under eight formulas: a stream is never answered by JSON, nor a plain request by events."""
    stream = chat_request(client, stream=True)
    plain = chat_request(client)
    lines = [
        original_line(key_of(stream, stream=True), '{"answer": "json for a stream"}', JSON),
        original_line(key_of(plain), 'data: {"answer": "events for a plain call"}\n\n', None),
    ]
    folder = fresh_cache(tmp_path / "c", "\n".join(lines) + "\n")
    enable_cachy(folder, mode="replay")
    with pytest.raises(CachyMiss):
        client.send(chat_request(client, stream=True), stream=True)
    with pytest.raises(CachyMiss):
        client.send(chat_request(client), stream=False)


def test_a_stream_is_answered_by_events_and_an_error_may_answer_it_with_json(tmp_path, client):
    events = 'data: {"n": 1}\n\ndata: [DONE]\n\n'
    refused = chat_request(client, stream=True, model="none")
    lines = [
        original_line(key_of(chat_request(client, stream=True), stream=True), events, SSE),
        original_line(key_of(refused, stream=True), '{"error": "no such model"}', JSON, status_code=404),
    ]
    folder = fresh_cache(tmp_path / "c", "\n".join(lines) + "\n")
    enable_cachy(folder, mode="replay")
    assert client.send(chat_request(client, stream=True), stream=True).read() == events.encode()
    assert client.send(chat_request(client, stream=True, model="none"), stream=True).status_code == 404


@pytest.mark.parametrize(
    "fields",
    [{"response": 5}, {"status_code": "200"}, {"binary": True, "response": "not base64!"}, {"headers": "x"}],
    ids=["response not a string", "status_code not an integer", "bad base64", "headers not an object"],
)
def test_an_original_line_of_the_wrong_shape_is_no_entry_and_is_skipped_with_a_warning(tmp_path, client, fields):
    line = json.loads(original_line(key_of(chat_request(client)), '{"answer": 1}', JSON)) | fields
    folder = fresh_cache(tmp_path / "c", json.dumps(line) + "\n")
    enable_cachy(folder, mode="replay")
    with pytest.warns(CachyWarning, match="damaged line 1"), pytest.raises(CachyMiss):
        client.send(chat_request(client), stream=False)


def test_a_file_of_both_formats_with_a_foreign_line_serves_both(tmp_path, client):
    """The early releases wrote only key and response: served as status 200 without headers."""
    enable_cachy(tmp_path / "c")
    upstream = Upstream(lambda request, n: (200, JSON, b'{"answer": "cachy"}'))
    upstream.client().post(CHAT, json={"q": 1})
    disable_cachy()
    old = original_line(key_of(chat_request(client), formula=6), '{"answer": "original"}')
    with (tmp_path / "c" / "cachy.jsonl").open("a") as file:
        file.write('{"not": "an entry"}\n' + old + "\n")
    as_a_new_process()
    enable_cachy(tmp_path / "c", mode="replay")
    with pytest.warns(CachyWarning, match="damaged"):
        assert upstream.client().post(CHAT, json={"q": 1}).json() == {"answer": "cachy"}
    assert client.send(chat_request(client), stream=False).json() == {"answer": "original"}
    assert upstream.calls == 1


def test_the_warning_says_the_originals_entries_are_served_and_upgraded(tmp_path, client):
    folder = fresh_cache(tmp_path / "c", original_line(key_of(chat_request(client)), "{}", JSON) + "\n")
    enable_cachy(folder, mode="replay")
    with pytest.warns(CachyWarning) as warned:
        client.send(chat_request(client), stream=False)
    message = str(warned[0].message)
    assert re.search(r"they are served .* in record mode each one used is upgraded", message), message


def test_stats_counts_the_originals_entries_and_compact_drop_stale_drops_only_the_upgraded(tmp_path, client, capsys):
    used, unused = chat_request(client), chat_request(client, n=3)
    lines = [original_line(key_of(used), '{"answer": 1}', JSON), original_line(key_of(unused), '{"answer": 2}', JSON)]
    folder = fresh_cache(tmp_path / "c", "\n".join(lines) + "\n")
    enable_cachy(folder)
    client.send(chat_request(client), stream=False)
    disable_cachy()
    main(["stats", str(folder)])
    assert "the original cachy's entries: 2, 1 upgraded" in capsys.readouterr().out
    result = compact_cachy(folder, drop_stale=True)
    assert (result.kept, result.stale) == (2, 1)
    assert sorted(entry.get("from", entry["key"]) for entry in entries(folder)) == sorted(
        [key_of(used), key_of(unused)]
    )
    assert {entry["key"] for entry in entries(folder)} != {key_of(used), key_of(unused)}


def test_debug_miss_prints_only_the_misses(tmp_path, capsys):
    upstream = Upstream(lambda request, n: (200, JSON, b"{}"))
    enable_cachy(tmp_path, debug="miss")
    upstream.client().post(CHAT, json={"q": 1})
    upstream.client().post(CHAT, json={"q": 1})
    upstream.client().get("https://example.com/")
    printed = capsys.readouterr().err.splitlines()
    assert len(printed) == 1 and printed[0].startswith("cachy recorded"), printed
    with pytest.raises(ValueError, match="debug"):
        enable_cachy(tmp_path, debug="hits")


def test_the_originals_api_norm_pats_and_the_signature_of_cachy():
    assert cachy.norm_pats is cachy.key_rules and "norm_pats" in cachy.__all__
    parameters = inspect.signature(cachy.cachy).parameters
    assert list(parameters) == list(inspect.signature(enable_cachy).parameters)
    assert {"cache_dir", "doms", "hdrs", "debug"} <= set(parameters)


def test_a_replay_miss_says_the_originals_entries_keep_no_request_to_compare_with(tmp_path):
    """Observed (claudette's notebooks, run offline): a miss in a file of the original's entries said "Nothing is
    recorded for POST /v1/messages", against 90 of them: they keep no method nor URL. It now says so."""
    data = Path(__file__).parent / "data" / "original" / "0.0.22.jsonl"
    (tmp_path / "cachy.jsonl").write_bytes(data.read_bytes())
    upstream = Upstream(lambda request, n: (500, JSON, b"the upstream is down"))
    with pytest.warns(CachyWarning, match="8-character keys"):
        enable_cachy(tmp_path, mode="replay")
        with pytest.raises(CachyMiss, match="entries of the original cachy's, which keep no request"):
            upstream.client().post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "never sent"}]})
    assert upstream.calls == 0


def test_only_a_post_is_answered_from_the_originals_entries(tmp_path, client):
    """Observed (review of the original's files): the original's keys hold no method, so `DELETE /v1/files/f`
    was answered with the entry of `GET /v1/files/f`. Only a POST, the LLM call the original recorded, is now
    answered from them; other methods go live as unrecorded calls do."""
    url = "https://api.openai.com/v1/files/file-abc"
    get = _build("GET", url, headers=_HEADERS)
    folder = fresh_cache(tmp_path / "c", original_line(key_of(get), '{"id": "file-abc"}', JSON) + "\n")
    live = Upstream(lambda request, n: (200, JSON, b'{"deleted": true}'))
    with pytest.warns(CachyWarning, match="8-character keys"):
        enable_cachy(folder)
        assert live.client().send(_build("DELETE", url, headers=_HEADERS)).json() == {"deleted": True}
    assert (cachy_stats().hits, live.calls) == (0, 1)


def test_an_entry_of_a_status_cachy_never_records_is_not_served(tmp_path, client):
    """Observed (review of the original's files): an original entry holding a 429 or a 500 was replayed, and in
    record mode written down in cachy's format, a failure frozen. It is now no answer: the call goes live."""
    folder = fresh_cache(
        tmp_path / "c",
        original_line(key_of(chat_request(client)), '{"error": "overloaded"}', JSON, status_code=529) + "\n",
    )
    live = Upstream(lambda request, n: (200, JSON, b'{"answer": "live"}'))
    with pytest.warns(CachyWarning, match="8-character keys"):
        enable_cachy(folder)
        with live.client() as fresh:
            assert fresh.send(chat_request(fresh)).json() == {"answer": "live"}
    assert (cachy_stats().upgraded, live.calls) == (0, 1)


def test_an_upgrade_keeps_no_recording_time_so_max_age_never_takes_it_for_fresh(tmp_path, client):
    """Observed (review of the original's files): an upgrade stamped today's recording time on an answer of any
    age, so `max_age` and `compact --older-than` took it for fresh, and it named today's SDK as its client. It
    now has neither, as the original's entry said neither."""
    folder = fresh_cache(tmp_path / "c", original_line(key_of(chat_request(client)), '{"answer": 1}', JSON) + "\n")
    with pytest.warns(CachyWarning, match="8-character keys"):
        enable_cachy(folder)
        assert client.send(chat_request(client), stream=False).json() == {"answer": 1}
    upgraded = entries(folder)[1]
    assert upgraded["from"] and not {"recorded_at", "seconds", "client"} & set(upgraded)
