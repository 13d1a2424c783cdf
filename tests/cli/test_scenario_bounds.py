"""Bounds at the command line: ``--set`` and ``--speed`` out of range exit 2 in one line,
in range they run; a name at its bound reads back whole in ``oomemu runs``.
(The bounds themselves, checked by the loader: tests/pure/test_scenario_bounds.py.)"""

import pytest

from tests.helpers import HeldRun, oomemu, scenario_text, write_scenario

pytestmark = pytest.mark.timeout(60)


def test_a_48_byte_utf8_name_shows_whole_in_oomemu_runs(tmp_path):
    """The zone keeps the name in 48 bytes: a name the loader accepts reads back whole."""
    name = "é" * 23 + "ab"                              # 48 bytes
    path = write_scenario(tmp_path, scenario_text(name=f'"{name}"'))
    with HeldRun(path, "v4.17", "--speed", "10") as run:
        p = oomemu("runs")
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert any(run.id in line and name in line for line in p.stdout.splitlines()), p.stdout


@pytest.mark.parametrize("args, says", [
    (["--policy", "v4.17", "--set", "max_oom_reap_retries=2.7"], "--set max_oom_reap_retries=2.7: must be a whole number"),
    (["--policy", "timeout", "--set", "reap_pass_interval_s=0"], "--set reap_pass_interval_s=0: must be a number from 0.004"),
    (["--policy", "v6.6", "--set", "oom_reaper_delay_s=1e9"], "--set oom_reaper_delay_s=1e9: must be a number from 0 to 86400"),
    (["--speed", "0.05"], "must be at least 0.1"),
])
def test_set_and_speed_out_of_range_exit_2_in_one_line(args, says):
    p = oomemu("run", "mlocked", *args)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_set_in_range_runs(tmp_path):
    path = write_scenario(tmp_path, scenario_text())
    p = oomemu("run", path, "--policy", "timeout", "--set", "reap_pass_interval_s=0.004", "--speed", "10", "--quiet")
    assert p.returncode == 0 and p.stdout.startswith("oomemu: bounds under timeout: "), p.stderr
