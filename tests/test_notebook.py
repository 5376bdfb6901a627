"""cachy as a notebook shows it: one notebook run in a real kernel (nbclient, ipykernel), and the outputs it stores.

The kernel is this Python, and its requests go to an httpx MockTransport defined in a cell: nothing leaves the machine."""

from __future__ import annotations

import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import nbclient
import nbformat
import pytest

import cachy

CALL = 'client.post("https://api.openai.com/v1/chat/completions", json={"n": 1})'
MISS = 'client.post("https://api.openai.com/v1/chat/completions", json={"n": 3})'
CELLS = {
    "python": "import sys, cachy\nprint(sys.executable)\nprint(cachy.__file__)",
    "damaged": """
        import pathlib
        import httpx
        from cachy import cachy_stats, enable_cachy

        folder = pathlib.Path(FOLDER)
        (folder / "cachy.jsonl").write_text('{"key": "cut short\\n')  # a damaged first line
        client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": 1})))
        enable_cachy(folder)
        CALL
    """,
    "calls": """
        client.post("https://api.openai.com/v1/chat/completions", json={"n": 2})
        for _ in range(3):
            CALL
        client.get("https://example.com/")
    """,
    "stats": "cachy_stats()",
    "miss": f'enable_cachy(folder, mode="replay")\n{MISS}',
    "stats after the miss": "cachy_stats()",
}


def source(name: str, folder: Path) -> str:
    return textwrap.dedent(CELLS[name]).strip().replace("FOLDER", repr(str(folder))).replace("CALL", CALL)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook")


@pytest.fixture(scope="module")
def outputs(folder) -> dict[str, list[dict]]:
    """Each cell's stored outputs, by the cell's name in CELLS."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source(name, folder)) for name in CELLS])
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=60, allow_errors=True, resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    return {name: cell.outputs for name, cell in zip(CELLS, notebook.cells, strict=True)}


def test_the_kernel_runs_this_python_and_this_cachy(outputs):
    assert outputs["python"] == [
        {"output_type": "stream", "name": "stdout", "text": f"{sys.executable}\n{cachy.__file__}\n"}
    ]


def test_cells_that_should_not_fail_did_not(outputs):
    errors = {name: output for name, cell in outputs.items() for output in cell if output["output_type"] == "error"}
    assert list(errors) == ["miss"]


def table(outputs: list[dict]) -> dict[str, str]:
    """The stats table in a cell's rich output, as {column: count}."""
    (result,) = outputs
    assert result["data"]["text/plain"].startswith("Stats(hits=")  # the plain text stays the dataclass's
    root = ET.fromstring(result["data"]["text/html"])  # well-formed, too
    return dict(zip((th.text for th in root.iter("th")), (td.text for td in root.iter("td")), strict=True))


def test_cachy_stats_renders_as_a_table_of_the_counts(outputs):
    assert table(outputs["stats"]) == {"hits": "3", "recorded": "2", "passed through": "1", "replay misses": "0"}
    assert table(outputs["stats after the miss"]) == {
        "hits": "0",
        "recorded": "0",
        "passed through": "0",
        "replay misses": "1",
    }


def test_a_replay_miss_shows_its_message_first_and_the_cells_line_not_cachys_frames(outputs):
    (error,) = outputs["miss"]
    assert (error["output_type"], error["ename"]) == ("error", "CachyMiss")
    assert error["evalue"].startswith("cachy: no recorded response for POST https://api.openai.com/v1/chat/completions")
    assert error["traceback"] == [f"CachyMiss: {error['evalue']}", f"  Cell In[5], line 2: {MISS}"]


def test_a_cachy_warning_is_one_line_at_the_users_call_then_that_call(outputs, folder):
    warning, result = outputs["damaged"]
    assert (warning["output_type"], warning["name"], result["output_type"]) == ("stream", "stderr", "execute_result")
    first, code = warning["text"].splitlines()
    location, message = first.split(": CachyWarning: ")
    assert message == f"cachy skipped damaged lines of {folder / 'cachy.jsonl'}: 1 in all, line 1"
    line = source("damaged", folder).splitlines().index(CALL) + 1
    assert location.endswith(f".py:{line}")  # the cell's file, where IPython keeps it
    assert not location.startswith((str(Path(cachy.__file__).parent), sys.prefix))
    assert code.strip() == CALL
