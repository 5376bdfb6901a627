"""Low-level reads and writes of the cache file: the lock every process shares, `pread`, and reading in blocks.

The store keeps one unbuffered descriptor per file, so that a fork, a truncation or an edit in place leaves no
stale buffer behind; these are the few system calls it is built from, with Windows' equivalents."""

from __future__ import annotations

import os
from collections.abc import Iterator

if os.name == "nt":
    import msvcrt

    _LOCK_OFFSET = 2**40  # a byte far past the end: Windows locks are mandatory, and must not block reads

    def lock(fd: int) -> None:
        """Take the file's exclusive lock, waiting as long as another process holds it."""
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        while True:  # LK_LOCK gives up after 10 s; a writer holding the lock that long is still no reason to fail
            try:
                return msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            except OSError:
                continue

    def unlock(fd: int) -> None:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    def read_at(fd: int, size: int, offset: int) -> bytes:
        """Up to `size` bytes at `offset`, as `os.pread` reads them."""
        os.lseek(fd, offset, os.SEEK_SET)  # callers hold the store's mutex
        return os.read(fd, size)

else:
    import fcntl

    def lock(fd: int) -> None:
        """Take the file's exclusive lock (`flock`), waiting as long as another process holds it."""
        fcntl.flock(fd, fcntl.LOCK_EX)

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    read_at = os.pread

O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
BLOCK = 1 << 18  # what a load reads at once: large enough for few reads, small enough to stay in cache


def read_line(fd: int, offset: int) -> bytes:
    """The whole line that starts at `offset`, newline included (less, if the file ends first)."""
    chunks, size = [], 4096  # most lines fit (a 1 KB answer makes a 1.5 KB line): more would copy more than the line
    while chunk := read_at(fd, size, offset):
        size = 1 << 20
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[: end + 1])
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def line_blocks(fd: int, offset: int) -> Iterator[tuple[int, bytes, int]]:
    """The file from `offset` on as (offset of the block, block, end of its whole lines): the next block is
    read from `end` on, so a line cut by a block's end is read whole with the next. An unfinished last line
    comes alone, with an end of 0. Read with `pread` into fresh bytes, so no buffer outlives a load."""
    size = BLOCK
    while block := read_at(fd, size, offset):
        end = block.rfind(b"\n") + 1
        if end:
            yield offset, block, end
            offset, size = offset + end, BLOCK
        elif len(block) < size:  # the file ends in an unfinished line
            yield offset, block, 0
            return
        else:  # a line longer than a block
            size *= 2


def lines(fd: int, offset: int) -> Iterator[bytes]:
    """The lines from `offset` to the end, newlines included, the last one possibly unfinished."""
    for _, block, end in line_blocks(fd, offset):
        start = 0
        while start < end:
            stop = block.index(b"\n", start) + 1
            yield block[start:stop]
            start = stop
        if end == 0:
            yield block


def line_number(fd: int, offset: int) -> int:
    """The number of the line at `offset`, for a warning: counted, 1 MB at a time, as an index keeps offsets."""
    before = 0
    for start in range(0, offset, 1 << 20):
        before += read_at(fd, min(1 << 20, offset - start), start).count(b"\n")
    return before + 1


def identity(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells a file changed: its inode (replaced), size (grown, cut) and mtime (edited in place)."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def write_all(fd: int, data: bytes) -> None:
    """One write, as a rule; the loop only guards against a write cut short by a signal."""
    while data:
        data = data[os.write(fd, data) :]
