"""Identical requests in flight at once make one call: the first goes live, the others wait for its entry.

An `asyncio.gather` over the same prompts, or a test suite's threads asking the same thing, would otherwise pay
for every copy, as each misses the file before any is recorded. Here the first miss of a slot leads a `Flight`
and sends; identical misses that come while it is in the air wait for it, then replay the entry it recorded.

A flight that lands without an entry (an error, a status cachy does not record, a cancelled task, a stream that
broke off or was closed unread, a file that could not be written) hands its waiters nothing of its own: one of
them leads anew, and the others wait for that one, so that a failure costs no burst of retries. Nobody waits
longer than its client's own timeout would let it (`LONGEST_WAIT` when it sets none): it then goes live itself,
leading the flight in place of the stale one (a stream left unread never lands), so that the others wait no more
for the stale one either.

Threads wait on a `threading.Event`, tasks on a future of their own loop that the lander resolves with
`call_soon_threadsafe`, so a thread may wait for a task's flight and a task for a thread's, and no loop is ever
blocked. A request never waits for a flight that only its own thread or task can end (a stream it has not read
yet, or a loop it would block): it goes live at once.

Flights live in this process's memory, keyed by the store and the slot: two processes (pytest-xdist workers)
sending the same request at once still make two calls.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Protocol

from .lines import Entry

if TYPE_CHECKING:
    import asyncio


class Store(Protocol):
    """What a flight needs of the store it caches in (`cachy.core.Store`): this module does not import the core."""

    def find(self, slot: str) -> Entry | None: ...


LONGEST_WAIT = 600.0  # seconds, for a client that sets no timeout: openai's own default
UNREAD_GRACE = 0.5  # seconds a stream handed to its caller may stay unread before its waiters go on by themselves

_flights: dict[tuple[Store, str], Flight] = {}  # the flights in the air, by store and slot
_lock = threading.RLock()  # the table, and each flight's landing; renewed in a forked child. Reentrant: a stream
# dropped unread is landed by the garbage collector, which may run while this thread holds the lock


def _owner(loop: asyncio.AbstractEventLoop | None) -> object:
    """The task, or else the thread, that runs this code (`loop` is its running loop, if any): what a flight it
    leads may be waiting on."""
    task = sys.modules["asyncio"].current_task(loop) if loop is not None else None
    return task or threading.current_thread()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """This thread's running event loop, if any, asked without raising (every miss asks). A program that has not
    imported asyncio runs none, and cachy does not import it for them: it takes 20 ms."""
    asyncio = sys.modules.get("asyncio")
    return None if asyncio is None else asyncio._get_running_loop()


class Flight:
    """One live call that identical requests wait for. `land` ends it, once: with the entry it recorded, or
    with none, and the waiters go on by themselves."""

    def __init__(self, place: tuple[Store, str]):
        self._place = place
        self.landed = False
        self._event: threading.Event | None = None  # made by the first thread that waits: most flights have none
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []  # async waiters
        self.entry: Entry | None = None
        self._handed_at: float | None = None  # when the leader's live stream went to its caller, if it streams
        self._read = False  # whether that caller began to read it
        self.loop = _running_loop()  # a thread that runs this loop must not block waiting for it
        self.owner = _owner(self.loop)

    def land(self, entry: Entry | None) -> None:
        """End the flight: its waiters replay `entry`, or, given None, go on by themselves. Only the first
        landing counts, so that every path out of a live call may land it without asking whether one did."""
        with _lock:
            if self.landed:
                return
            self.entry = entry
            self.landed = True
            if _flights.get(self._place) is self:
                del _flights[self._place]
            event, futures, self._futures = self._event, self._futures, []
        if event is not None:
            event.set()
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits there any more
                loop.call_soon_threadsafe(_wake, future)

    def handed_over(self) -> None:
        """The leader's response is a stream, handed to its caller unread: the flight lands at the stream's end."""
        self._handed_at = time.monotonic()

    def being_read(self) -> None:
        """The leader's caller began to read its stream: its end will come as the provider sends it."""
        self._read = True

    def unread(self) -> bool:
        """Whether the leader's stream has stayed unread longer than `UNREAD_GRACE` since it was handed over:
        its caller may be waiting for the very requests that wait for it (an `asyncio.gather` of both)."""
        handed = self._handed_at
        return handed is not None and not self._read and time.monotonic() - handed > UNREAD_GRACE

    def waitable(self, blocking: bool) -> bool:
        """Whether this thread or task may wait for the flight: not when it leads it (a stream it has not read
        yet), nor, for a blocking wait, when it runs the loop the flight's leader needs."""
        loop = _running_loop()
        if self.owner is _owner(loop):
            return False
        return not blocking or self.loop is None or self.loop is not loop

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the landing, blocking this thread."""
        with _lock:
            if self.landed:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        event.wait(timeout)

    async def landing(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the landing, without blocking this task's loop."""
        import asyncio  # imported already: this is a task

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with _lock:
            if self.landed:
                return
            self._futures.append((loop, future))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(future, timeout)


def _wake(future: asyncio.Future) -> None:
    if not future.done():  # a waiter that timed out or was cancelled cancelled its future
        future.set_result(None)


def land(flight: Flight | None, entry: Entry | None) -> None:
    """Land `flight` with `entry` (or none), if there is a flight: a miss that leads nothing has none."""
    if flight is not None:
        flight.land(entry)


def _board(place: tuple[Store, str], looks: bool) -> tuple[Flight | Entry, bool]:
    """The flight in the air for `place` (False: to wait for), else a new one (True: the caller leads it), else,
    when the caller `looks` (record mode), the entry in the store: a flight landed since the caller missed. Looked
    up under the lock that landings take, so that no landing falls between the look and the take-off."""
    with _lock:
        flight = _flights.get(place)
        if flight is not None:
            return flight, False
        store, slot = place
        entry = store.find(slot) if looks else None
        if entry is not None:
            return entry, False
        flight = _flights[place] = Flight(place)
        return flight, True


def _boarding(
    place: tuple[Store, str], looks: bool, limit: float | None, blocking: bool
) -> Generator[tuple[Flight, float], None, Flight | Entry | None]:
    """What `lead_or_wait` and `alead_or_wait` do, but the waiting: it yields a flight and how long to wait for
    it, and returns the outcome. A flight that lands empty sends its waiters round again, to lead or to wait."""
    deadline = time.monotonic() + (LONGEST_WAIT if limit is None else limit)
    while True:
        found, leads = _board(place, looks)
        if leads or isinstance(found, Entry):
            return found
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not found.waitable(blocking):
            return None
        yield found, min(remaining, UNREAD_GRACE)  # in slices: an unread stream is noticed within one
        if not found.landed:
            if found.unread() or time.monotonic() >= deadline:  # nobody reads it, or waited as its client would
                return _take_over(place, found)
            continue
        if found.entry is not None:
            return found.entry


def _take_over(place: tuple[Store, str], stale: Flight) -> Flight | None:
    """A new flight for `place`, in place of `stale`, which its waiter waited for as long as its client would
    (a stream left unread never lands): the waiter leads it, and the others come round to it, so that a stale
    flight keeps nobody else waiting. None when another waiter took over first: the caller goes live alone."""
    with _lock:
        if _flights.get(place) is not stale:
            return None
        flight = _flights[place] = Flight(place)
    stale.land(None)
    return flight


def lead_or_wait(store: Store, slot: str, looks: bool, limit: float | None) -> Flight | Entry | None:
    """For a miss of `slot` in `store`: the entry an identical request in flight recorded, once it lands
    (waiting up to `limit` seconds; None: `LONGEST_WAIT`); or a new Flight for the caller to lead, send and
    `land`; or None, to go live alone. A caller that `looks` (record mode) is given an entry recorded since it
    missed, as its miss may be stale by the time it boards."""
    boarding = _boarding((store, slot), looks, limit, blocking=True)
    try:
        while True:
            flight, remaining = next(boarding)
            flight.wait(remaining)
    except StopIteration as outcome:
        return outcome.value


async def alead_or_wait(store: Store, slot: str, looks: bool, limit: float | None) -> Flight | Entry | None:
    """`lead_or_wait` for a task: it awaits the landing, and its loop runs on meanwhile."""
    boarding = _boarding((store, slot), looks, limit, blocking=False)
    try:
        while True:
            flight, remaining = next(boarding)
            await flight.landing(remaining)
    except StopIteration as outcome:
        return outcome.value


def _forget_after_fork() -> None:
    """A forked child has none of its parent's calls in flight, and the lock may have been held."""
    global _lock
    _lock = threading.RLock()
    _flights.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
