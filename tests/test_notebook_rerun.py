"""A notebook re-run, end to end: the same notebook runs twice, each time in a fresh kernel (nbclient, ipykernel),
the second time with its provider down and in replay mode, and it must give the same outputs.

Its four calls go through the openai SDK to a fake provider on 127.0.0.1. Two of the prompts hold what differs
from one kernel to the next: a traceback caught in a cell names the cell's file, `/tmp/ipykernel_<pid>/<n>.py`,
and a function's repr holds its memory address. Without `key_rules` those two (and any traceback from a cell)
would miss on the re-run. Nothing leaves the machine."""

from __future__ import annotations

import json
import os
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import nbclient
import nbformat
import pytest
from helpers import Server, entries

import cachy

CELLS = {
    "kernel": """
        import os, cachy
        print(os.getpid(), cachy.__file__)
    """,
    "enable": """
        import sys, traceback
        from pathlib import Path
        import httpx, openai
        from cachy import cachy_stats, enable_cachy

        enable_cachy(FOLDER, doms=("127.0.0.1",))  # the mode comes from CACHY_MODE
        client = openai.OpenAI(base_url=BASE_URL, api_key="k", max_retries=0)

        def ask(prompt):
            answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
            return answer.choices[0].message.content
    """,
    "plain": """
        ask("Why cache LLM calls?")
    """,
    "cell traceback": """
        try:
            1 / 0
        except Exception:
            error = traceback.format_exc()  # names this cell's file: /tmp/ipykernel_<pid>/<n>.py
        ask(f"Fix this error:\\n{error}")
    """,
    "function repr": """
        def add(a, b):
            return a + b

        ask(f"What does this do?\\n{add!r}")  # <function add at 0x7f…>
    """,
    "library traceback": """
        try:
            httpx.URL(123)
        except Exception:
            error = traceback.format_exc()  # frames in site-packages/httpx, after the cell's own
        ask(f"Why does httpx reject this?\\n{error}\\nhttpx is {Path(httpx.__file__)}")
    """,
    "stats": "cachy_stats()",
}
ANSWERS = ["plain", "cell traceback", "function repr", "library traceback"]


def run(folder: Path, base_url: str, mode: str, first_cell: str = "") -> dict[str, list[dict]]:
    """Run the notebook in a fresh kernel that imports this checkout's cachy, with `CACHY_MODE=mode`: each
    cell's outputs by its name. `first_cell` is prepended to the first cell's code."""

    def source(name):
        code = textwrap.dedent(CELLS[name]).strip()
        code = code.replace("FOLDER", repr(str(folder))).replace("BASE_URL", repr(base_url))
        return f"{first_cell}\n{code}" if name == "kernel" and first_cell else code

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source(name)) for name in CELLS])
    checkout = str(Path(cachy.__file__).parent.parent)
    pythonpath = os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "CACHY_MODE": mode}
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=60, allow_errors=True, resources={"metadata": {"path": str(folder)}}
    )
    client.execute(env=env)
    return {name: cell.outputs for name, cell in zip(CELLS, notebook.cells, strict=True)}


def errors(outputs: dict[str, list[dict]]) -> dict[str, str]:
    return {
        name: f"{output['ename']}: {output['evalue']}"
        for name, cell in outputs.items()
        for output in cell
        if output["output_type"] == "error"
    }


def stats(outputs: list[dict]) -> dict[str, str]:
    """The counts in `cachy_stats()`'s table, as {column: count}."""
    (result,) = outputs
    root = ET.fromstring(result["data"]["text/html"])
    return dict(zip((th.text for th in root.iter("th")), (td.text for td in root.iter("td")), strict=True))


def completion(request, n):
    """An OpenAI chat completion whose text carries the call's serial number, so a replay is told from a call."""
    prompt = json.loads(request.content)["messages"][0]["content"]
    message = {"role": "assistant", "content": f"answer {n} to: {prompt.splitlines()[0][:40]}"}
    body = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return 200, {"content-type": "application/json"}, json.dumps(body).encode()


@pytest.mark.slow
def test_a_notebook_rerun_in_a_fresh_kernel_without_its_provider_replays_every_call(tmp_path):
    with Server(completion) as server:
        first = run(tmp_path, f"{server.url}/v1", "record")
    # The server is shut down: its port refuses connections, so the re-run can only replay.
    second = run(tmp_path, f"{server.url}/v1", "replay")

    assert (errors(first), errors(second)) == ({}, {})
    (pid1, file1), (pid2, file2) = (outputs["kernel"][0]["text"].split() for outputs in (first, second))
    assert file1 == file2 == cachy.__file__  # the kernel imports this checkout's cachy
    assert pid1 != pid2  # fresh kernels: other cell file names, other memory addresses

    prompts = [json.loads(request.content)["messages"][0]["content"] for request in server.requests]
    assert server.calls == 4  # the first run's four, and not one more
    assert re.search(r"/ipykernel_\d+/\d+\.py", prompts[1])  # the noise that rules must take out of the key
    assert re.search(r"<function add at 0x[0-9a-f]+>", prompts[2])
    assert re.search(r"site-packages/httpx/_urls\.py", prompts[3])

    assert [first[name] for name in ANSWERS] == [second[name] for name in ANSWERS]
    assert [first[name][0]["data"]["text/plain"] for name in ANSWERS] == [  # the live calls' own answers
        "'answer 1 to: Why cache LLM calls?'",
        "'answer 2 to: Fix this error:'",
        "'answer 3 to: What does this do?'",
        "'answer 4 to: Why does httpx reject this?'",
    ]

    assert stats(first["stats"]) == {"hits": "0", "recorded": "4", "passed through": "0", "replay misses": "0"}
    replayed = stats(second["stats"])
    assert replayed.pop("time saved").endswith(" s")  # what the four calls took when recorded
    assert replayed == {
        "hits": "4",
        "recorded": "0",
        "passed through": "0",
        "replay misses": "0",
        "tokens saved": "40 in, 20 out",  # the recorded answers' usage
    }
    assert len(entries(tmp_path)) == 4
    shown = [output for outputs in (first, second) for cell in outputs.values() for output in cell]
    assert [output["text"] for output in shown if output.get("name") == "stderr"] == []  # no warning in either run
