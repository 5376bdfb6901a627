"""What the request key normalises, so that a re-run of unchanged code hits: on another machine (where
packages, Python, home and the project are), in a fresh notebook kernel (a cell's file name), and in reprs
and per-session ids that change with every run.

`key_rules` is public: a user adds a rule for whatever else changes between their runs. Only the key changes:
the body sent and stored is untouched."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class _Folders(dict):
    """Absolute folders and their placeholders. As a rule's replacement it names the folder that matched; the
    engine adds the project's folders to it at enable time, so that all folders are matched in one rule."""

    def __call__(self, match: re.Match) -> str:
        return self[match.group()]

    def rule(self) -> tuple[str, _Folders]:
        """One alternation, longest folder first: a venv inside the project or home is named as the venv.
        Each folder is matched whole: not inside a longer name, nor after another path or word, though a
        JSON escape (`\\n`) may precede it. Its literal comes first, which keeps the scan fast."""
        folders = [path for path in self if len(path) > 1]  # never the root folder itself
        forms = _Folders({form: self[path] for path in folders for form in (path, json.dumps(path)[1:-1])})
        boundary = r"(?:(?<![\w./-])|(?<=\\[nrt]))"
        alternatives = [
            f"{re.escape(form)}(?<={boundary}{re.escape(form)})" for form in sorted(forms, key=len, reverse=True)
        ]
        return rf"(?:{'|'.join(alternatives)})(?![\w.-])", forms


def machine_rules() -> list[tuple[str, Any]]:
    """What differs between two machines that run the same code: where packages, Python and home are."""
    folders = _Folders({sys.base_prefix: "<python>", sys.prefix: "<python>", str(Path.home()): "~"})
    return [
        # A literal first keeps the scan fast; bounded segments keep a long run of slashes linear.
        (r"/(?:[^/\s\"'<>]{1,100}/){0,16}?(?:site|dist)-packages(?=/)", "<site-packages>"),
        folders.rule(),
    ]


key_rules: list[tuple[str, Any]] = [
    *machine_rules(),
    # a notebook cell's file, per kernel, in the temp folder of Linux, macOS or Windows
    (r"(?:/tmp|/var/folders/[\w-]+/[\w-]+/T)/ipykernel_\d+/\d+\.py", "<tmp>/ipykernel/<cell>.py"),
    (r"ipykernel_\d+([/\\]+)\d+\.py", r"ipykernel\1<cell>.py"),
    (r"<ipython-input-\d+-[0-9a-f]+>", "<ipython-input>"),  # the same, in older IPython
    (r" at 0x[0-9a-fA-F]{6,16}>", " at 0x…>"),  # memory addresses in reprs: <function f at 0x7f…>
    # tempfile's names (tmp and 8 characters) in the temp folders of Linux and macOS
    (r"(?:/tmp|/var/folders/[\w-]+/[\w-]+/T)/tmp[a-z0-9_]{8}(?![\w.-])", "<tmp>"),
    (r'("prompt_cache_key"\s*:\s*)"[^"]*"', r'\1"…"'),  # a per-session id that wrappers generate
]
"""(pattern, replacement) pairs applied, in order, to a request body's text before it is hashed, so that what
changes between two runs of unchanged code does not change the key. A replacement is what `re.sub` takes: a
string or a function of the match. Only the key changes: the body sent and stored is untouched. Extend it
before `enable_cachy`; at enable time cachy adds the project's folders (`<project>`) to the folders rule."""


norm_pats = key_rules
"""The original cachy's name for `key_rules`: the same list, so `cachy.norm_pats.append(...)` works as before."""


def compiled_rules(projects: Iterable[Path]) -> list[tuple[re.Pattern, Any]]:
    """`key_rules` as they stand, compiled, with the project's folders joined to the folders rule."""
    compiled = []
    for pattern, replacement in key_rules:
        if isinstance(replacement, _Folders):
            pattern, replacement = _Folders({**dict.fromkeys(map(str, projects), "<project>"), **replacement}).rule()
        compiled.append((re.compile(pattern), replacement))
    return compiled
