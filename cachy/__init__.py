"""Cache LLM API calls in a `cachy.jsonl` file with one line: `enable_cachy()`.

The API is imported from `.core` on first use (PEP 562): pytest imports `cachy.plugin`, and so this package,
at the start of every session, and a session that does not use cachy should not pay for httpx."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import (
        KEY_VERSION,
        MODES,
        CachyMiss,
        CachyWarning,
        Rewrite,
        Stats,
        cachy,
        cachy_stats,
        compact_cachy,
        disable_cachy,
        doms,
        enable_cachy,
        key_rules,
        no_cachy,
        prune_cachy,
        request_key,
    )

__version__ = "0.1.0"
__all__ = [
    "KEY_VERSION",
    "MODES",
    "CachyMiss",
    "CachyWarning",
    "Rewrite",
    "Stats",
    "cachy",
    "cachy_stats",
    "compact_cachy",
    "disable_cachy",
    "doms",
    "enable_cachy",
    "key_rules",
    "no_cachy",
    "prune_cachy",
    "request_key",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import core

    globals().update({public: getattr(core, public) for public in __all__})  # later lookups skip this function
    return globals()[name]


def __dir__() -> list[str]:
    """The API too before its first use, for completion in notebooks and shells."""
    return sorted({*globals(), *__all__})
