"""A run never reports a normal verdict after something broke: a worker that fails is a
fault of ours, and the run says so (verdict ``error``, exit code 1).
(The command line's side of it: tests/cli/test_errors.py.)"""

import pytest

from tests.helpers import IDLE, write_scenario

pytestmark = pytest.mark.timeout(90)


def test_a_worker_that_fails_reports_why_and_the_run_exits_1(tmp_path):
    """A step the worker cannot do (a sleep too long for the platform; the loader
    refuses it, the Python API does not check) is a fault of ours: the run says
    so, with the worker's own last words, instead of 'resolved'."""
    import dataclasses

    import emulator
    from emulator.scenario import StepSpec
    s = emulator.load_scenario(write_scenario(tmp_path, IDLE.format(count=1)))
    bad = dataclasses.replace(s.tasks[0], steps=(StepSpec("sleep", ms=1e300),))
    r = emulator.run_scenario(dataclasses.replace(s, tasks=(bad,)), speed=10)
    assert r.verdict == "error" and r.exit_code == 1 and r.error_kind == "fault"
    assert r.error.startswith("task idle (pid ") and "died during the run: OverflowError" in r.error, r.error
    assert r.accounting["charged_pages"] == r.accounting["rss_pages"] == r.accounting["segment_pages"]
