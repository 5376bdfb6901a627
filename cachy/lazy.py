"""Patch requests and aiohttp only once the program itself has imported them.

cachy needs neither library, and importing them takes time (here 0.3 s for aiohttp, 0.15 s for requests), so
neither `import cachy` nor `enable_cachy()` imports them. A library imported later is patched right after its
own import finishes, by a finder on `sys.meta_path`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class PatchOnImport:
    """Runs `patch()` of the module `adapter` on `library`: now if the program has imported it, else right after
    it does. `stop_waiting()` withdraws the second (the patch itself is undone with cachy's others)."""

    def __init__(self, library: str, adapter: str):
        self.library, self.adapter = library, adapter

    def patch(self) -> None:
        """Patch the library now if the program has imported it, else once it does."""
        if sys.modules.get(self.library) is not None:  # None: the program blocked the import
            importlib.import_module(self.adapter).patch()
        elif self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def stop_waiting(self) -> None:
        """Stop waiting for the library's import: cachy was turned off first."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        """The library's own spec, found by the other finders, with a loader that patches once it has run."""
        if name != self.library:
            return None
        sys.meta_path.remove(self)  # its work ends with this import; off the path, it does not find itself below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            importlib.import_module(self.adapter).patch()

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec
