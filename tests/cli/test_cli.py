"""The command line, end to end in a subprocess, as a user types it."""

import importlib.util
import json

import pytest

from emulator.scenario import builtin_names
from tests.helpers import oomemu, oomemu_args, started, write_scenario

pytestmark = pytest.mark.timeout(120)


def test_run_prints_kernel_lines_a_summary_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    p = oomemu("run", "mlocked", "--policy", "timeout", "--speed", "10", "--json", str(out))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(" Killed process " in l and "(locked-" in l for l in lines)
    assert lines[-1].startswith("oomemu: mlocked under timeout: resolved, kills 1")
    d = json.loads(out.read_text())
    assert (d["verdict"], d["kills"], d["extra_kills"], d["policy"]) == ("resolved", 1, 0, "timeout")
    assert d["log"] == [l for l in lines if l.startswith("[")]


def test_run_json_dash_puts_the_json_alone_on_stdout_and_the_log_on_stderr(tmp_path):
    with started(oomemu_args("run", "mlocked", "--policy", "v6.6", "--speed", "10", "--json", "-"),
                 cwd=str(tmp_path)) as p:
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    d = json.loads(out)                                   # nothing else on stdout
    assert (d["verdict"], d["kills"]) == ("resolved", 1)
    assert d["log"] == [l for l in err.splitlines() if l.startswith("[")]
    assert err.splitlines()[-1].startswith("oomemu: mlocked under v6.6: resolved, kills 1")
    assert not (tmp_path / "-").exists()


def test_a_panic_is_a_verdict_not_an_error():
    p = oomemu("run", "mlocked", "--speed", "10", "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "oomemu: mlocked under v4.17: panic, kills 3 (fewest needed 1, 2 extra), time to resolve -\n"


def test_demo_writes_what_it_promises(tmp_path):
    """``oomemu demo --speed 10 --out DIR`` (what make run-demo runs): the side-by-side
    table, and for each run its trace and Perfetto timeline, then the pictures."""
    out = tmp_path / "demo"
    p = oomemu("demo", "--speed", "10", "--out", str(out), timeout=100)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    i = lines.index("mlocked, side by side:")
    assert lines[i + 1].split() == ["policy", "verdict", "kills", "fewest", "extra", "time", "to", "resolve"]
    assert lines[i + 2].split() == ["v4.17", "panic", "3", "1", "2", "-"]
    assert lines[i + 3].split()[:5] == ["timeout", "resolved", "1", "1", "0"]
    for policy in ("v4.17", "timeout"):
        trace, perfetto = out / f"mlocked-{policy}.jsonl", out / f"mlocked-{policy}.perfetto.json"
        assert f"oomemu demo: trace events {trace}" in lines
        assert f"             Perfetto timeline {perfetto} (open it in https://ui.perfetto.dev)" in lines
        events = [json.loads(l) for l in trace.read_text().splitlines()]
        assert (events[0]["ev"], events[0]["policy"], events[-1]["ev"]) == ("run_start", policy, "run_end")
        assert json.loads(perfetto.read_text())["traceEvents"]
    if importlib.util.find_spec("matplotlib") is None:
        assert any(l.startswith("oomemu demo: no pictures (") for l in lines), p.stdout
        pytest.skip("matplotlib is not installed: the pictures are not checked")
    pictures = [out / "mlocked-v4.17.png", out / "mlocked-timeout.png"]
    for png in pictures:
        assert f"oomemu demo: picture {png}" in lines
    assert lines[-1] == f"oomemu demo: both runs, one above the other, each on its own time axis: {out / 'mlocked.png'}"
    for png in pictures + [out / "mlocked.png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_listings():
    p = oomemu("scenarios")
    assert p.returncode == 0
    assert [l.split()[0] for l in p.stdout.splitlines()] == builtin_names()
    assert {"mlocked", "mmap_sem_held", "livelock"} <= set(builtin_names())
    p = oomemu("policies")
    kernel, _, daemons = p.stdout.partition("\n\n")
    assert [l.split()[0] for l in kernel.splitlines()] == ["v4.17", "timeout", "handover", "v6.6", "host"]
    assert "[oom_reaper_delay_s=2, max_oom_reap_retries=10, reap_retry_interval_s=0.1]" in p.stdout
    assert daemons.startswith("user-space OOM daemons, on top of a kernel policy: KERNEL+DAEMON")
    assert [l.split()[0] for l in daemons.splitlines()[1:]] == ["+earlyoom", "+lmkd", "+oomd", "+systemd-oomd"]
    assert "[mem_term_percent=10, mem_kill_percent=5," in daemons


GOOD = """
    memory_mb = 64
    [[task]]
    name = "t"
      [[task.vma]]
      kind = "anon"
      mb = 8
"""


@pytest.mark.parametrize("args, says", [
    (["run", "nosuch"], "nosuch: no such scenario"),
    (["run", "mlocked", "--policy", "v9"], "unknown policy 'v9'"),
    (["run", "mlocked", "--set", "nonsense=1"], "--set nonsense: policy v4.17 has no such constant"),
    (["run", "mlocked", "--set", "max_oom_reap_retries"], "expected name=value"),
    (["run", "mlocked", "--speed", "0"], "must be > 0"),
    (["run", "mlocked", "--speed", "fast"], "not a number"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line_and_exit_2(args, says):
    p = oomemu(*args)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and says in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("change, says", [
    (("memory_mb = 64", "memory_mb = 64 ="), "not valid TOML"),
    (("mb = 8", "mb = -8"), "task[0].vma[0].mb: must be >= 0"),
    (('name = "t"', 'name = "t"\n    colour = "red"'), "task[0].colour: unknown key"),
    (("mb = 8\n", 'mb = 8\n      [[task.step]]\n      op = "fork"\n'), "task[0].step[0].op: must be one of"),
])
def test_malformed_scenarios_name_the_file_and_key(tmp_path, change, says):
    path = write_scenario(tmp_path, GOOD.replace(*change))
    p = oomemu("run", path)
    assert p.returncode == 2
    assert p.stderr.startswith(f"oomemu: error: {path}: ") and says in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1


def test_a_scenario_file_by_path_runs(tmp_path):
    p = oomemu("run", write_scenario(tmp_path, GOOD), "--speed", "10")
    assert p.returncode == 0, p.stderr
    assert "resolved, kills 0" in p.stdout.splitlines()[-1]


@pytest.mark.parametrize("args, says", [
    (["run", "mlocked", "--set", "max_oom_reap_retries=inf"], "must be >= 0 and finite"),
    (["run", "mlocked", "--speed", "1e308"], "at most 1e6"),
])
def test_absurd_numbers_are_usage_errors(args, says):
    p = oomemu(*args)
    assert p.returncode == 2 and says in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_sizes_are_checked_in_pages_as_they_are_charged(tmp_path):
    path = write_scenario(tmp_path, """
        memory_mb = 1
        [[task]]
        name = "t"
        count = 10
          [[task.vma]]
          kind = "anon"
          mb = 0.0997
    """)
    p = oomemu("run", path)            # 10 x 0.0997 MB fit in 1 MB, 10 x 26 pages do not
    assert p.returncode == 2 and "memory_mb: the tasks need 260 pages at start but the zone has 256" in p.stderr


def test_a_binary_file_is_not_a_scenario(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    p = oomemu("run", str(path))
    assert p.returncode == 2 and "not UTF-8" in p.stderr and p.stderr.count("\n") == 1, p.stderr


@pytest.mark.parametrize("text, says", [
    ('memory_mb = 64\n[[task]]\nstep = [{ op = "shm_unlink", name = "pool" }]\n',
     "task.step.name: task0: shm_unlink: no shmem VMA maps an object called 'pool'"),
    ('memory_mb = 64\nwriteback_mb_per_s = -1\n[[task]]\n', "writeback_mb_per_s: must be > 0, not -1"),
    ('memory_mb = 64\n[[task]]\nvma = [{ kind = "anon", mb = 1, dirty_mb = 1 }]\n',
     "task[0].vma[0].dirty_mb: only a file_shared VMA has dirty page cache"),
])
def test_page_cache_and_shmem_mistakes_are_one_line_and_exit_2(tmp_path, text, says):
    p = oomemu("run", write_scenario(tmp_path, text))
    assert p.returncode == 2 and says in p.stderr and p.stderr.count("\n") == 1, p.stderr
