"""Google's resumable uploads (google-genai `files.upload`), recorded without `hdrs`, one file per answer.

An upload is two requests: a start (`x-goog-upload-command: start`) to `/upload/...` that carries only the
file's size and type and is answered with a session URL in `x-goog-upload-url`, then the file's bytes posted
to that URL, answered with `x-goog-upload-status: final`. The SDK reads both headers, so they are kept for
these endpoints whatever `hdrs` says; any credential parameter is taken out of the
stored URL as it is out of request URLs.

Two files of the same size and type send the same start. Answered from the cache, the second would get the
first's spent session, and then the first file's answer. So in record mode a start always goes live (each
file gets a session of its own, and a start's entry is written once), and the upload is keyed without the
per-session `upload_id`: by its path and the file's bytes. A replay answers the start from its entry and
each upload from the entry of its own bytes.

The SDK sends a file in chunks (8 MiB in google-genai): `x-goog-upload-command: upload` with
`x-goog-upload-offset: N`, and `upload, finalize` for the last one. Keyed by its bytes alone, a chunk would
get the answer of any equal chunk: the final chunk of a file of two equal chunks the first's `active`, a file
equal to another's last chunk that file's name. So each chunk is keyed also by its command, its offset and a
digest of the bytes its session sent before it (`chunk_head`). That digest depends on the bytes only, not on
the `upload_id`, so a record run (a live session per start) and a replay (the recorded session) agree."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

UPLOAD_HOST = "generativelanguage.googleapis.com"
UPLOAD_HEADERS = ("x-goog-upload-status", "x-goog-upload-url")
_SESSION_PARAM = "upload_id"
_EMPTY = hashlib.sha256().hexdigest()

# upload_id -> {offset: digest of the bytes the session sent before that offset}; a retried chunk finds its
# offset's digest again. Reset at offset 0, dropped on finalize.
_sent: dict[str, dict[int, str]] = {}
_sent_lock = threading.Lock()


def is_upload(url: str) -> bool:
    """Whether `url` is one of Google's upload endpoints: an `/upload/` path on the Gemini API's host."""
    if "/upload/" not in url:  # most requests are told at once
        return False
    parts = urlsplit(url)
    return parts.hostname == UPLOAD_HOST and parts.path.startswith("/upload/")


def session_free(url: str) -> str:
    """An upload URL without its per-session `upload_id`, as the upload is keyed; any other URL as it is."""
    if _SESSION_PARAM not in url or not is_upload(url):
        return url
    parts = urlsplit(url)
    params = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name != _SESSION_PARAM]
    return urlunsplit(parts._replace(query=urlencode(params, quote_via=quote)))


def starts_upload(url: str, headers: Mapping[str, str]) -> bool:
    """Whether a request starts an upload session: in record mode it goes live, whatever is recorded."""
    return is_upload(url) and headers.get("x-goog-upload-command", "").strip().lower() == "start"  # URL first: cheap


def upload_headers(
    url: str, headers: Mapping[str, str], kept: dict[str, str], public_url: Callable[[str], str]
) -> dict[str, str]:
    """The headers kept of a response (`kept`: those cachy keeps of every response), with the upload headers an
    upload endpoint's response carries; the session URL made `public_url` wherever it is kept, as `hdrs` may
    name it for any endpoint (a proxy's, another path)."""
    if is_upload(url):
        kept = kept | {name: headers[name] for name in UPLOAD_HEADERS if name in headers}
    if "x-goog-upload-url" in kept:
        kept = kept | {"x-goog-upload-url": public_url(kept["x-goog-upload-url"])}
    return kept


def _session(url: str) -> str | None:
    values = [value for name, value in parse_qsl(urlsplit(url).query) if name == _SESSION_PARAM]
    return values[0] if values else None


def chunk_head(url: str, headers: Mapping[str, str], body: bytes) -> str:
    """What enters an upload chunk's key besides its URL and bytes: its command, its offset and the digest of
    what its session sent before it ("-" for a session cachy did not see from offset 0). Records this chunk for
    the next one. Empty for any request that is not an upload chunk, so their keys stay as they were."""
    if not is_upload(url):
        return ""
    command = ", ".join(part.strip() for part in headers.get("x-goog-upload-command", "").lower().split(","))
    if command == "start":
        return ""
    offset_text = headers.get("x-goog-upload-offset", "").strip()
    offset = int(offset_text) if offset_text.isdigit() else None
    session = _session(url)
    before = None
    with _sent_lock:
        if session is not None and offset is not None:
            if offset == 0:
                _sent[session] = {0: _EMPTY}
            known = _sent.get(session)
            before = known.get(offset) if known is not None else None
            if "finalize" in command:
                _sent.pop(session, None)
            elif before is not None:
                known[offset + len(body)] = hashlib.sha256(before.encode() + body).hexdigest()
    return f"x-goog-upload-command: {command}\nx-goog-upload-offset: {offset_text}\nsent-before: {before or '-'}\n"
