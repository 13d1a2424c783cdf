"""Swap in the mm: swapped pages leave the segment for real and count as swap entries
(MM_SWAPENTS), come back on a swap-in, go with a zap; a fault that races a swap-out
starts again instead of failing."""

import posix_ipc
import pytest

from emulator.kernel.mm_types import MM_ANONPAGES, MM_SWAPENTS, MMF_UNSTABLE, PAGES_PER_MB, MmLayout
from emulator.runtime import names
from emulator.runtime.mm import Mm

pytestmark = pytest.mark.timeout(20)
MB = PAGES_PER_MB


@pytest.fixture
def mm():
    rid = names.new_run_id()
    m = Mm(names.mm(rid, 0), create=MmLayout((("anon", 0, 16 * MB),)))
    yield m
    m.close()
    try:
        posix_ipc.unlink_shared_memory(names.mm(rid, 0))
    except posix_ipc.ExistentialError:
        pass


def test_swapped_pages_leave_the_segment_and_come_back(mm):
    mm.fault_in(0, 8 * MB)
    uncharged = []
    assert mm.swap_out(0, 3 * MB, uncharged.append) == 3 * MB
    assert uncharged == [3 * MB]
    assert mm.real_pages() == 5 * MB == mm.resident_pages()
    c = mm.counters()
    assert (c[MM_ANONPAGES], c[MM_SWAPENTS], mm.swapents()) == (5 * MB, 3 * MB, 3 * MB)
    assert mm.get_mm_rss() == 5 * MB, "swap entries are not rss"
    assert mm.swap_in(0, 10 * MB) == 3 * MB, "no more than are on swap"
    assert mm.real_pages() == 8 * MB and mm.swapents() == 0


def test_a_zap_frees_swap_entries_with_the_pages(mm):
    mm.fault_in(0, 4 * MB)
    mm.swap_out(0, MB, lambda n: None)
    freed_swap = []
    assert mm.zap_vma(mm.vmas()[0], lambda n: None, freed_swap.append) == 3 * MB
    assert freed_swap == [MB] and mm.swapents() == 0 and mm.real_pages() == 0


def test_an_unstable_mm_is_not_swapped(mm):
    mm.fault_in(0, 2 * MB)
    mm.set_bit(MMF_UNSTABLE)
    assert mm.swap_out(0, MB, lambda n: None) == 0
    assert mm.real_pages() == 2 * MB


def test_a_fault_that_races_a_swap_out_starts_again(mm, monkeypatch):
    """Reclaim swaps out while the owner writes its new pages: the owner's count check
    sees the change, gives its pages back and faults again after the new count."""
    mm.fault_in(0, 4 * MB)
    write = mm._write
    raced = []

    def write_then_swap(off, pages):
        write(off, pages)
        if not raced:
            raced.append(mm.swap_out(0, 2 * MB, lambda n: None))
    monkeypatch.setattr(mm, "_write", write_then_swap)
    assert mm.fault_in(0, MB) is True
    assert raced == [2 * MB]
    assert mm.vmas()[0].nr_pages == 3 * MB and mm.swapents() == 2 * MB
    assert mm.real_pages() == 3 * MB, "the first try's pages were given back"
