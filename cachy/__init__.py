"""Cache LLM API calls in a `cachy.jsonl` file with one line: `enable_cachy()`.

The API is imported from its modules on first use (PEP 562): pytest imports `cachy.plugin`, and so this
package, at the start of every session, and a session that does not use cachy should not pay for httpx."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; __all__ is built from _HOMES, which they cannot read
    from .compaction import Rewrite  # noqa: F401
    from .core import (  # noqa: F401
        KEY_VERSION,
        MODES,
        cachy,
        cachy_stats,
        compact_cachy,
        disable_cachy,
        doms,
        enable_cachy,
        no_cachy,
        prune_cachy,
        request_key,
    )
    from .errors import CachyMiss, CachyWarning  # noqa: F401
    from .normalise import key_rules, norm_pats  # noqa: F401
    from .stats import Stats  # noqa: F401

__version__ = "0.1.0"
_HOMES = {
    "KEY_VERSION": "core",
    "MODES": "core",
    "CachyMiss": "errors",
    "CachyWarning": "errors",
    "Rewrite": "compaction",
    "Stats": "stats",
    "cachy": "core",
    "cachy_stats": "core",
    "compact_cachy": "core",
    "disable_cachy": "core",
    "doms": "core",
    "enable_cachy": "core",
    "key_rules": "normalise",
    "no_cachy": "core",
    "norm_pats": "normalise",
    "prune_cachy": "core",
    "request_key": "core",
}  # the module each public name is defined in
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The API too before its first use, for completion in notebooks and shells."""
    return sorted({*globals(), *__all__})
