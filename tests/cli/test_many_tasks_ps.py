"""``oomemu ps`` on a run of many tasks, as a user sees it: past 40 tasks, a row for each
task that matters and for the next in line by badness, one line naming the others;
``--all`` a row for each; every mm read once."""

import pytest

from emulator.tools import live
from tests.helpers import HeldRun, oomemu, wait_for, write_scenario

pytestmark = pytest.mark.timeout(180)

# 50 idle apps on a ladder, one that holds its own mmap_sem for read (something to show),
# and a protected allocator that does nothing until asked.
MANY = """
    memory_mb = 128
    [[task]]
    name = "app"
    count = 50
    oom_score_adj = 900
    oom_score_adj_last = 949
    vma = [{ kind = "anon", mb = 1 }]
    [[task]]
    name = "holder"
    vma = [{ kind = "anon", mb = 1 }]
    step = [{ op = "mmap_sem_down", mode = "read" }]
    [[task]]
    name = "allocator"
    oom_score_adj = -1000
    vma = [{ kind = "anon", mb = 1 }]
"""


def ps_rows(run_id: str, *extra: str) -> tuple[list[str], str]:
    p = oomemu("ps", run_id, *extra)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"run {run_id}: many under v4.17, t=") and lines[1].split()[0] == "PID"
    return lines[2:], p.stdout


def test_ps_of_52_tasks_shows_those_that_matter_and_names_the_rest_in_one_line(tmp_path):
    with HeldRun(write_scenario(tmp_path, MANY, "many"), start_timeout=60) as run:
        assert wait_for(lambda: "r:" in oomemu("ps", run.id, "--all").stdout, 30)    # the holder holds
        rows, out = ps_rows(run.id)
        names = [r.split()[1] for r in rows[:-1]]
        # the holder (its mmap_sem), then the five the OOM killer would choose next: the
        # top of the ladder, the later first on a tie (as select_bad_process goes)
        assert names == ["app-45", "app-46", "app-47", "app-48", "app-49", "holder"], out
        assert "r:" in rows[names.index("holder")]
        assert rows[-1] == (f"46 more tasks running, nothing held or flagged, lower BADNESS: app-0..44 "
                            f"(oom_score_adj 900..944), allocator (-1000); 'oomemu ps {run.id} --all' shows "
                            f"every task"), out
        rows, out = ps_rows(run.id, "--all")
        assert [r.split()[1] for r in rows] == [f"app-{k}" for k in range(50)] + ["holder", "allocator"], out
        r = live.open_run(run.id)
        try:
            opened = []
            real = r.open_mm
            r.open_mm = lambda i, write=False: opened.append(i) or real(i, write)
            live.ps_table(r)
            assert sorted(opened) == list(range(52))                # each mm once
        finally:
            r.close()
        run.stop()
