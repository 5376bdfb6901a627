"""Files that the original cachy's releases really wrote (tests/data/original, one release of each key formula):
served in replay mode with the upstream down, upgraded in record mode with zero upstream calls and without the
headers the original stored and cachy never keeps, and served by cachy's own keys after `compact --drop-stale`.

The originals recorded them through the classic SDKs (see tests/data/original/README.md); here each request goes
again, with the bytes, headers and stream argument that the original's `send` received, through plain httpx and
httpx2 clients, so these tests need no SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import httpx
import httpx2
import pytest
from helpers import JSON, Upstream, as_a_new_process, entries

from cachy import CachyWarning, Stats, cachy_stats, disable_cachy, enable_cachy, request_key
from cachy.cli import main
from cachy.core import Call
from cachy.original import FORMULAS, formula_keys

FILES = Path(__file__).parent / "data" / "original"
RELEASES = ["0.0.4", "0.0.8", "0.0.11", "0.0.12", "0.0.19", "0.0.20", "0.0.21", "0.0.22"]  # one of each formula
FORMULA_OF = dict(zip(RELEASES, reversed(FORMULAS), strict=True))
# Response headers the original stored (all but content-encoding) that must never reach a line of cachy's
NEVER_KEPT = {
    *("set-cookie", "openai-organization", "openai-project"),
    *("content-encoding", "content-length", "transfer-encoding"),
}
ORIGINALS_WARNING = "8-character keys"

releases = pytest.mark.parametrize("release", RELEASES)
serving = pytest.mark.parametrize("release", [release for release in RELEASES if FORMULA_OF[release].serves])
modules = pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])


def sent(release: str) -> list[dict]:
    """The requests the original's `send` received when it wrote the file, in order, with the key it wrote."""
    return json.loads((FILES / f"{release}.requests.json").read_text())


def stored(release: str) -> dict[str, bytes]:
    """The body the original stored for each of its keys."""
    found = {}
    for line in (FILES / f"{release}.jsonl").read_text().splitlines():
        entry = json.loads(line)
        found[entry["key"]] = base64.b64decode(entry["response"]) if entry.get("binary") else entry["response"].encode()
    return found


def copied(release: str, tmp_path: Path) -> Path:
    folder = tmp_path / release
    folder.mkdir()
    shutil.copyfile(FILES / f"{release}.jsonl", folder / "cachy.jsonl")
    return folder


class Down:
    """An upstream that is down: each call is counted, and fails the request."""

    def __init__(self):
        self.calls = []

    def __call__(self, request):
        self.calls.append(str(request.url))
        raise AssertionError(f"the upstream is down, yet {request.url} was sent to it")


def rebuilt(module, request: dict):
    """The request as the original's `send` received it: method, URL, headers and body bytes."""
    return module.Request(
        request["method"], request["url"], headers=request["headers"], content=request["body"].encode()
    )


def stream_argument(request: dict) -> dict:
    """`send`'s stream argument as the SDK passed it, or none when it passed none (a plain `client.post`)."""
    return {} if request["stream"] == "not passed" else {"stream": request["stream"]}


def send_all(module, requests: list[dict], upstream: Down) -> list[bytes]:
    """Each request sent once, by a sync or an async client as when it was recorded; the bodies answered."""
    transport = module.MockTransport(upstream)

    def sync(request: dict) -> bytes:
        with module.Client(transport=transport) as client:
            response = client.send(rebuilt(module, request), **stream_argument(request))
            try:
                return response.read()
            finally:
                response.close()

    async def in_async(request: dict) -> bytes:
        async with module.AsyncClient(transport=transport) as client:
            response = await client.send(rebuilt(module, request), **stream_argument(request))
            try:
                return await response.aread()
            finally:
                await response.aclose()

    return [sync(r) if r["client"] == "sync" else asyncio.run(in_async(r)) for r in requests]


def replayed(folder: Path, module, requests: list[dict], mode: str, warned: bool) -> tuple[list[bytes], Down, Stats]:
    """The bodies answered to `requests` by a new process's cachy in `mode`, the upstream down, the upstream and
    cachy's counts. `warned`: the file holds the original's entries, about which cachy warns."""
    as_a_new_process()
    upstream = Down()
    enable_cachy(folder, mode=mode)
    try:
        if warned:
            with pytest.warns(CachyWarning, match=ORIGINALS_WARNING):
                bodies = send_all(module, requests, upstream)
        else:
            bodies = send_all(module, requests, upstream)
        stats = cachy_stats()
    finally:
        disable_cachy()
    return bodies, upstream, stats


@releases
def test_the_files_keys_are_those_of_its_formula(release):
    """The fixtures agree with tests/test_original.py's pins: each key is its release's formula's, for the request
    as the original received it."""
    requests = sent(release)
    assert {r["key"] for r in requests} == set(stored(release)), "one entry a request, and no other"
    for r in requests:
        request = rebuilt(httpx, r)
        call = Call(request.method, str(request.url), request.content, request.headers, bool(r["stream"] is True))
        assert r["key"] in formula_keys(FORMULA_OF[release], call), r["call"]


@serving
@modules
def test_replay_mode_serves_every_entry_as_the_original_stored_it(tmp_path, release, module):
    folder, requests = copied(release, tmp_path), sent(release)
    before = (folder / "cachy.jsonl").read_bytes()
    bodies, upstream, stats = replayed(folder, module, requests, "replay", warned=True)
    assert upstream.calls == []
    assert bodies == [stored(release)[r["key"]] for r in requests]
    assert (stats.hits, stats.replay_misses, stats.upgraded, stats.recorded) == (len(requests), 0, 0, 0)
    assert (folder / "cachy.jsonl").read_bytes() == before


def upgraded(tmp_path: Path, release: str, module) -> tuple[Path, Stats]:
    """The release's file after a record-mode run of its requests (each checked to have hit, upstream down)."""
    folder, requests = copied(release, tmp_path), sent(release)
    bodies, upstream, stats = replayed(folder, module, requests, "record", warned=True)
    assert upstream.calls == []
    assert bodies == [stored(release)[r["key"]] for r in requests]
    return folder, stats


@serving
@modules
def test_record_mode_upgrades_every_entry_with_no_upstream_call_and_keeps_no_stale_nor_secret_header(
    tmp_path, release, module
):
    original = (FILES / f"{release}.jsonl").read_text().splitlines()
    folder, stats = upgraded(tmp_path, release, module)
    assert (stats.hits, stats.upgraded, stats.recorded) == (len(original), len(original), 0)
    lines = (folder / "cachy.jsonl").read_text().splitlines()
    assert lines[: len(original)] == original, "the original's lines stay as they were, until compact"
    new = [json.loads(line) for line in lines[len(original) :]]
    assert sorted(entry["from"] for entry in new) == sorted(r["key"] for r in sent(release))
    for line, entry in zip(lines[len(original) :], new, strict=True):
        assert len(entry["key"]) == 16, entry
        assert not {name.lower() for name in entry["headers"]} & NEVER_KEPT, entry["headers"]
        assert "secret" not in line, line
        assert entry["response"].encode() == stored(release)[entry["from"]]


@serving
@modules
def test_after_compact_drop_stale_no_original_line_is_left_and_cachys_own_keys_serve_every_call(
    tmp_path, release, module
):
    (folder, _), requests = upgraded(tmp_path, release, module), sent(release)
    as_a_new_process()
    assert main(["compact", str(folder), "--drop-stale"]) in (None, 0)
    left = entries(folder)
    assert len(left) == len(requests) and not [entry for entry in left if len(entry["key"]) == 8]
    bodies, upstream, stats = replayed(folder, module, requests, "replay", warned=False)  # a warning is an error
    assert upstream.calls == []
    assert bodies == [stored(release)[r["key"]] for r in requests]
    assert (stats.hits, stats.upgraded) == (len(requests), 0)
    enable_cachy(folder, mode="replay")
    own = {request_key(rebuilt(httpx, r), stream=r["stream"] is True) for r in requests}
    assert own == {entry["key"] for entry in left}, "each call hit the line that cachy keyed for it"


@modules
def test_a_file_keyed_by_the_host_alone_is_never_served(tmp_path, module):
    """Observed (review of the original's files): the keys of 0.0.2 to 0.0.4 hold only the host, so one entry
    answered every request to it, a DELETE or another endpoint's call included, and record mode wrote each wrong
    answer down as an upgrade. Such keys tell no two requests apart: they now serve nothing, and each call goes
    live in record mode, as an unrecorded call does."""
    folder, requests = copied("0.0.4", tmp_path), sent("0.0.4")
    live = Upstream(lambda request, n: (200, JSON, b'{"live": true}'))
    with pytest.warns(CachyWarning, match="8-character keys"):
        enable_cachy(folder)
        for r in requests[:3]:
            with live.client(module) as client:
                assert client.send(rebuilt(module, r)).json() == {"live": True}
    assert (cachy_stats().hits, cachy_stats().upgraded, live.calls) == (0, 0, 3)
    disable_cachy()
