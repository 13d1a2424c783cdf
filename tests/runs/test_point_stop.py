"""tools/point.py's stop_points on real process groups: the grace is one for all the
points of a sweep, not one after the other."""

import signal
import subprocess
import time

import pytest

from emulator.tools import point

pytestmark = pytest.mark.timeout(60)


def test_points_that_outlive_sigterm_get_one_grace_together_then_sigkill(monkeypatch):
    monkeypatch.setattr("emulator.runtime.cleanup.cleanup", lambda: [])   # no dead run here to remove
    procs = [subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; exec sleep 60"], start_new_session=True,
                              stdout=subprocess.PIPE) for _ in range(3)]
    assert [p.stdout.readline() for p in procs] == [b"ready\n"] * 3          # SIGTERM ignored from here
    with point._lock:
        point._running["stop-test"] = set(procs)
    try:
        began = time.monotonic()
        assert point.stop_points("stop-test", grace_s=2.0) == 3
        took = time.monotonic() - began
        assert all(p.returncode == -signal.SIGKILL for p in procs)
        assert took < 5.0, f"{took:.1f} s: a grace of 2 s for each of 3 points in turn is 6 s"
    finally:
        point.forget("stop-test")
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
