"""The index of a cache file: which line holds each entry, and which key each exact request was recorded under,
read from the file in blocks and kept in step with it as it grows.

A hit must not get slower as the file grows, so a lookup is a dict lookup and then a read of one line; and a
cold file of 100k entries must answer its first request in about a quarter of a second, so a load slices each
usual line's key and digest in place (at the offsets `lines` derives from its writer) instead of parsing it.
Keys and digests are kept as the bytes they are in the file: loading a large file decodes nothing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from . import fileio, lines


@dataclass
class Found:
    """What one read of the file found besides entries: for the store's warnings."""

    damaged: list[int]  # line numbers
    original: int  # entries in the original cachy's format
    read_lines: bool  # whether any line was read: what explains misses must then be read again


class Index:
    """Slot (key, or key#n) to the offset of its line, and the digest of a request's exact bytes to its key,
    for the lines read so far; `read` reads on from where the last read ended."""

    def __init__(self, version: int):
        self._version = version  # the key version this cachy writes: its first occurrences are the usual line
        self._usual_head_end = lines.usual_head_end(version)
        self._offsets: dict[bytes, int] = {}
        self._keys_by_raw: dict[bytes, bytes] = {}
        self.end = 0  # where the unread part starts: after the last whole line
        self._lines = 0  # whole lines read
        self._open_line = False  # the last line read is a whole entry without its newline (a hand-saved file)
        self._last_line = 0  # where the last line read starts
        self._last_head = b""  # and how it starts (see `in_place`)
        self._unfinished_at = -1  # where an unfinished last line starts, once reported: it is reported once
        self.versions: Counter[int] = Counter()  # entries by the key version that wrote them
        self.originals = 0  # lines in the original cachy's format, indexed by their 8-character keys

    def offset(self, slot: str) -> int | None:
        return self._offsets.get(slot.encode())

    def key_of_raw(self, raw: str) -> str | None:
        key = self._keys_by_raw.get(raw.encode())
        return None if key is None else key.decode()

    def forget(self, slot: str) -> None:
        """Drop a slot whose line turned out damaged: it is a miss from now on."""
        self._offsets.pop(slot.encode(), None)

    def in_place(self, fd: int) -> bool:
        """Whether the last line read still starts where it did. A file rewritten in place (an editor) that grew
        no longer has it there, and must be read afresh rather than on from `end`, inside some line."""
        return fileio.read_at(fd, len(self._last_head), self._last_line) == self._last_head

    def read(self, fd: int) -> Found:
        """Index the lines from `end` on. An unfinished last line (a writer was killed) is left unread: it is
        read again only when the file grows, and the next append starts a fresh line."""
        offsets, keys_by_raw, usual_head_end = self._offsets, self._keys_by_raw, self._usual_head_end  # a tight loop
        key_field, raw_field, close = lines.KEY_FIELD, lines.RAW_FIELD, lines.CLOSE
        key_at, key_end, raw_at, raw_end = lines.KEY_AT, lines.KEY_AT + lines.KEY_CHARS, lines.RAW_AT, lines.RAW_END
        number = self._lines  # of the last line read
        found = Found([], 0, False)
        versions: Counter[int] = Counter()
        usual = 0  # usual lines, counted apart: the loop stays tight
        if self._open_line and fileio.read_at(fd, 1, self.end) == b"\n":
            self.end += 1  # another process's append ended our last line before its own
            self._open_line = False
        loaded = self.end  # where the lines indexed so far end
        for offset, block, end in fileio.line_blocks(fd, self.end):
            start, find, starts = 0, block.find, block.startswith
            while start < end:
                stop = find(b"\n", start) + 1
                number += 1
                if (
                    starts(usual_head_end, start + raw_end, stop)
                    and starts(key_field, start)
                    and starts(raw_field, start + key_end)
                    and block[stop - 2] == close
                ):
                    key = block[start + key_at : start + key_end]  # the usual line: sliced, the rest unread
                    offsets[key] = offset + start
                    keys_by_raw[block[start + raw_at : start + raw_end]] = key
                    usual += 1
                elif self._index_line(block[start:stop], offset + start, versions, found) and (
                    offset + start != self._unfinished_at
                ):
                    found.damaged.append(number)
                start = stop
            loaded = offset + end
            if end:
                self._last_line = offset + block.rfind(b"\n", 0, end - 1) + 1
                self._last_head = block[self._last_line - offset : self._last_line - offset + raw_end]
            if end == 0 and isinstance(lines.parse_json(block), dict):  # whole, only without its newline
                number += 1
                if self._index_line(block + b"\n", offset, versions, found):
                    found.damaged.append(number)
                loaded = offset + len(block)
                self._open_line = True
                self._last_line, self._last_head = offset, block[:raw_end]
            elif end == 0 and offset != self._unfinished_at:  # a writer was killed mid-line
                found.damaged.append(number + 1)
                self._unfinished_at = offset  # the next append ends it with a newline: it is not reported again
        versions[self._version] += usual
        self.versions.update(versions)
        found.read_lines = number != self._lines
        self.end, self._lines = loaded, number
        return found

    def _index_line(self, line: bytes, offset: int, versions: Counter[int], found: Found) -> bool:
        """Index a line that is not of the usual form: another key version, an occurrence after the first, a BOM
        before the first line, another order of fields, or the original's format (counted in `found`). Returns
        whether the line is damaged."""
        start = len(lines.BOM) if offset == 0 and line.startswith(lines.BOM) else 0
        head = lines.head_of(line[start:])
        if head is None:
            return True
        if head.version == 1 and lines.ORIGINAL_KEY.fullmatch(head.key):  # apart by its length from cachy's keys
            found.original += 1
            self.originals += 1
            self._offsets[head.key.encode()] = offset + start
            return False
        self._offsets[head.slot.encode()] = offset + start
        if head.raw is not None:
            self._keys_by_raw[head.raw.encode()] = head.key.encode()
        versions[head.version] += 1
        return False

    def to_append(self, line: bytes, size: int) -> bytes:
        """`line` as it must be written at the end of a file of `size` bytes: after a newline, when the file
        ends in an unfinished line or in an entry without its newline, so that ours stays a line of its own."""
        return b"\n" + line if size > self.end or self._open_line else line

    def appended(self, key: str, n: int, raw: str, size: int, written: bytes) -> None:
        """Index the line `written` (by `to_append`) at `size`, as the file's new last line."""
        line = written.lstrip(b"\n")
        start = size + len(written) - len(line)
        self._offsets[lines.slot(key, n).encode()] = start
        self._keys_by_raw[raw.encode()] = key.encode()
        self.versions[self._version] += 1
        self.end, self._lines = size + len(written), self._lines + written.count(b"\n")
        self._open_line = False
        self._last_line, self._last_head = start, line[: lines.RAW_END]
