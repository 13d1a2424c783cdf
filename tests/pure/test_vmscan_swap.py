"""Which anon pages reclaim swaps out (kernel/vmscan.shrink_anon). Pure."""

import pytest

from emulator.kernel.vmscan import AnonView, shrink_anon

pytestmark = pytest.mark.timeout(10)


def test_other_tasks_go_first_in_order_and_the_reclaimers_own_last():
    vmas = [AnonView(2, 0, 100, requester=True), AnonView(0, 0, 30), AnonView(1, 1, 50)]
    assert shrink_anon(vmas, 60, 1000) == [(0, 0, 30), (1, 1, 30)]
    assert shrink_anon(vmas, 150, 1000) == [(0, 0, 30), (1, 1, 50), (2, 0, 70)]


def test_no_more_than_the_swap_device_holds():
    vmas = [AnonView(0, 0, 30), AnonView(1, 0, 50)]
    assert shrink_anon(vmas, 60, 40) == [(0, 0, 30), (1, 0, 10)]
    assert shrink_anon(vmas, 60, 0) == []
    assert shrink_anon(vmas, 0, 100) == []
