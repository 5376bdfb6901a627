"""Secrets stay out: API keys, tokens and passwords in headers, query parameters, userinfo or other corners of
a URL never enter the key, cachy.jsonl, debug output or a CachyMiss, and a new value of one still hits.
Parameters that are no secrets stay, and count."""

from __future__ import annotations

import httpx
import pytest
from helpers import Upstream, ask, entries

from cachy import CachyMiss, core, enable_cachy, request_key


def test_no_secret_reaches_the_file(tmp_path):
    enable_cachy(tmp_path, hdrs=["X-Request-Id"])
    secret_headers = {
        "set-cookie": "session=SECRET-COOKIE",
        "openai-organization": "org-SECRET",
        "openai-project": "proj_SECRET",
        "x-request-id": "req_1",
        "content-type": "application/json",
    }
    upstream = Upstream(lambda request, n: (200, secret_headers, b"{}"))
    client = upstream.client(
        headers={"authorization": "Bearer sk-SECRET", "cookie": "c=SECRET", "x-goog-api-key": "SECRET"}
    )
    client.post("https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key=SECRET&alt=sse", json={})
    text = (tmp_path / "cachy.jsonl").read_text()
    assert "SECRET" not in text
    assert entries(tmp_path)[0]["headers"] == {"content-type": "application/json", "x-request-id": "req_1"}
    assert entries(tmp_path)[0]["url"].endswith("generateContent?alt=sse")


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://generativelanguage.googleapis.com/v1/x?alt=sse;key=AIza-secret", "AIza-secret"),
        ("https://api.openai.com/v1/x?bearer=tok-secret", "tok-secret"),
        ("https://api.openai.com/v1/x?Authorization=tok-secret", "tok-secret"),
        ("https://api.openai.com/v1/x#access_token=tok-secret", "tok-secret"),
    ],
)
def test_secrets_in_other_corners_of_a_url_stay_out(url, secret):
    assert secret not in core.public_url(url)


# ------------------------------------------------------------------------------ secrets in URLs
USERINFO_URLS = [
    "https://alice-SECRET:PASS-ONE-SECRET@api.openai.com/v1/chat/completions",
    "https://bob-SECRET:PASS-TWO-SECRET@api.openai.com/v1/chat/completions",
    "https://api.openai.com/v1/chat/completions",
]


def test_userinfo_in_a_url_never_enters_the_key():
    keys = {request_key(httpx.Request("POST", url, json={"q": 1})) for url in USERINFO_URLS}
    assert len(keys) == 1


def test_userinfo_in_a_url_reaches_neither_the_file_nor_debug_output_nor_cachy_miss(tmp_path, upstream, capsys):
    enable_cachy(tmp_path, debug=True)
    assert ask(upstream, 1, url=USERINFO_URLS[0]) == 1
    assert ask(upstream, 1, url=USERINFO_URLS[1]) == 1  # the password changed: still a hit
    assert upstream.calls == 1
    enable_cachy(tmp_path, mode="replay", debug=True)
    with pytest.raises(CachyMiss) as miss:
        ask(upstream, 2, url=USERINFO_URLS[0])
    text = (tmp_path / "cachy.jsonl").read_text() + capsys.readouterr().err + str(miss.value)
    assert "SECRET" not in text


SECRET_PARAMS = [
    "key",
    "API_KEY",
    "Key",
    "apiKey",
    "api-key",
    "access_token",
    "access-token",
    "token",
    "sig",
    "signature",
    "x-goog-api-key",
    "X-Goog-Api-Key",
    "secret",
    "password",
    "auth",
    "oauth_token",  # Google's other name for access_token: observed kept by the review of the uploads
]
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models/g:streamGenerateContent"


@pytest.mark.parametrize("name", SECRET_PARAMS)
def test_a_credential_query_parameter_is_removed_whatever_its_case(tmp_path, upstream, capsys, name):
    one, two, three = (f"{GEMINI}?alt=sse&{name}=VALUE-{n}-SECRET" for n in ("ONE", "TWO", "THREE"))
    keys = {request_key(httpx.Request("POST", url, json={"q": 1})) for url in (one, two, f"{GEMINI}?alt=sse")}
    assert len(keys) == 1
    enable_cachy(tmp_path, debug=True)
    assert [ask(upstream, 1, url=one), ask(upstream, 1, url=two)] == [1, 1]  # a new value still hits
    enable_cachy(tmp_path, mode="replay", debug=True)
    with pytest.raises(CachyMiss) as miss:
        ask(upstream, 2, url=three)
    text = (tmp_path / "cachy.jsonl").read_text() + capsys.readouterr().err + str(miss.value)
    assert "SECRET" not in text
    assert entries(tmp_path)[0]["url"] == f"{GEMINI}?alt=sse"


@pytest.mark.parametrize("name", ["alt", "model", "upload_id", "pageToken"])
def test_a_query_parameter_that_is_no_credential_stays_and_changes_the_key(tmp_path, upstream, name):
    """A guard for the fix above: Gemini's `alt=sse`, `upload_id` and `pageToken` are not secrets."""
    first, second = f"{GEMINI}?{name}=a", f"{GEMINI}?{name}=b"
    assert request_key(httpx.Request("POST", first)) != request_key(httpx.Request("POST", second))
    enable_cachy(tmp_path)
    assert [ask(upstream, 1, url=first), ask(upstream, 1, url=second)] == [1, 2]
    assert [entry["url"] for entry in entries(tmp_path)] == [first, second]


def test_a_session_url_kept_by_hdrs_for_any_endpoint_is_stored_without_credentials(tmp_path):
    """Observed (review of the uploads): `x-goog-upload-url` was cleaned only on Google's `/upload/` endpoints;
    named in `hdrs`, a proxy's or another path's answer stored its `key=` as it came. It is cleaned wherever kept."""
    session = "https://proxy.example/upload/session?upload_id=s1&key=AIzaSECRET&oauth_token=ya29SECRET"
    upstream = Upstream(lambda request, n: (200, {"x-goog-upload-url": session}, b"{}"))
    enable_cachy(tmp_path, hdrs=("x-goog-upload-url",))
    upstream.client().post("https://api.openai.com/v1/files", json={"q": 1})
    stored = entries(tmp_path)[0]["headers"]["x-goog-upload-url"]
    assert "SECRET" not in (tmp_path / "cachy.jsonl").read_text()
    assert stored == "https://proxy.example/upload/session?upload_id=s1"
