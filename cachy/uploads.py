"""Google's resumable uploads (google-genai `files.upload`), recorded without `hdrs`, one file per answer.

An upload is two requests: a start (`x-goog-upload-command: start`) to `/upload/...` that carries only the
file's size and type and is answered with a session URL in `x-goog-upload-url`, then the file's bytes posted
to that URL, answered with `x-goog-upload-status: final`. The SDK reads both headers, so they are kept for
these endpoints whatever `hdrs` says; they hold no secret, and any credential parameter is taken out of the
stored URL as it is out of request URLs.

Two files of the same size and type send the same start. Answered from the cache, the second would get the
first's spent session, and then the first file's answer. So in record mode a start always goes live (each
file gets a session of its own, and a start's entry is written once), and the upload is keyed without the
per-session `upload_id`: by its path and the file's bytes. A replay answers the start from its entry and
each upload from the entry of its own bytes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

UPLOAD_HOST = "generativelanguage.googleapis.com"
UPLOAD_HEADERS = ("x-goog-upload-status", "x-goog-upload-url")
_SESSION_PARAM = "upload_id"


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


def upload_headers(url: str, headers: Mapping[str, str], public_url: Callable[[str], str]) -> dict[str, str]:
    """The upload headers an upload endpoint's response carries, the session URL made `public_url`."""
    if not is_upload(url):
        return {}
    kept = {name: headers[name] for name in UPLOAD_HEADERS if name in headers}
    if "x-goog-upload-url" in kept:
        kept["x-goog-upload-url"] = public_url(kept["x-goog-upload-url"])
    return kept
