"""The accounting invariant survives real workers killed at random moments of their
allocations (``oomemu inject crash`` on a held run): charged == counted == held.
(Each point of a change, stopped by hand: tests/ipc/test_accounting.py.)
"""

import json
import random
import signal
import sys

import pytest

from tests.helpers import end_process, oomemu, read_line, spawn, wait_for, write_scenario

pytestmark = pytest.mark.timeout(60)


ALLOCATOR = """
name = "crashy"
memory_mb = 512
min_kills = 0

[[task]]
name = "big"

  [[task.vma]]
  kind = "anon"
  mb = 8

  [[task.step]]
  op = "alloc"
  mb = 150

  [[task.step]]
  op = "alloc"
  mb = 150
"""


def test_a_worker_killed_at_random_moments_of_its_allocations_leaves_the_accounting_whole(tmp_path):
    """`inject crash` at random moments while 'big' touches 300 MB (about 150 ms of
    real work): each run ends with charged == counted == held, or says it broke."""
    path = write_scenario(tmp_path, ALLOCATOR)
    rng = random.Random(27)
    for attempt in range(6):
        out = tmp_path / f"r{attempt}.json"
        p = spawn([sys.executable, "-m", "emulator", "run", path, "--hold", "--json", str(out)])
        try:
            run_id = read_line(p).split()[2].rstrip(":")
            wait_for(lambda: False, timeout=rng.uniform(0.0, 0.25))
            c = oomemu("inject", run_id, "crash", "big")
            assert c.returncode in (0, 2), c.stderr        # 2: it had already finished
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
        finally:
            end_process(p)
        assert p.returncode == 0, err
        r = json.loads(out.read_text())
        a = r["accounting"]
        assert r["verdict"] != "error", r["error"]
        assert a["charged_pages"] == a["rss_pages"] == a["segment_pages"], a
