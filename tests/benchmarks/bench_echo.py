"""What the Responses API's echo costs a cache file, and whether replays keep it: cachy with references to the
request (the default), cachy storing bytes as they are (`echo=False`), and the original, pycachy 0.0.22.

Run by hand, not by pytest:  python tests/benchmarks/bench_echo.py [--original DIR] [--hits N]
A session is 20 calls of the real openai SDK (10 streamed), each with an 8 KB `instructions` and 10 function
tools, against a fake upstream that echoes the request as the API does: the instructions, the tools in the
API's own key order, defaults for the fields the request left out, a resolved model name. Each session is
recorded, then replayed with the upstream down, and every replayed object's `model_dump()` is compared with
the live one. With `--original DIR` (pycachy installed there: `pip install --no-deps --target DIR
pycachy==0.0.22`) the same session runs on it in a process of its own, as both packages are named `cachy`.
With `--hits N`, what a hit costs instead: one whole (indented) and one streamed (compact events) call of the
session recorded with references and with `echo=False`, then N hits of each through plain httpx with the
upstream down, the variants interleaved round by round; medians. "cold" forgets the texts of request fields
kept from the previous hit (`echo._TEXTS`), as the first hit of a prompt and tools pays."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import openai

import cachy
from cachy import disable_cachy, enable_cachy

CALLS, STREAMED = 20, 10
INSTRUCTIONS = (
    "You are a careful assistant for a team of engineers. Answer briefly and cite the tool you used. " * 90
)[:8192]
TOOLS = [
    {
        "type": "function",
        "name": f"tool_{n}",
        "description": f"Tool number {n}: looks up a record of kind {n} by its id and returns it as JSON.",
        "parameters": {
            "type": "object",
            "properties": {"id": {"type": "string", "description": "the record's id"}, "limit": {"type": "integer"}},
            "required": ["id", "limit"],
            "additionalProperties": False,
        },
        "strict": True,
    }
    for n in range(10)
]
DEFAULTS = {
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "prompt_cache_key": None,
    "reasoning": {"effort": None, "summary": None},
    "service_tier": "default",
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "tool_choice": "auto",
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}


def resource(body: dict, n: int, status: str, text: str | None) -> dict:
    """The response resource, its fields in the API's order, echoing the request as the API does."""
    tools = [
        {key: tool[key] for key in ("type", "description", "name", "parameters", "strict")} for tool in body["tools"]
    ]
    output = []
    if text is not None:
        content = [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
        output = [{"id": f"msg_{n}", "type": "message", "status": "completed", "content": content, "role": "assistant"}]
    echoed = {name: body.get(name, default) for name, default in DEFAULTS.items()}
    usage = None
    if text is not None:
        usage = {
            "input_tokens": 2100,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 12,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 2112,
        }
    return {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": 1700000000 + n,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": echoed.pop("max_output_tokens"),
        "model": f"{body['model']}-2025-08-07",
        "output": output,
        **echoed,
        "tools": tools,
        "usage": usage,
    }


def upstream(calls: list):
    """The fake API: JSON indented as the API writes it, events compact, one `event:` line each."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if os.environ.get("BENCH_UPSTREAM_DOWN"):
            raise httpx2.ConnectError("the upstream is down")
        calls.append(request)
        body, n = json.loads(request.content), len(calls)
        text = f"answer {n} to {body['input']}"
        if not body.get("stream"):
            return httpx2.Response(
                200,
                headers={"content-type": "application/json"},
                content=json.dumps(resource(body, n, "completed", text), indent=2).encode(),
            )
        events = [
            ("response.created", {"response": resource(body, n, "in_progress", None)}),
            ("response.in_progress", {"response": resource(body, n, "in_progress", None)}),
            (
                "response.output_text.delta",
                {"item_id": f"msg_{n}", "output_index": 0, "content_index": 0, "delta": text},
            ),
            ("response.completed", {"response": resource(body, n, "completed", text)}),
        ]
        chunks = [
            f"event: {name}\ndata: {json.dumps({'type': name, 'sequence_number': number, **data}, separators=(',', ':'))}\n\n"
            for number, (name, data) in enumerate(events)
        ]
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content="".join(chunks).encode())

    return handler


def session(folder: Path, **enable_kwargs) -> list:
    """The 20 calls, recorded into `folder`; their objects' `model_dump()`s (a stream's: each event's)."""
    calls: list = []
    client = openai.OpenAI(
        api_key="sk-bench", http_client=httpx2.Client(transport=httpx2.MockTransport(upstream(calls)))
    )
    enable_cachy(folder, **enable_kwargs)
    dumps = []
    for n in range(CALLS):
        asked = {"model": "gpt-bench", "instructions": INSTRUCTIONS, "tools": TOOLS, "input": f"question {n}"}
        if n < STREAMED:
            dumps.append([event.model_dump() for event in client.responses.create(**asked, stream=True)])
        else:
            dumps.append(client.responses.create(**asked).model_dump())
    disable_cachy()
    return dumps


def run(folder: Path, **enable_kwargs) -> dict:
    """Record a session, then replay it with the upstream down: bytes stored, and what the replay kept."""
    live = session(folder, **enable_kwargs)
    os.environ["BENCH_UPSTREAM_DOWN"] = "1"
    try:
        replayed = session(folder, **enable_kwargs)
    finally:
        del os.environ["BENCH_UPSTREAM_DOWN"]
    final = [dump[-1]["response"] if isinstance(dump, list) else dump for dump in replayed]
    return {
        "bytes": (folder / "cachy.jsonl").stat().st_size,
        "equal": replayed == live,
        "keeps_instructions_and_tools": all(
            r.get("instructions") == INSTRUCTIONS and len(r.get("tools") or []) == 10 for r in final
        ),
    }


def original(directory: str) -> dict:
    """The same session on pycachy installed in `directory`, in a process of its own."""
    script = f"import json, sys, tempfile, pathlib; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_echo; print(json.dumps(bench_echo.run(pathlib.Path(tempfile.mkdtemp()))))"
    env = {**os.environ, "PYTHONPATH": directory}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def hits(n: int, rounds: int = 20) -> dict:
    """Median microseconds of a hit, per (call, variant): see the module's docstring."""
    from cachy import echo

    asked = {"model": "gpt-bench", "instructions": INSTRUCTIONS, "tools": TOOLS, "input": "question"}
    calls = {"whole (indented)": asked, "stream (compact events)": {**asked, "stream": True}}
    variants = {"echo=False": {"echo": False}, "references": {}, "references, cold": {}}
    folders = {name: Path(tempfile.mkdtemp()) for name in ("echo=False", "references")}
    client = httpx2.Client()

    def call(body: dict) -> bytes:
        if not body.get("stream"):
            return client.post("https://api.openai.com/v1/responses", json=body).content
        with client.stream("POST", "https://api.openai.com/v1/responses", json=body) as response:
            return response.read()

    live = {}
    for name, folder in folders.items():  # each recorded from an upstream of its own: the same bytes
        client = httpx2.Client(transport=httpx2.MockTransport(upstream([])))
        enable_cachy(folder, **variants[name])
        live[name] = {label: call(body) for label, body in calls.items()}
    assert live["echo=False"] == live["references"]
    os.environ["BENCH_UPSTREAM_DOWN"] = "1"
    times: dict = {(label, variant): [] for label in calls for variant in variants}
    try:
        for _ in range(rounds):
            for variant, kwargs in variants.items():
                enable_cachy(folders[variant.split(",")[0]], mode="replay", **kwargs)
                for label, body in calls.items():
                    assert call(body) == live["echo=False"][label]
                    for _ in range(max(1, n // rounds)):
                        if variant.endswith("cold"):
                            getattr(echo, "_TEXTS", {}).clear()  # a cachy that keeps none: the same
                        start = time.perf_counter()
                        call(body)
                        times[label, variant].append(time.perf_counter() - start)
    finally:
        del os.environ["BENCH_UPSTREAM_DOWN"]
        disable_cachy()
    return {key: statistics.median(found) * 1e6 for key, found in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", metavar="DIR", help="where pycachy 0.0.22 is installed, to compare")
    parser.add_argument("--hits", metavar="N", type=int, help="time N hits of each call and variant instead")
    args = parser.parse_args()
    if args.hits:
        found = hits(args.hits)
        print(f"median us per hit, {args.hits} hits each, 8 KB instructions and 10 tools; cachy {cachy.__file__}")
        print("| call | echo=False | references | ratio | references, cold | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for label in dict.fromkeys(label for label, _ in found):
            exact, warm, cold = (found[label, v] for v in ("echo=False", "references", "references, cold"))
            print(f"| {label} | {exact:.0f} | {warm:.0f} | {warm / exact:.2f}x | {cold:.0f} | {cold / exact:.2f}x |")
        return
    results = {}
    for name, kwargs in (
        ("cachy, bytes as they are (echo=False)", {"echo": False}),
        ("cachy, echo referenced (default)", {}),
    ):
        results[name] = run(Path(tempfile.mkdtemp()), **kwargs)
    if args.original:
        results["pycachy 0.0.22 (resp_keep)"] = original(args.original)
    exact = results["cachy, bytes as they are (echo=False)"]["bytes"]
    print(
        f"{CALLS} Responses API calls ({STREAMED} streamed), 8 KB instructions and 10 tools each; cachy {cachy.__file__}"
    )
    print("| recording | bytes | of byte-exact | replay equals live (model_dump) | instructions and tools kept |")
    print("|---|---:|---:|---|---|")
    for name, result in results.items():
        print(
            f"| {name} | {result['bytes']:,} | {result['bytes'] / exact:.0%} | {result['equal']} | {result['keeps_instructions_and_tools']} |"
        )


if __name__ == "__main__":
    main()
