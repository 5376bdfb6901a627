"""A context manager as a decorator of any kind of function: `@cachy()` and `@no_cachy()`.

A switch must hold while the decorated code runs, not only while it is called: a coroutine function runs at
its `await`, and a generator function as it is iterated, long after the call returned. So each kind gets a
wrapper of its own kind, which enters a fresh `with switch():` around the running."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def decorated(function: Callable, switch: Callable[[], Any]) -> Callable:
    """`function` run inside a fresh `with switch():`: for a coroutine or generator function, while it runs,
    not only while it is called."""
    if inspect.isasyncgenfunction(function):

        @functools.wraps(function)
        async def run_async_generator(*args, **kwargs):
            with switch():
                async for item in function(*args, **kwargs):
                    yield item

        return run_async_generator
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def run_async(*args, **kwargs):
            with switch():
                return await function(*args, **kwargs)

        return run_async
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def run_generator(*args, **kwargs):
            with switch():
                return (yield from function(*args, **kwargs))

        return run_generator

    @functools.wraps(function)
    def run(*args, **kwargs):
        with switch():
            return function(*args, **kwargs)

    return run
