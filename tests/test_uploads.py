"""Google's resumable uploads through the real google-genai SDK: recorded with no `hdrs`, the session URL
stored without credentials, and two different files of the same size each replaying their own upload."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from google import genai
from google.genai import types
from helpers import JSON, Upstream, entries, http_module

from cachy import CachyMiss, cachy_stats, disable_cachy, enable_cachy

GENAI_HTTPX = http_module("google-genai")
HOST = "https://generativelanguage.googleapis.com"


class UploadServer:
    """Google's upload endpoint as it behaves: each start opens a session of its own, an upload must go to
    an open session with the size that was announced, and a session takes one upload only."""

    def __init__(self):
        self.sessions: dict[str, int] = {}  # open sessions and their announced sizes
        self.upstream = Upstream(self.reply)

    def reply(self, request, n):
        command = request.headers.get("x-goog-upload-command", "")
        if command == "start":
            session = f"s{n}"
            self.sessions[session] = int(request.headers["x-goog-upload-header-content-length"])
            url = f"{HOST}/upload/v1beta/files?upload_id={session}&upload_protocol=resumable&key=AIza-secret"
            return 200, {"x-goog-upload-url": url, "x-goog-upload-status": "active"}, b""
        session = parse_qs(urlsplit(str(request.url)).query)["upload_id"][0]
        assert self.sessions.pop(session) == len(request.content), "an upload to a spent or unknown session"
        digest = hashlib.sha256(request.content).hexdigest()[:8]
        file = {"name": f"files/{digest}", "mimeType": "text/plain", "sizeBytes": str(len(request.content))}
        return 200, {**JSON, "x-goog-upload-status": "final"}, json.dumps({"file": file}).encode()

    def client(self) -> genai.Client:
        options = types.HttpOptions(httpx_client=self.upstream.client(GENAI_HTTPX))
        return genai.Client(api_key="AIza-test", http_options=options)


def names_of_uploads(client: genai.Client, folder, contents: list[bytes]) -> list[str]:
    names = []
    for number, content in enumerate(contents):
        path = folder / f"notes{number}.txt"
        path.write_bytes(content)
        names.append(client.files.upload(file=path, config={"mime_type": "text/plain"}).name)
    return names


SAME_SIZE = [b"first file!!", b"second file!"]
EXPECTED = [f"files/{hashlib.sha256(content).hexdigest()[:8]}" for content in SAME_SIZE]


def test_two_files_of_the_same_size_upload_and_replay_each_their_own(tmp_path):
    server = UploadServer()
    enable_cachy(tmp_path)  # no hdrs
    assert names_of_uploads(server.client(), tmp_path, SAME_SIZE) == EXPECTED
    assert server.upstream.calls == 4  # a start and an upload for each
    disable_cachy()

    down = UploadServer()
    down.upstream.reply = lambda request, n: pytest.fail(f"the upstream is down, yet {request.url} was sent")
    enable_cachy(tmp_path, mode="replay")
    assert names_of_uploads(down.client(), tmp_path, SAME_SIZE) == EXPECTED
    assert down.upstream.calls == 0
    assert cachy_stats().hits == 4  # the start, twice from one entry, and each file's upload


def test_a_start_goes_live_in_record_mode_and_is_written_once(tmp_path):
    server = UploadServer()
    enable_cachy(tmp_path)
    names_of_uploads(server.client(), tmp_path, SAME_SIZE)
    assert names_of_uploads(server.client(), tmp_path, SAME_SIZE) == EXPECTED
    assert server.upstream.calls == 6  # the second run: only the starts, each opening a session of its own
    assert len(entries(tmp_path)) == 3  # one start, and each file's upload
    assert cachy_stats().hits == 2 and cachy_stats().recorded == 3


def test_the_stored_session_url_has_no_credential_and_uploads_are_keyed_without_it(tmp_path):
    enable_cachy(tmp_path)
    names_of_uploads(UploadServer().client(), tmp_path, SAME_SIZE[:1])
    start, upload = entries(tmp_path)
    assert start["headers"]["x-goog-upload-url"] == (
        f"{HOST}/upload/v1beta/files?upload_id=s1&upload_protocol=resumable"
    )
    assert start["headers"]["x-goog-upload-status"] == "active"
    assert upload["url"] == f"{HOST}/upload/v1beta/files?upload_protocol=resumable"
    assert upload["headers"]["x-goog-upload-status"] == "final"
    assert "AIza" not in (tmp_path / "cachy.jsonl").read_text()


def test_another_file_misses_in_replay(tmp_path):
    enable_cachy(tmp_path)
    names_of_uploads(UploadServer().client(), tmp_path, SAME_SIZE[:1])
    enable_cachy(tmp_path, mode="replay")
    with pytest.raises(CachyMiss):
        names_of_uploads(UploadServer().client(), tmp_path, SAME_SIZE[1:])


def test_other_hosts_keep_only_what_hdrs_names(tmp_path):
    upstream = Upstream(lambda request, n: (200, {**JSON, "x-goog-upload-status": "final"}, b"{}"))
    enable_cachy(tmp_path, doms=("example.com",))
    upstream.client(GENAI_HTTPX).post("https://example.com/upload/v1beta/files?upload_id=1", content=b"x")
    (entry,) = entries(tmp_path)
    assert entry["headers"] == {"content-type": "application/json"}
    assert entry["url"] == "https://example.com/upload/v1beta/files?upload_id=1"
