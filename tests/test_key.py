"""The request key: what goes into it, and what is left out on purpose."""

import httpx
import httpx2

from cachy import request_key

URL = "https://api.openai.com/v1/chat/completions"


def key(method="POST", url=URL, stream=False, module=httpx, **kwargs) -> str:
    return request_key(module.Request(method, url, **kwargs), stream)


def test_api_key_rotation_still_hits():
    assert key(json={"a": 1}, headers={"authorization": "Bearer old"}) == key(
        json={"a": 1}, headers={"authorization": "Bearer new", "x-api-key": "other"}
    )


def test_gemini_key_param_is_stripped_but_other_params_count():
    gemini = "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent"
    assert key(url=f"{gemini}?key=AAA") == key(url=f"{gemini}?key=BBB") == key(url=gemini)
    assert key(url=f"{gemini}?alt=sse&key=AAA") == key(url=f"{gemini}?alt=sse")
    assert key(url=f"{gemini}?alt=sse") != key(url=gemini)


def test_json_key_order_does_not_matter():
    assert key(content=b'{"model": "m", "n": 1}') == key(content=b'{"n":1,"model":"m"}')
    assert key(json={"model": "m", "n": 1}) != key(json={"model": "m", "n": 2})


def test_method_counts():
    assert key("GET", url="https://api.openai.com/v1/files/f1") != key(
        "DELETE", url="https://api.openai.com/v1/files/f1"
    )


def test_stream_flag_counts():
    assert key(json={"a": 1}, stream=True) != key(json={"a": 1}, stream=False)


def test_multipart_boundary_is_ignored_but_content_counts():
    def upload(content: bytes, module=httpx) -> str:
        request = module.Request("POST", "https://api.anthropic.com/v1/files", files={"file": ("a.txt", content)})
        request.read()
        return request_key(request)

    first, second = upload(b"hello"), upload(b"hello")
    assert first == second
    assert upload(b"other") != first
    assert upload(b"hello", module=httpx2) == first


def test_key_is_64_bits_of_hex_and_the_same_for_httpx_and_httpx2():
    assert len(key(json={"a": 1})) == 16
    assert set(key(json={"a": 1})) <= set("0123456789abcdef")
    assert key(json={"a": 1}) == key(module=httpx2, json={"a": 1})


def test_raw_bytes_that_claim_to_be_json_are_hashed_as_they_are():
    blob = bytes(range(256))
    assert key(content=blob, headers={"content-type": "application/json"}) != key(content=blob[::-1])
