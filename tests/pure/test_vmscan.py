"""Reclaim's decisions (emulator.kernel.vmscan), without processes: which page cache goes
before the OOM killer is called, and how fast dirty page cache becomes reclaimable."""

import pytest

from emulator.kernel.vmscan import (THROTTLE_WRITEBACK_S, CacheView, Writeback, reclaimable, shrink_page_cache,
                                    throttle_until)

pytestmark = pytest.mark.timeout(10)


def view(index, resident, kind="file", dirty=0, unevictable=0, mapped=True, in_domain=True):
    return CacheView(index, kind, resident, dirty, unevictable, mapped, in_domain)


def test_unmapped_page_cache_goes_first_then_mapped_in_order_and_no_more_than_needed():
    objects = [view(0, 100, mapped=True), view(1, 50, mapped=False), view(2, 80, mapped=True)]
    assert shrink_page_cache(objects, 120) == [(1, 50), (0, 70)]
    assert shrink_page_cache(objects, 30) == [(1, 30)]


def test_shmem_mlocked_and_dirty_pages_and_other_domains_are_never_taken():
    objects = [view(0, 100, kind="shmem"), view(1, 100, unevictable=60), view(2, 100, dirty=90),
               view(3, 100, in_domain=False)]
    assert shrink_page_cache(objects, 1000) == [(1, 40), (2, 10)]
    assert reclaimable(objects) == (50, 90)      # clean now; dirty, once written back


def test_dirty_mlocked_pages_are_not_worth_waiting_for():
    assert reclaimable([view(0, 100, dirty=50, unevictable=100)]) == (0, 0)


def test_writeback_cleans_at_its_rate_in_order_and_goes_idle_when_all_is_clean():
    wb = Writeback(rate_pages_per_s=1000)
    assert not wb.active and wb.advance([(0, 500)], 5.0) == []      # asleep until woken
    assert wb.wake(1.0) and not wb.wake(1.2)
    assert wb.eta(300, 1.0) == pytest.approx(1.3)
    assert wb.advance([(0, 200), (1, 500)], 1.3) == [(0, 200), (1, 100)]
    assert wb.active
    assert wb.advance([(1, 400)], 2.0) == [(1, 400)]                # 700 pages' worth: 400 were left
    assert not wb.active


def test_a_throttled_allocation_sleeps_a_jiffy_to_hz_over_10():
    assert throttle_until(1.0, 1.0, 0.004) == pytest.approx(1.004)   # never a busy retry at the same time
    assert throttle_until(1.0, 1.05, 0.004) == pytest.approx(1.05)
    assert throttle_until(1.0, 9.0, 0.004) == pytest.approx(1.0 + THROTTLE_WRITEBACK_S)
