"""--policy host: every built-in that can be made real, run on this machine's kernel.

Each host run's outcome (verdict, kills, victims by task name) is held against
what the file states for v6.6, the policy that models this kernel. A host run is the kernel's: its times are real, so nothing here
asserts a time. Nothing may be left: processes, the FUSE mount, memcgs, files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import emulator
from emulator.errors import UsageError
from emulator.host import features
from emulator.host.run import DIR_PREFIX, DISK_DIR, SHM_DIR, HostRun
from emulator.runtime import names
from emulator.tools.kernel_check import outcome
from tests.helpers import oomemu, oomemu_args, write_scenario

pytestmark = pytest.mark.timeout(120)

REPRODUCIBLE = ["mlocked", "shared_file", "small_rss", "slow_pgtables", "memcg_tight", "page_cache", "shmem",
               "d_state_exit"]
KERNEL_DISAGREES: dict = {}           # none left: each built-in's v6.6 cell is the kernel's


def leftovers() -> list[str]:
    out = []
    for base in (DISK_DIR, SHM_DIR):
        out += [os.path.join(base, e) for e in os.listdir(base) if e.startswith(DIR_PREFIX)]
    with open("/proc/self/mountinfo") as f:
        out += [line.split()[4] for line in f if f"{names.PREFIX}." in line.split()[4]]
    return out


@pytest.fixture
def host(memcg_ok, kmsg_ok):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    before = set(leftovers())
    yield
    assert set(leftovers()) - before == set()


def test_the_reproducible_built_ins_are_the_ones_host_mode_takes():
    for name in emulator.scenario.builtin_names():
        s = emulator.load_scenario(name)
        assert (not features.refusals(s, cgroup_v2=False)) == (name in REPRODUCIBLE), name


def majority_run(s):
    """Host runs until two of them agree (at most 3): the kernel is not deterministic where
    a window is a few ms wide (small_rss gave 2, 2, 1 kills once), and its majority is what
    v6.6 is held to, as kernel-check does."""
    seen = {}
    for _ in range(3):
        r = HostRun(s).execute()
        assert r.policy == "host" and r.diverged is None and r.error is None, r.summary()
        got = outcome(r)
        if got in seen:
            return seen[got], got
        seen[got] = r
    raise AssertionError(f"{s.name}: three host runs, three outcomes: {list(seen)}")


@pytest.mark.parametrize("name", REPRODUCIBLE)
def test_each_reproducible_built_in_gives_v66s_stated_outcome_on_this_kernel(host, name):
    s = emulator.load_scenario(name)
    r, got = majority_run(s)
    if name in KERNEL_DISAGREES:
        assert (got.kills, got.victims) == KERNEL_DISAGREES[name], r.summary()
        return
    stated = s.expected["v6.6"]
    assert (got.verdict, got.kills) == (stated.verdict, stated.kills), (r.summary(), r.log)
    # the kernel's own lines name the victims
    assert sum("Killed process" in line for line in r.log) == r.kills


def test_what_cannot_be_made_real_is_refused_in_one_line_before_anything_starts(host):
    p = oomemu("run", "livelock", "--policy", "host")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "--policy host cannot make real task holder: step mmap_sem_down" in p.stderr
    with pytest.raises(UsageError, match="blockable mmu notifier"):
        HostRun(emulator.load_scenario("mmu_notifier"))


def test_options_of_the_emulated_clock_do_not_apply(host):
    p = oomemu("run", "page_cache", "--policy", "host", "--speed", "10")
    assert p.returncode == 2 and "--speed does not apply" in p.stderr, p.stderr


def test_a_task_meant_to_be_spared_that_the_kernel_kills_marks_the_run_diverged(host, tmp_path):
    # without CAP_SYS_RESOURCE the -1000 becomes 0 and the others go to 1000: when the spared
    # task is all there is to kill, the kernel kills it, and the run says it diverged
    text = """
        memory_mb = 64
        [[task]]
        name = "spared"
        oom_score_adj = -1000
        step = [{ op = "alloc", mb = 64 }]          # all of it, and its interpreter needs a little more
    """
    r = HostRun(emulator.load_scenario(write_scenario(tmp_path, text))).execute()
    if not r.notes:
        pytest.skip("this process can set a negative oom_score_adj: nothing is approximated")
    assert r.kills == 1 and r.diverged and "spared" in r.diverged, r.summary()
    assert "DIVERGED" in r.summary()


def test_ctrl_c_and_a_sigkilled_run_leave_nothing_after_cleanup(host):
    p = subprocess.Popen(oomemu_args("run", "shared_file", "--policy", "host"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, process_group=0)
    try:
        assert p.stdout.readline().startswith("oomemu: run ")     # tasks started, db in D state soon
        time.sleep(0.5)                                          # into the run: D states, a kill
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    err = p.stderr.read()
    p.stdout.close(), p.stderr.close()
    assert p.returncode == 130, err
    assert not leftovers()
    p = subprocess.Popen(oomemu_args("run", "shared_file", "--policy", "host"), stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, process_group=0)
    try:
        assert p.stdout.readline().startswith("oomemu: run ")
        time.sleep(0.5)
        p.kill()                                                  # no teardown at all
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()
    c = oomemu("cleanup", timeout=60)
    assert c.returncode == 0, c.stderr
    assert not leftovers(), c.stdout


def test_kernel_check_sets_the_kernel_beside_each_policy(host):
    p = oomemu("kernel-check", "page_cache", "shmem", "livelock", "--check", timeout=110)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {line.split()[0]: line for line in p.stdout.splitlines() if line.split() and
            line.split()[0] in ("page_cache", "shmem")}
    assert "= ok 2: db,bystander x1" in rows["shmem"] and rows["shmem"].count("=") == 4, p.stdout
    assert rows["page_cache"].split()[1:4] == ["ok", "0:", "none"], p.stdout
    assert "not reproducible here:" in p.stdout and "livelock: task holder: step mmap_sem_down" in p.stdout


def test_compare_shows_a_host_column_and_n_a_where_it_cannot_be(host):
    p = oomemu("compare", "shmem", "livelock", "--policies", "v6.6,host", "--check", timeout=110)
    assert p.returncode == 0, p.stdout + p.stderr
    table = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines()[2:]}
    assert table["shmem"][:4] == ["ok", "2/1", "+1", table["shmem"][3]] and "ok" in table["shmem"][4:], p.stdout
    assert table["livelock"][-1] == "n/a", p.stdout


@pytest.mark.parametrize("args", [["run", "page_cache", "--policy", "host"], ["kernel-check"]])
def test_a_user_without_root_is_told_what_host_mode_needs_in_one_line(args):
    if os.geteuid() != 0:
        p = oomemu(*args)
    else:                                  # as nobody: the modules imported first (nobody may not read them)
        code = ("import os, sys\nfrom emulator.tools import cli, compare, kernel_check\nimport emulator.host.run, emulator.runtime.supervisor\n"
                "cli.build_parser()\nos.setgid(65534); os.setuid(65534)\nsys.exit(cli.main(%r))" % (args,))
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "needs root" in p.stderr, p.stderr


def test_a_read_hold_through_proc_pid_mem_lets_the_reaper_reap_and_the_victim_go(host):
    # tests/scenarios/read_hold.toml on this kernel: "reader" reads the victim's /proc/PID/mem
    # over a FUSE page whose reply waits, holding its mmap_sem for read and its mm. The reaper's
    # trylock succeeds (no writer): "reaped" ~2 s after the kill. The victim itself leaves the
    # task list at once (its mm is the reader's to drop), so the next OOM kills the bystander,
    # as the model does too (see the file).
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios", "read_hold.toml")
    r = HostRun(emulator.load_scenario(here)).execute()
    assert [v.name for v in r.victims] == ["victim", "bystander"], r.summary()
    assert any("oom_reaper: reaped process" in line and "(victim)" in line for line in r.log), r.log


def test_a_task_that_fails_mid_run_ends_the_run_with_an_error_in_one_line(host, tmp_path):
    # "b" truncates an object it does not map after its name is gone: ENOENT in the task
    text = """
        memory_mb = 64
        run_deadline_s = 30
        [[task]]
        name = "a"
        vma = [{ kind = "shmem", mb = 1, object = "x" }]
        step = [{ op = "shm_unlink", name = "x" }]
        [[task]]
        name = "b"
        step = [{ op = "sleep", ms = 100 }, { op = "shm_truncate", name = "x" }]
    """
    started = time.monotonic()
    p = oomemu("run", write_scenario(tmp_path, text), "--policy", "host", timeout=60)
    assert time.monotonic() - started < 25              # not the 30 s deadline: the error ends it
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "host task b failed" in p.stderr, p.stderr
    assert p.stdout.splitlines()[-1].startswith("oomemu: scenario under host: error"), p.stdout


def test_a_kvm_guests_non_blocking_mmu_notifier_lets_the_reaper_reap(host):
    # tests/scenarios/crosscheck/mmu_notifier_kvm.toml on this kernel: the victim's memory is a
    # KVM guest's (KVM_SET_USER_MEMORY_REGION): KVM's mmu notifier is invalidated in non-blocking
    # mode and succeeds, so the reaper reaps it after v6.x's 2 s delay (as the cross-check found)
    from emulator.host.run import kvm_usable
    if not kvm_usable():
        pytest.skip("no usable /dev/kvm")
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios",
                        "crosscheck", "mmu_notifier_kvm.toml")
    r = HostRun(emulator.load_scenario(here)).execute()
    assert [v.name for v in r.victims] == ["kvm"] and r.error is None, r.summary()
    assert any("oom_reaper: reaped process" in line and "(kvm)" in line for line in r.log), r.log


def test_a_queued_writer_makes_the_reaper_give_up_and_keeps_the_victim_on_the_task_list(host):
    # tests/scenarios/read_hold_writer_queued.toml on this kernel: the reader's hold as above,
    # and "writer"'s queued write made real by a thread of the victim's calling mbind (which
    # only a thread of its own can): the reaper's trylock fails until it gives up ("unable to
    # reap", ~3 s after the kill under the v6.x delay), the victim cannot finish exiting (its
    # thread waits uninterruptibly), and only then does the bystander die: v6.6's stated 2 kills
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios",
                        "read_hold_writer_queued.toml")
    r = HostRun(emulator.load_scenario(here)).execute()
    assert [v.name for v in r.victims] == ["victim", "bystander"] and r.error is None, r.summary()
    assert r.victims[0].unable_to_reap, r.log
    assert r.victims[1].killed_at_s - r.victims[0].killed_at_s > 2.0, r.summary()    # the v6.x delay, and more
