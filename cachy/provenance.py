"""Where an entry came from: the client that sent the request, read from its `User-Agent`, and the model the
response names.

A team keeps `cachy.jsonl` for months; after an SDK upgrade or a model's retirement it needs to see which
entries to record again. So each new entry names its client (`OpenAI/Python 3.57.0`) and its model. Only
the product tokens of a User-Agent are kept (a name, a slash, a version), at most three and 100 characters:
nothing else of a header ever reaches the file."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .lines import parse_json

# A product token, `OpenAI/Python 3.57.0`: at the start or after a space, a name of words of at most 12 letters
# joined by hyphens or dots (a digit at its end: `httpx2`), then a version of numbers with a short suffix, ending
# the token. A secret, a session id or an email in a User-Agent (`session_id/4b5e…`, `sk-proj-AbCd…/1.0`) is no
# such thing, and is left out.
_PRODUCT = re.compile(
    r"(?:^|(?<=\s))([A-Za-z]{1,12}(?:[-.][A-Za-z]{1,12}){0,3}\d?)"
    r"/((?:Python |JS )?\d{1,4}(?:\.\d{1,6}){0,3}(?:[-+.]?[A-Za-z]{1,8}\d{0,4})?)(?=\s|;|\)|$)"
)
_MOST_PRODUCTS, _LONGEST = 3, 100
_MODEL_FIELDS = ("model", "modelVersion")  # openai and anthropic; gemini


def client(headers: Mapping[str, str]) -> str | None:
    """The product tokens of the request's User-Agent: `OpenAI/Python 3.57.0`, `google-genai-sdk/1.2 gl-python/3.11`."""
    products = _PRODUCT.findall(headers.get("user-agent", ""))[:_MOST_PRODUCTS]
    return " ".join(f"{name}/{version}" for name, version in products)[:_LONGEST] or None


def model(body: bytes) -> str | None:
    """The model a response names: its `model` (gemini: `modelVersion`), or that of the resource it carries
    (`response`, `message`); in a stream, the first event that names one."""
    if not any(name.encode() in body for name in _MODEL_FIELDS):
        return None
    if body.startswith(b"data:") or b"\ndata:" in body:
        documents = (parse_json(line[5:]) for line in body.split(b"\n") if line.startswith(b"data:"))
    else:
        documents = iter([parse_json(body)])
    for document in documents:
        for resource in (document, *(document.values() if isinstance(document, dict) else ())):
            named = _named(resource)
            if named:
                return named
    return None


def _named(resource: object) -> str | None:
    if not isinstance(resource, dict):
        return None
    named = next((resource[name] for name in _MODEL_FIELDS if isinstance(resource.get(name), str)), None)
    return named[:_LONGEST] if named else None


def of(headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    """The provenance fields of a new entry: `client` and `model`, those that are known."""
    found = {"client": client(headers), "model": model(body)}
    return {name: value for name, value in found.items() if value}
