"""Memory pressure in real runs: what PSI counts is counted, and published in the zone
as /proc/pressure/memory would show it, while tasks stall and after.

Bounded waits on the zone's figures, no sleeps; times are emulated (the run clock
waits for late workers), so the figures hold under load.
"""

import pytest

from emulator.kernel.psi import FSHIFT
from emulator.runtime import names
from emulator.runtime.zone import Zone
from tests.helpers import HeldRun, check_documented, wait_for, write_scenario

pytestmark = pytest.mark.timeout(120)

# The allocator needs 32 MB more than is free; all the page cache is dirty, written back
# at 8 MB/s: it waits on writeback (a memstall) about 4 s, alone on its CPU.
WRITEBACK = """
    memory_mb = 128
    writeback_mb_per_s = 8
    [[task]]
    name = "db"
      [[task.vma]]
      kind = "file_shared"
      mb = 100
      dirty_mb = 100
    [[task]]
    name = "allocator"
    oom_score_adj = -1000
      [[task.step]]
      op = "sleep"
      ms = 500
      [[task.step]]
      op = "alloc"
      mb = 60
"""


def some(zone):
    """(some avg10 as a percentage, total us, the emulated time of the figures)."""
    figures, at = zone.psi()
    return figures[0] / (1 << FSHIFT), figures[3], at


def test_a_runs_pressure_rises_while_a_task_waits_on_writeback_and_decays_after(tmp_path):
    with HeldRun(write_scenario(tmp_path, WRITEBACK, "writeback"), "v6.6", "--speed", "4") as run:
        zone = Zone(run.id)
        try:
            # rises: the throttled allocator's stall reaches avg10 at the first periods
            rising = wait_for(lambda: (s := some(zone))[0] > 20 and s, 60)
            assert rising, some(zone)
            # the stall ends (the allocation succeeds; the run is resolved but held):
            # avg10 then decays period by period, total stays
            peak = wait_for(lambda: (s := some(zone))[2] > 6 and s, 60)
            assert peak, some(zone)
            later = wait_for(lambda: (s := some(zone))[2] > peak[2] + 4 and s, 60)
            assert later, some(zone)
            assert later[0] < peak[0] * 0.8, (peak, later)
            assert later[1] == peak[1], "no stall after the allocation: the total stays"
            assert 3_000_000 <= later[1] <= 5_000_000, "about 4 s of writeback stall, in us"
        finally:
            zone.close()
        run.stop()
    assert run.id not in names.leftovers()


# Two readers whose files do not both fit beside the hog's 40 MB: each touch of one
# refaults what the other's touches reclaimed (thrashing), without any OOM.
THRASH = """
    memory_mb = 128
    refault_ms_per_mb = 10
    [[task]]
    name = "reader-a"
      [[task.vma]]
      kind = "file_private"
      mb = 60
      [[task.step]]
      op = "sleep"
      ms = 100
      [[task.step]]
      op = "touch"
      vma = "file_private"
      ms = 50
      repeat = 8
    [[task]]
    name = "reader-b"
      [[task.vma]]
      kind = "file_private"
      mb = 60
      [[task.step]]
      op = "sleep"
      ms = 100
      [[task.step]]
      op = "touch"
      vma = 0
      ms = 50
      repeat = 8
    [[task]]
    name = "hog"
    oom_score_adj = -1000
      [[task.step]]
      op = "alloc"
      mb = 40
"""


def test_touching_reclaimed_page_cache_refaults_and_thrashes(tmp_path):
    import json

    import emulator
    trace = tmp_path / "t.jsonl"
    r = emulator.run_scenario(write_scenario(tmp_path, THRASH, "thrash"), policy="v6.6", speed=10,
                              trace=str(trace))
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    check_documented(events)
    assert (r.verdict, r.kills, r.error) == ("resolved", 0, None), r.error
    a = r.accounting
    assert a["charged_pages"] == a["rss_pages"] == a["segment_pages"], a
    refaults = [e for e in events if e["ev"] == "refault" and e["nr_pages"] > 0]
    by = {e["task"] for e in refaults}
    assert by == {"reader-a", "reader-b"}, refaults
    # thrashing: the readers take turns refaulting what the other's refaults reclaimed,
    # each read costing refault_ms_per_mb
    assert len(refaults) >= 8, refaults
    assert sum(e["reclaimed"] for e in refaults) > 0
    for e in refaults:
        assert e["usec_delayed"] >= round(e["nr_pages"] / 256 * 10_000) - 1, e
    assert r.kills == 0
