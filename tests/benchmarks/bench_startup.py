"""What installing cachy costs where it is not used: a pytest session, and `import cachy`.

Run by hand, not by pytest:  python tests/benchmarks/bench_startup.py [--runs 10] [--instructions]
Every figure comes from fresh processes of this Python, run in a temp folder: so it measures the cachy that
this Python imports there (the installed one, or the one on PYTHONPATH), with bytecode cached as an installed
package has it, even under PYTHONDONTWRITEBYTECODE.

The session rows are paired: each run of a one-test session is matched with the same run under
`-p no:cachy` (the order alternating), and the added time is the median of the pairs' differences, in wall
time and in CPU time (user + system), which other processes on a busy machine disturb less. Since those can
only slow a run down, the difference of the fastest runs is shown too. On a machine shared with other work,
all of these can still be off by tens of ms: `--instructions` then counts, with valgrind, the instructions
of one pair, which no other process changes. The import rows time the CPU that an import adds to what the
process imported before it, so process start-up stays out."""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("httpx", "httpx2", "cachy.core", "fastcore")

IMPORTS = {  # row: (imported before the clock starts, what is timed)
    "`import cachy` + `cachy.enable_cachy`, beyond httpx and httpx2": (
        "import httpx, httpx2",
        "import cachy; cachy.enable_cachy",
    ),
    "`import cachy.plugin` (what pytest loads), beyond pytest": ("import pytest", "import cachy.plugin"),
}


def run(folder: Path, *args: str, under: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`python *args` in `folder`, under the `under` command (valgrind) if any, with bytecode cached in `folder`."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPYCACHEPREFIX=str(folder / "bytecode"), PYTHONHASHSEED="0")
    command = [*under, sys.executable, *args]
    return subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True, text=True)


SESSION = ("-m", "pytest", "-q", "-p", "no:cacheprovider")


def session_seconds(folder: Path, *args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one session; the CPU is the child's alone, as children run one at a time."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    run(folder, *SESSION, *args)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def instructions(folder: Path, *args: str) -> int:
    """The instructions that one session executes, as valgrind counts them."""
    callgrind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={folder / 'callgrind.out'}")
    return int(re.search(r"Collected : (\d+)", run(folder, *SESSION, *args, under=callgrind).stderr).group(1))


def pytest_table(folder: Path, runs: int, count_instructions: bool) -> str:
    (folder / "pytest.ini").write_text("[pytest]\n")  # the rootdir, whatever the folders above hold
    (folder / "test_one.py").write_text("def test_one():\n    pass\n")
    if "--cachy" not in run(folder, "-m", "pytest", "--help").stdout:
        sys.exit("the cachy plugin is not installed in this Python: pip install -e . first")
    session_seconds(folder)  # warm the file cache and the bytecode
    with_plugin, without = [], []
    for number in range(runs):
        for plugin in (True, False) if number % 2 else (False, True):
            if plugin:
                with_plugin.append(session_seconds(folder))
            else:
                without.append(session_seconds(folder, "-p", "no:cachy"))
    lines = [
        "| one-test session | cachy installed, unused | `-p no:cachy` | added: median of paired differences "
        "(target <= 10 ms) | added: fastest against fastest |",
        "|---|---:|---:|---:|---:|",
    ]
    for clock, kind in enumerate(("wall", "CPU")):
        on, off = [times[clock] * 1000 for times in with_plugin], [times[clock] * 1000 for times in without]
        paired = statistics.median(a - b for a, b in zip(on, off, strict=True))
        medians = f"{statistics.median(on):.0f} ms | {statistics.median(off):.0f} ms"
        lines.append(f"| {kind} | {medians} | **{paired:+.1f} ms** | {min(on) - min(off):+.1f} ms |")
    if count_instructions:
        on, off = instructions(folder), instructions(folder, "-p", "no:cachy")
        cpu_ms = statistics.median(times[1] for times in with_plugin) * 1000 * (on - off) / on
        lines.append(
            f"| instructions (valgrind, one pair) | {on / 1e6:,.1f} M | {off / 1e6:,.1f} M | "
            f"{(on - off) / 1e6:+,.1f} M ({(on - off) / off:+.2%}), about {cpu_ms:+.1f} ms of the CPU median | |"
        )
    return "\n".join(lines)


def import_ms(folder: Path, before: str, timed: str) -> float:
    code = f"{before}\nimport time\nstart = time.process_time()\n{timed}\nprint(time.process_time() - start)"
    return float(run(folder, "-c", code).stdout) * 1000


def import_table(folder: Path, runs: int) -> str:
    import_ms(folder, "import httpx, httpx2", "import cachy; cachy.enable_cachy")  # bytecode
    lines = ["| import (CPU, median) | |", "|---|---:|"]
    lines += [
        f"| {row} | {statistics.median(import_ms(folder, *code) for _ in range(runs)):.1f} ms |"
        for row, code in IMPORTS.items()
    ]
    check = f"import sys, cachy.plugin; print(' '.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')"
    lines.append(
        f"| modules among {', '.join(HEAVY)} that `import cachy.plugin` imports | {run(folder, '-c', check).stdout.strip()} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per figure (default 10)")
    parser.add_argument("--instructions", action="store_true", help="count instructions with valgrind (a minute)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        where = run(folder, "-c", "import cachy; print(cachy.__file__)").stdout.strip()
        print(f"Python {sys.version.split()[0]}, cachy from {where}, medians of {options.runs} runs\n")
        sessions = pytest_table(folder, options.runs, options.instructions)
        print(sessions, import_table(folder, options.runs), sep="\n\n")


if __name__ == "__main__":
    main()
