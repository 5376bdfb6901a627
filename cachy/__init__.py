"""Cache LLM API calls in a `cachy.jsonl` file with one line: `enable_cachy()`."""

from .core import (
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
    no_cachy,
    prune_cachy,
    request_key,
)

__version__ = "0.1.0"
__all__ = [
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
    "no_cachy",
    "prune_cachy",
    "request_key",
]
