"""The mmap_sem protocol as documented for programs outside oomemu matches the code.

docs/by-hand.md states the mm header's offsets for a program that takes a
task's mmap_sem without oomemu, and the two examples carry them as
constants: each must be what oomemu's one field table (MM_HEADER) derives,
and the modes what emulator.runtime.rwsem uses. Only files are read.
"""

import os
import re

from emulator.runtime import rwsem
from emulator.runtime.mm import MM_HEADER, MMAP_SEM_READER_SLOTS, MMAP_SEM_WAITERS, WAITER_RECORD
from tests.helpers import REPO

FIELDS = ("mm_users", "sem_writer", "sem_readers", "sem_nr_waiters", "sem_mmput", "sem_reader_pids",
          "sem_waiters")


def documented_offsets() -> dict[str, int]:
    """The rows of by-hand.md's table headed ``| field | offset | type | what |``."""
    out, in_table = {}, False
    with open(os.path.join(REPO, "docs", "by-hand.md")) as f:
        for line in f:
            if line.startswith("| field | offset | type | what |"):
                in_table = True
            elif not line.startswith("|"):
                in_table = False
            elif in_table and not line.startswith("|---"):
                name, offset = [c.strip() for c in line.strip().strip("|").split("|")][:2]
                out[name.strip("`")] = int(offset)
    return out


def example_text(name: str) -> str:
    with open(os.path.join(REPO, "examples", name)) as f:
        return f.read()


def example_constants(name: str, pattern: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(pattern, example_text(name), re.M)}


def expected() -> dict[str, int]:
    return {f: MM_HEADER.offset(f) for f in FIELDS}


def test_the_documented_offsets_are_the_field_tables():
    assert documented_offsets() == expected()
    assert WAITER_RECORD.offset("pid") == 0 and WAITER_RECORD.offset("mode") == 4 and WAITER_RECORD.size == 8
    assert MM_HEADER.fields["sem_reader_pids"].size == 4 * MMAP_SEM_READER_SLOTS == 4 * 16
    assert MM_HEADER.fields["sem_waiters"].size == 8 * MMAP_SEM_WAITERS == 8 * 32


def test_the_examples_carry_the_same_offsets_and_modes():
    want = {k.upper(): v for k, v in expected().items()}
    want.update(READER_SLOTS=MMAP_SEM_READER_SLOTS, MAX_WAITERS=MMAP_SEM_WAITERS)
    modes = {"READ": rwsem.READ, "WRITE": rwsem.WRITE, "GRANTED": rwsem.GRANTED}
    py = example_constants("hold_mmap_sem.py", r"^([A-Z_]+) = (\d+)\b")
    py.update(zip(("READ", "WRITE", "GRANTED"),
                  map(int, re.search(r"^READ, WRITE, GRANTED = (\d+), (\d+), (\d+)$",
                                     example_text("hold_mmap_sem.py"), re.M).groups())))
    c = example_constants("hold_mmap_sem.c", r"^#define ([A-Z_]+)\s+(\d+)\b")
    for got in (py, c):
        assert {k: got.get(k) for k in want} == want
        assert {k: got.get(k) for k in modes} == modes


def test_the_examples_import_nothing_of_oomemu():
    assert not re.search(r"^\s*(from|import)\s+(emulator|workers)\b", example_text("hold_mmap_sem.py"), re.M)
