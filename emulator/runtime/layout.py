"""A binary record described by one table of named fields; every offset is derived.

``Record(("pid", "i"), ("state", "I"), ...)`` lays the fields out in order,
each aligned to its own size as a C compiler would (``q``/``d`` on 8 bytes,
``i``/``I`` on 4, bytes anywhere), so that an 8-byte field is one aligned
store in shared memory. Nothing is counted by hand: a field is read and
written by name, and its offset comes from the table.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    codec: struct.Struct

    @property
    def size(self) -> int:
        return self.codec.size


class Record:
    def __init__(self, *fields: tuple[str, str], align: int = 8):
        self.fields: dict[str, Field] = {}
        offset = 0
        for name, fmt in fields:
            codec = struct.Struct("=" + fmt)
            alignment = 1 if fmt.endswith(("s", "x")) else codec.size
            offset = -(-offset // alignment) * alignment
            self.fields[name] = Field(name, offset, codec)
            offset += codec.size
        #: bytes the record takes, rounded up to ``align`` (so that records in a table stay aligned)
        self.size = -(-offset // align) * align

    def offset(self, name: str) -> int:
        return self.fields[name].offset

    def columns(self, count: int, *names: str) -> struct.Struct:
        """One Struct that reads the named fields (given in the order of their offsets) of
        ``count`` consecutive records at once: the values come record by record, each
        record's in the order given. A table of a thousand records in one call, not one
        call per record and field."""
        fmt, at = [], 0
        for name in names:
            f = self.fields[name]
            assert f.offset >= at, f"{name}: fields out of order"
            fmt.append(f"{f.offset - at}x{f.codec.format.lstrip('=')}")
            at = f.offset + f.codec.size
        fmt.append(f"{self.size - at}x")
        return struct.Struct("=" + "".join(fmt) * count)

    def get(self, buf, name: str, base: int = 0):
        """The value of field ``name`` of the record at ``base`` in ``buf``."""
        f = self.fields[name]
        return f.codec.unpack_from(buf, base + f.offset)[0]

    def set(self, buf, name: str, value, base: int = 0) -> None:
        """Write field ``name``: one store (aligned, for a field of 8 bytes or less)."""
        f = self.fields[name]
        f.codec.pack_into(buf, base + f.offset, value)

    def check_aligned(self, *names: str) -> None:
        """AssertionError unless each named field sits on a multiple of its own size
        (of 8, for a field longer than that: an array of records that need it)."""
        for name in names:
            f = self.fields[name]
            assert f.offset % min(f.size, 8) == 0, f"{name} at {f.offset} is not aligned"
