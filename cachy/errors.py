"""What cachy raises and warns, and where it points: at the user's own line, not inside cachy or an SDK.

A notebook or a test suite reads these far from the code that caused them, so each one names the file, the
request or the lines it is about, and points at the line of the user's code that led to it."""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings


class CachyMiss(BaseException):
    """Replay mode found no recorded response for a request.

    Like pytest's own outcomes it derives from BaseException: SDKs (anthropic, for one) retry, then re-wrap
    as a "connection error", an Exception raised inside `send`, and this one must reach you at once."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of the traceback: the message first, then only the lines of the user's own
        code that led here (a notebook cell's); the frames of cachy, httpx and the SDK add nothing to the message."""
        from IPython import get_ipython  # only IPython calls this

        cell_name = getattr(getattr(get_ipython(), "compile", None), "format_code_name", None)  # IPython >= 8.7
        lines = [f"CachyMiss: {self}"]
        for frame in traceback.extract_tb(self.__traceback__):
            if not frame.filename.startswith(_library_folders()):
                cell = cell_name(frame.filename) if cell_name else None  # ("Cell", "In[3]"), None for a file
                lines.append(f"  {' '.join(cell) if cell else frame.filename}, line {frame.lineno}: {frame.line}")
        return lines


class CachyWarning(UserWarning):
    """Something in `cachy.jsonl` needs your attention: damaged lines, stale keys, an entry not saved."""


def replay_miss(method: str, url: str, n: int, key: str, path: os.PathLike, why: str) -> str:
    """What a `CachyMiss` says: the request, where cachy looked, how to record it, and why it missed."""
    occurrence = f" (occurrence {n} of this request)" if n > 1 else ""
    return (
        f"cachy: no recorded response for {method} {url}{occurrence} (key {key}) in {path}, and cachy is in "
        "replay mode. Record it by running once with API keys in record mode (CACHY_MODE=record, or "
        f'enable_cachy(mode="record")), then commit the file.\nWhy it missed: {why}.'
    )


def damaged_lines(path: os.PathLike, numbers: list[int]) -> str:
    """The one warning of a read that found damaged lines: a count, and the first few line numbers."""
    first = ", ".join(map(str, numbers[:5])) + (", …" if len(numbers) > 5 else "")
    return f"cachy skipped damaged lines of {path}: {len(numbers)} in all, line {first}"


def original_entries(path: os.PathLike, count: int) -> str:
    """The one warning of a read that found entries the original cachy wrote: what happens to them."""
    return (
        f"{path} has {count} entries with 8-character keys, as the original cachy (pycachy) writes them: they are "
        "served (a request hits when a release of the original would have keyed it so), and in record mode each "
        "one used is upgraded to an entry of this cachy's. Once a run has used them all, cachy compact "
        "--drop-stale drops the upgraded ones."
    )


def stale_entries(path: os.PathLike, stale: dict[int, int], version: int) -> str:
    """The one warning of a file that holds entries of other key versions (`stale`: version -> count)."""
    written = ", ".join(f"{n} by key version {stale_version}" for stale_version, n in sorted(stale.items()))
    return (
        f"{path} holds entries written by another key formula ({written}; this cachy writes version {version}). "
        "They still hit when both versions key the request alike; the others miss and are recorded again. To drop "
        "them: cachy compact --drop-stale"
    )


def warn(message: str) -> None:
    """Warn at the user's own line that led here (a notebook cell, a test), not inside cachy or an SDK."""
    warnings.warn(message, CachyWarning, stacklevel=_user_stacklevel())


@functools.cache
def _library_folders() -> tuple[str, ...]:
    """Where cachy, the standard library and installed packages (httpx, the SDKs, IPython) live: not the user's code."""
    import sysconfig  # 10 ms: only once a warning or an error is shown

    paths = (
        os.path.dirname(__file__),
        *(sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")),
    )
    return tuple({os.path.join(path, "") for path in paths})


def _user_stacklevel() -> int:
    """The `stacklevel`, for `warn`'s call to `warnings.warn`, of the nearest line of the user's own code."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_library_folders()):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2
