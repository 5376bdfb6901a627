"""Google's resumable uploads through the real google-genai SDK: recorded with no `hdrs`, the session URL
stored without credentials, and two different files of the same size each replaying their own upload."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from google import genai
from google.genai import _api_client, types
from helpers import JSON, Upstream, entries, http_module

from cachy import CachyMiss, cachy_stats, disable_cachy, enable_cachy

GENAI_HTTPX = http_module("google-genai")
HOST = "https://generativelanguage.googleapis.com"


class UploadServer:
    """Google's upload endpoint as it behaves: each start opens a session of its own, and the file's bytes
    come in chunks at the offsets already received (`upload`, then `upload, finalize`); the finalized bytes
    must be the size that was announced, and a finalized session takes no more chunks."""

    def __init__(self):
        self.sessions: dict[str, tuple[int, bytes]] = {}  # open sessions: announced size, bytes so far
        self.upstream = Upstream(self.reply)

    def reply(self, request, n):
        command = request.headers.get("x-goog-upload-command", "")
        if command == "start":
            session = f"s{n}"
            self.sessions[session] = (int(request.headers["x-goog-upload-header-content-length"]), b"")
            url = f"{HOST}/upload/v1beta/files?upload_id={session}&upload_protocol=resumable&key=AIza-secret"
            return 200, {"x-goog-upload-url": url, "x-goog-upload-status": "active"}, b""
        session = parse_qs(urlsplit(str(request.url)).query)["upload_id"][0]
        assert session in self.sessions, "an upload to a spent or unknown session"
        size, sent = self.sessions[session]
        assert int(request.headers["x-goog-upload-offset"]) == len(sent), "a chunk at the wrong offset"
        sent += request.content
        if "finalize" not in command:
            self.sessions[session] = (size, sent)
            return 200, {"x-goog-upload-status": "active"}, b""
        del self.sessions[session]
        assert len(sent) == size, "a file of another size than announced"
        file = {"name": name_of(sent), "mimeType": "text/plain", "sizeBytes": str(len(sent))}
        return 200, {**JSON, "x-goog-upload-status": "final"}, json.dumps({"file": file}).encode()

    def client(self) -> genai.Client:
        options = types.HttpOptions(httpx_client=self.upstream.client(GENAI_HTTPX))
        return genai.Client(api_key="AIza-test", http_options=options)


def name_of(content: bytes) -> str:
    return f"files/{hashlib.sha256(content).hexdigest()[:8]}"


def names_of_uploads(client: genai.Client, folder, contents: list[bytes]) -> list[str]:
    names = []
    for number, content in enumerate(contents):
        path = folder / f"notes{number}.txt"
        path.write_bytes(content)
        names.append(client.files.upload(file=path, config={"mime_type": "text/plain"}).name)
    return names


SAME_SIZE = [b"first file!!", b"second file!"]
EXPECTED = [name_of(content) for content in SAME_SIZE]


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


# ------------------------------------------------------------------ files of several chunks
CHUNK = 4  # stands for google-genai's 8 MiB


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(_api_client, "CHUNK_SIZE", CHUNK)


def record_then_replay(tmp_path, contents: list[bytes]) -> tuple[list[str], list[str]]:
    """The names the files get recorded, then replayed with the upstream down."""
    enable_cachy(tmp_path)
    recorded = names_of_uploads(UploadServer().client(), tmp_path, contents)
    disable_cachy()
    down = UploadServer()
    down.upstream.reply = lambda request, n: pytest.fail(f"the upstream is down, yet {request.url} was sent")
    enable_cachy(tmp_path, mode="replay")
    return recorded, names_of_uploads(down.client(), tmp_path, contents)


def test_a_file_of_two_equal_chunks_records_and_replays_final(tmp_path, small_chunks):
    """Observed (review of the uploads): the final chunk of a file of two equal chunks was answered from
    the first chunk's entry, `x-goog-upload-status: active`, and the SDK raised "All content has been
    uploaded, but the upload status is not finalized". Now each chunk is keyed by its command and offset
    too: the file records, its final chunk answered `final`, and replays offline."""
    content = b"\0" * (2 * CHUNK)
    server = UploadServer()
    enable_cachy(tmp_path)
    assert names_of_uploads(server.client(), tmp_path, [content]) == [name_of(content)]
    assert server.upstream.calls == 3  # the start and two chunks, each live
    assert [entry["headers"]["x-goog-upload-status"] for entry in entries(tmp_path)] == ["active", "active", "final"]
    assert record_then_replay(tmp_path, [content]) == ([name_of(content)], [name_of(content)])


def test_a_file_equal_to_another_files_last_chunk_replays_its_own_name(tmp_path, small_chunks):
    """Observed (review of the uploads): file B, whose bytes equal file A's last chunk, was answered from
    A's final chunk with A's name, silently (one upstream call fewer). Now a chunk is keyed by its offset
    and by what its session sent before it: B uploads live and each file replays its own name."""
    a, b = b"HEADtail", b"tail"
    server = UploadServer()
    enable_cachy(tmp_path)
    assert names_of_uploads(server.client(), tmp_path, [a, b]) == [name_of(a), name_of(b)]
    assert server.upstream.calls == 5  # A: a start and two chunks; B: a start and one chunk
    disable_cachy()
    assert record_then_replay(tmp_path, [a, b]) == ([name_of(a), name_of(b)],) * 2


def test_same_size_files_that_share_their_last_chunk_replay_each_their_own(tmp_path, small_chunks):
    """Observed (review of the uploads): keyed by its bytes only, the last chunk of a file was answered from
    the entry of another file's equal last chunk, so two same-size files that differ only in earlier chunks
    got one name. Now the last chunk is keyed by a digest of the bytes its session sent before it: each file
    records and replays its own name, also when the replay answers both starts with one recorded session."""
    contents = [b"AAAAmid!tail", b"BBBBmid!tail"]
    expected = [name_of(content) for content in contents]
    recorded, replayed = record_then_replay(tmp_path, contents)
    assert recorded == replayed == expected
    assert cachy_stats().hits == 8  # the start twice from one entry, and each file's three chunks
