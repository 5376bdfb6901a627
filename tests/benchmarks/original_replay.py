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
"""

from __future__ import annotations

import json
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
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse([(None, chunk)]) + b"data: [DONE]\n\n")
        message = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
        return httpx.Response(200, json={**chunk, "object": "chat.completion", "choices": [message]},
                              headers={"set-cookie": "s=secret", "openai-organization": "org-secret"})
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
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse(events))
        return httpx.Response(200, json={**message, "content": [{"type": "text", "text": "hello"}]})
    return httpx.Response(200, json={"plain": "hello"})

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
results = list(sync_calls()) + asyncio.run(async_calls())
stats = cachy.cachy_stats() if hasattr(cachy, "cachy_stats") else None
print(json.dumps({"results": results, "upstream_calls": calls,
                  "stats": None if stats is None else {k: getattr(stats, k) for k in ("hits", "recorded", "upgraded", "replay_misses")}}))
"""


def run(path: str, folder: Path, upstream: str, mode: str) -> dict:
    """One process: `_CALLS` with the cachy at `path` first on its path."""
    done = subprocess.run(
        [sys.executable, "-c", _CALLS, str(folder), upstream, mode],
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
        cwd="/",  # the working folder would come before PYTHONPATH
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.splitlines()[-1])


def main(releases: list[str]) -> None:
    for release in releases:
        folder = Path(tempfile.mkdtemp())
        recorded = run(release, folder, "up", "-")
        if "error" in recorded:
            print(f"{Path(release).name}: recording failed: {recorded['error']}")
            continue
        lines = (folder / "cachy.jsonl").read_text().splitlines()
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
    main(sys.argv[1:])
