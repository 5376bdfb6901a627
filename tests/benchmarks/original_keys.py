"""The keys each release of the original cachy (pycachy) gives to a few reference requests, found by behaviour:
each release is imported in a process of its own (both packages are named `cachy`), enabled on an empty folder,
sent the requests through httpx against a MockTransport, and the keys read back from the file it wrote.

    for v in 0.0.2 ... 0.0.22; do pip install --no-deps --target /tmp/pycachy-$v pycachy==$v; done
    python tests/benchmarks/original_keys.py /tmp/pycachy-*

prints one line per release, `release {name: key}`, and groups releases that key every request alike. The
expected values in tests/test_original.py were copied from its output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# One process per release: PYTHONPATH puts that release's `cachy` first.
_DRIVER = r"""
import json, sys, tempfile, asyncio
from pathlib import Path
import httpx
import cachy.core as original

folder = Path(tempfile.mkdtemp())
original.enable_cachy(cache_dir=folder)
answers = {"json": b'{"ok": 1}', "sse": b'data: {"ok": 1}\n\ndata: [DONE]\n\n'}

def reply(request):
    sse = b'"stream": true' in request.content or b'"stream":true' in request.content
    return httpx.Response(200, headers={"content-type": "text/event-stream" if sse else "application/json"},
                          content=answers["sse" if sse else "json"])

client = httpx.Client(transport=httpx.MockTransport(reply))
CHAT = "https://api.openai.com/v1/chat/completions"
chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
headers = {"accept": "application/json", "content-type": "application/json"}
keys = {}

def sent(name, request, **kwargs):
    before = set(json.loads(l)["key"] for l in (folder / "cachy.jsonl").read_text().splitlines() if l.strip())
    try:
        client.send(request, **kwargs).read()
    except Exception as error:  # 0.0.2 to 0.0.4 cannot key an unread (multipart) request
        keys[name] = type(error).__name__
        return
    after = set(json.loads(l)["key"] for l in (folder / "cachy.jsonl").read_text().splitlines() if l.strip())
    keys[name] = sorted(after - before)[0] if after - before else None

# a chat as the SDKs send it (stream=False passed), and the same as client.post sends it (no stream argument)
sent("chat", client.build_request("POST", CHAT, json=chat, headers=headers), stream=False)
sent("chat, no stream argument", client.build_request("POST", CHAT, json={**chat, "n": 2}, headers=headers))
sent("stream", client.build_request("POST", CHAT, json={**chat, "stream": True}, headers={**headers, "accept": "text/event-stream"}), stream=True)
upload = client.build_request("POST", "https://api.openai.com/v1/files", data={"purpose": "batch"},
                              files={"file": ("a.jsonl", b"{}\n", "application/jsonl")})
sent("multipart upload", upload, stream=False)
gemini = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent?key=SECRET"
sent("url with ?key=", client.build_request("POST", gemini, json={"contents": [{"parts": [{"text": "hi"}]}]}, headers=headers), stream=False)
notebook = {**chat, "messages": [{"role": "user", "content": 'File "/tmp/ipykernel_123/456.py", line 7, in f at 0x7f00aabbccdd'}]}
sent("notebook noise", client.build_request("POST", CHAT, json=notebook, headers=headers), stream=False)
sent("url with an address", client.build_request("GET", "https://api.openai.com/v1/files/file-0xabcdef123/content", headers=headers), stream=False)
sent("prompt_cache_key", client.build_request("POST", CHAT, json={**chat, "prompt_cache_key": "s-42"}, headers=headers), stream=False)
binary = client.build_request("POST", "https://api.openai.com/v1/files", data={"purpose": "batch"},
                              files={"file": ("a.bin", b"\xff\xfe\x00", "application/octet-stream")})
sent("binary upload", binary, stream=False)
print(json.dumps(keys))
"""


def keys_of(release: Path) -> dict[str, str | None]:
    """The reference requests' keys under the release installed in folder `release`."""
    env = {"PYTHONPATH": str(release), "PATH": "/usr/bin:/bin"}  # run from / : the working folder would come first
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER], env=env, cwd="/", capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{release}: {done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main(folders: list[str]) -> None:
    releases = sorted((Path(f) for f in folders), key=lambda p: [int(x) for x in p.name.split("-")[-1].split(".")[:3]])
    groups: dict[str, list[str]] = {}
    for release in releases:
        keys = keys_of(release)
        print(release.name, json.dumps(keys))
        groups.setdefault(json.dumps(keys), []).append(release.name.split("-")[-1])
    print("\nreleases that key every reference request alike:")
    for keys, names in groups.items():
        print(f"  {', '.join(names)}: {keys}")


if __name__ == "__main__":
    main(sys.argv[1:])
