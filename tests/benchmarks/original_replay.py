"""Files recorded by the original cachy's releases, replayed by this cachy: the measurement of issue 17.

For one release of each key formula, a process with that release first on its path records, through the real SDKs
against a fake upstream: openai chat plain and streamed, the Responses API, anthropic plain and streamed, and a
plain httpx call, each sync and async. Then processes with this cachy replay the file: in replay mode with the
upstream down (every call must hit), in record mode (zero upstream calls; every entry upgraded), and, after
`compact --drop-stale`, in replay mode again (every call hits by cachy's own key). The originals patch httpx,
which openai >= 3 and anthropic >= 1 no longer use, so run this with the classic SDKs:

    python -m venv /tmp/venv-classic && /tmp/venv-classic/bin/pip install openai==1.109.1 anthropic==0.125.0 \\
        httpx==0.28.1 fastcore requests
    /tmp/venv-classic/bin/python tests/benchmarks/original_replay.py /tmp/pycachy-0.0.4 ... /tmp/pycachy-0.0.22

With `--write DIR` first, each release's file is also kept as DIR/<release>.jsonl, as the original wrote it, with
DIR/<release>.requests.json beside it: a request a line, as the original's `send` received it (method, URL, headers
but the credentials, cookies and the SDKs' x-stainless-* ones, body, the `stream` argument as passed, sync or async
client) with the key it wrote for it. tests/test_original_files.py replays those files through plain httpx clients,
without the SDKs; tests/data/original holds them:

    /tmp/venv-classic/bin/python tests/benchmarks/original_replay.py --write tests/data/original \
        /tmp/pycachy-0.0.{4,8,11,12,19,20,21,22}
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]  # this checkout, whose cachy replays

_CALLS = r"""
import asyncio, json, sys
import anthropic, httpx, openai
import cachy
calls = 0

def sse(events):
    return "".join((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events).encode()

def handler(request):
    global calls
    calls += 1
    if sys.argv[2] == "down":
        raise AssertionError("the upstream is down")
    body = json.loads(request.content or b"{}")
    path = request.url.path
    if path.endswith("/chat/completions"):
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}
        if body.get("stream"):
            return httpx.Response(200, headers={**SECRET_HEADERS, **CHUNKED}, content=sse([(None, chunk)]) + b"data: [DONE]\n\n")
        message = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
        return httpx.Response(200, json={**chunk, "object": "chat.completion", "choices": [message]}, headers=SECRET_HEADERS)
    if path.endswith("/responses"):
        resource = {"id": "r1", "object": "response", "created_at": 1, "model": "m", "status": "completed",
                    "output": [{"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                                "content": [{"type": "output_text", "text": "hello", "annotations": []}]}],
                    "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
        if body.get("stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=sse([("response.completed", {"type": "response.completed", "sequence_number": 1, "response": resource})]))
        return httpx.Response(200, json=resource)
    if path.endswith("/messages"):
        message = {"id": "msg1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
                   "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
        if body.get("stream"):
            events = [("message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}}),
                      ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                      ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}}),
                      ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                      ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 1}}),
                      ("message_stop", {"type": "message_stop"})]
            return httpx.Response(200, headers={"set-cookie": "s=secret", **CHUNKED}, content=sse(events))
        return httpx.Response(200, json={**message, "content": [{"type": "text", "text": "hello"}]})
    return httpx.Response(200, json={"plain": "hello"})

# What a provider sends and the original stored (all but content-encoding), which cachy must not keep
SECRET_HEADERS = {"set-cookie": "s=secret", "openai-organization": "org-secret", "openai-project": "proj_secret"}
CHUNKED = {"content-type": "text/event-stream", "transfer-encoding": "chunked"}
transport = httpx.MockTransport(handler)
chat = dict(model="m", messages=[{"role": "user", "content": "hi"}])
said = dict(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])

def sync_calls():
    o = openai.OpenAI(api_key="k", http_client=httpx.Client(transport=transport))
    a = anthropic.Anthropic(api_key="k", http_client=httpx.Client(transport=transport))
    yield "openai chat", o.chat.completions.create(**chat).choices[0].message.content
    yield "openai chat stream", "".join(c.choices[0].delta.content or "" for c in o.chat.completions.create(**chat, stream=True))
    yield "openai responses", o.responses.create(model="m", input="hi").output_text
    yield "openai responses stream", [e.type for e in o.responses.create(model="m", input="hi", stream=True)]
    yield "anthropic", a.messages.create(**said).content[0].text
    with a.messages.stream(**said) as stream:
        yield "anthropic stream", "".join(stream.text_stream)
    yield "httpx", httpx.Client(transport=transport).post("https://api.openai.com/v1/embeddings", json={"input": "hi"}).json()

async def async_calls():
    o = openai.AsyncOpenAI(api_key="k", http_client=httpx.AsyncClient(transport=transport))
    a = anthropic.AsyncAnthropic(api_key="k", http_client=httpx.AsyncClient(transport=transport))
    out = [("async openai chat", (await o.chat.completions.create(**chat, n=2)).choices[0].message.content)]
    out.append(("async openai chat stream", "".join([c.choices[0].delta.content or "" async for c in await o.chat.completions.create(**chat, n=2, stream=True)])))
    out.append(("async openai responses", (await o.responses.create(model="m", input="hi async")).output_text))
    out.append(("async openai responses stream", [e.type async for e in await o.responses.create(model="m", input="hi async", stream=True)]))
    out.append(("async anthropic", (await a.messages.create(**{**said, "max_tokens": 11})).content[0].text))
    async with a.messages.stream(**{**said, "max_tokens": 11}) as stream:
        out.append(("async anthropic stream", "".join([t async for t in stream.text_stream])))
    async with httpx.AsyncClient(transport=transport) as client:
        out.append(("async httpx", (await client.post("https://api.openai.com/v1/embeddings", json={"input": "hi async"})).json()))
    return out

import warnings
warnings.simplefilter("ignore")
kwargs = {"mode": sys.argv[3]} if sys.argv[3] != "-" else {}
cachy.enable_cachy(sys.argv[1], **kwargs)
seen = []  # with a 4th argument: each request as the `send` of the cachy on the path received it

def keys_written():
    with open(f"{sys.argv[1]}/cachy.jsonl") as file:
        return {json.loads(line)["key"] for line in file if line.strip()}

def seen_request(request, kwargs, kind, before):
    headers = [[name, value] for name, value in request.headers.multi_items()
               if name not in ("authorization", "x-api-key", "cookie") and not name.startswith("x-stainless-")]
    new = sorted(keys_written() - before)
    seen.append({"client": kind, "method": request.method, "url": str(request.url), "headers": headers,
                 "body": request.content.decode(), "stream": kwargs.get("stream", "not passed"),
                 "key": new[0] if len(new) == 1 else new})

def watched(send):
    def sync_send(self, request, **kwargs):
        before = keys_written()
        response = send(self, request, **kwargs)
        seen_request(request, kwargs, "sync", before)
        return response
    return sync_send

def awatched(send):
    async def async_send(self, request, **kwargs):
        before = keys_written()
        response = await send(self, request, **kwargs)
        seen_request(request, kwargs, "async", before)
        return response
    return async_send

if sys.argv[4] != "-":
    httpx.Client.send, httpx.AsyncClient.send = watched(httpx.Client.send), awatched(httpx.AsyncClient.send)
results = list(sync_calls()) + asyncio.run(async_calls())
if sys.argv[4] != "-":
    for (name, _), request in zip(results, seen, strict=True):
        request["call"] = name
    with open(sys.argv[4], "w") as file:  # a request a line
        file.write("[\n" + ",\n".join(json.dumps(request) for request in seen) + "\n]\n")
stats = cachy.cachy_stats() if hasattr(cachy, "cachy_stats") else None
print(json.dumps({"results": results, "upstream_calls": calls,
                  "stats": None if stats is None else {k: getattr(stats, k) for k in ("hits", "recorded", "upgraded", "replay_misses")}}))
"""


def run(path: str, folder: Path, upstream: str, mode: str, requests: Path | None = None) -> dict:
    """One process: `_CALLS` with the cachy at `path` first on its path; the requests it sent written to `requests`."""
    done = subprocess.run(
        [sys.executable, "-c", _CALLS, str(folder), upstream, mode, str(requests or "-")],
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
        cwd="/",  # the working folder would come before PYTHONPATH
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.splitlines()[-1])


def main(releases: list[str], write: Path | None = None) -> None:
    for release in releases:
        folder = Path(tempfile.mkdtemp())
        recorded = run(release, folder, "up", "-", folder / "requests.json")
        if "error" in recorded:
            print(f"{Path(release).name}: recording failed: {recorded['error']}")
            continue
        lines = (folder / "cachy.jsonl").read_text().splitlines()
        if write:  # the original's file and the requests it keyed, before this cachy touches them
            name = Path(release).name.removeprefix("pycachy-")
            write.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "cachy.jsonl", write / f"{name}.jsonl")
            shutil.copyfile(folder / "requests.json", write / f"{name}.requests.json")
        replay = run(str(HERE), folder, "down", "replay")
        upgrade = run(str(HERE), folder, "up", "record")
        subprocess.run(
            [sys.executable, "-m", "cachy", "compact", "--drop-stale", str(folder)],
            env={"PYTHONPATH": str(HERE)},
            cwd="/",
            capture_output=True,
            check=True,
        )
        again = run(str(HERE), folder, "down", "replay")
        left = (folder / "cachy.jsonl").read_text().splitlines()
        same = all(r.get("results") == recorded["results"] for r in (replay, upgrade, again))
        print(
            f"{Path(release).name}: recorded {len(lines)} entries for 14 calls; replay: {replay.get('stats') or replay}; "
            f"record: {upgrade.get('stats') or upgrade}, upstream calls {upgrade.get('upstream_calls')}; after compact --drop-stale "
            f"({len(left)} lines, {sum(len(json.loads(line)['key']) == 8 for line in left)} the original's) replay: {again.get('stats') or again}; "
            f"answers as recorded: {same}"
        )


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--write"]:
        main(arguments[2:], Path(arguments[1]).resolve())
    else:
        main(arguments)
