"""The mm and the zone are real: touched pages occupy /dev/shm, freed ones do not."""

import os

import posix_ipc
import pytest

from emulator.kernel.mm_types import MMF_OOM_SKIP, MMF_UNSTABLE, PAGES_PER_MB, VM_LOCKED, MmLayout, vm_flags_for
from emulator.runtime import names
from emulator.runtime.mm import Mm

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def run_id():
    rid = names.new_run_id()
    yield rid
    for name, sem in [(names.mm(rid, 0), False), (names.zone(rid), False)]:
        try:
            (posix_ipc.unlink_semaphore if sem else posix_ipc.unlink_shared_memory)(name)
        except posix_ipc.ExistentialError:
            pass


def test_faulted_pages_are_really_held_and_really_freed(run_id):
    layout = MmLayout((("anon", 0, 16 * PAGES_PER_MB), ("file_shared", vm_flags_for("file_shared", False), PAGES_PER_MB)))
    mm = Mm(names.mm(run_id, 0), create=layout)
    try:
        assert mm.real_pages() == 0
        mm.fault_in(0, 8 * PAGES_PER_MB)
        mm.fault_in(1, PAGES_PER_MB)
        assert mm.real_pages() == 9 * PAGES_PER_MB
        assert os.stat(names.shm_path(mm.name, False)).st_blocks * 512 >= 9 << 20
        assert mm.rss_kb()["anon_rss"] == 8 * 1024 and mm.rss_kb()["file_rss"] == 1024
        freed = mm.zap_vma(mm.vmas()[0])
        assert freed == 8 * PAGES_PER_MB
        assert mm.real_pages() == PAGES_PER_MB == mm.get_mm_rss()
    finally:
        mm.close()


def test_flags_are_seen_by_another_opener(run_id):
    mm = Mm(names.mm(run_id, 0), create=MmLayout((("anon", VM_LOCKED, 4),)))
    other = Mm(names.mm(run_id, 0))
    try:
        assert not other.test_bit(MMF_OOM_SKIP)
        assert mm.set_bit(MMF_OOM_SKIP) is False
        assert other.set_bit(MMF_UNSTABLE) is False
        assert other.test_bit(MMF_OOM_SKIP) and mm.test_bit(MMF_UNSTABLE)
        assert other.vmas()[0].mlocked
    finally:
        other.close()
        mm.close()


def test_page_tables_are_real_pages_too(run_id):
    mm = Mm(names.mm(run_id, 0), create=MmLayout((("anon", 0, 4),), pgtables=2 * PAGES_PER_MB))
    try:
        assert mm.fault_pgtables() == 2 * PAGES_PER_MB
        mm.fault_in(0, 4)
        assert mm.real_pages() == mm.resident_pages() == 2 * PAGES_PER_MB + 4
        assert mm.get_mm_rss() == 4                           # page tables are not rss
        assert mm.free_pgtables() == 2 * PAGES_PER_MB
        assert mm.real_pages() == 4
    finally:
        mm.close()
