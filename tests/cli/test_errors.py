"""A run never reports a normal verdict after something broke.

A worker that dies by anything other than the emulated kill or ``inject
crash`` ends the run with verdict ``error`` and the cause in one line: exit 2
where the machine is the cause (a full /dev/shm, limits, a SIGKILL from
outside), 1 where oomemu is (through the Python API: tests/runs/test_errors.py).
A run that the machine cannot hold is refused before it starts, in one line,
exit 2.
"""

import json
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from tests.helpers import IDLE, die_with_parent, end_process, spawn, wait_for, workers_of, write_scenario

pytestmark = pytest.mark.timeout(90)


def oomemu(*args, timeout=60, preexec=None):
    tie = die_with_parent()

    def pre():
        tie()
        if preexec:
            preexec()
    return subprocess.run([sys.executable, "-m", "emulator", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=pre)

def held(path):
    p = spawn([sys.executable, "-m", "emulator", "run", path, "--hold", "--speed", "10"])
    assert p.stdout.readline().startswith("oomemu: run ")
    assert wait_for(lambda: workers_of(p.pid), timeout=20)
    return p


@pytest.mark.parametrize("sig,code,says", [
    (signal.SIGKILL, 2, "a real SIGKILL oomemu did not send"),
    (signal.SIGSEGV, 1, "signal SIGSEGV"),
])
def test_a_worker_killed_behind_our_back_ends_the_run_with_verdict_error(tmp_path, sig, code, says):
    p = held(write_scenario(tmp_path, IDLE.format(count=2)))
    try:
        victim = workers_of(p.pid)[0]
        victim.send_signal(sig)
        out, err = p.communicate(timeout=30)      # a held run ends by itself: it broke
    finally:
        end_process(p)
    assert p.returncode == code, (out, err)
    last = out.strip().splitlines()[-1]
    assert ": error, kills 0 before it broke: task idle-" in last and says in last
    assert err.strip().splitlines() == [f"oomemu: error: {last.split('before it broke: ')[1]}"]
    assert "Traceback" not in err


def _unshare_ok() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_mount_ns = pytest.mark.skipif(not _unshare_ok(), reason="needs unshare -m (root, CAP_SYS_ADMIN)")


def in_small_shm(mb: int, command: str) -> subprocess.CompletedProcess:
    """Run a shell command in a mount namespace whose /dev/shm is a tmpfs of ``mb`` MB
    (Docker's default is 64 MB). The namespace, and the tmpfs, end with the command."""
    script = f"mount -t tmpfs -o size={mb}m,mode=1777 tmpfs /dev/shm && {command}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=60, preexec_fn=die_with_parent())


@needs_mount_ns
def test_a_run_that_does_not_fit_in_dev_shm_is_refused_in_one_line():
    p = in_small_shm(64, f"{sys.executable} -m emulator run mlocked")
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("oomemu: error: /dev/shm has 64 MB free, "
                                                              "this run needs 256 MB"), p.stderr


@needs_mount_ns
def test_dev_shm_filling_up_mid_run_is_an_error_of_the_environment(tmp_path):
    """Someone else fills /dev/shm after the check: the allocation gets ENOSPC (not a
    SIGBUS), the run ends with verdict error and exit 2."""
    script = tmp_path / "fill.py"
    script.write_text(
        "import sys, emulator\n"
        "from emulator.runtime.supervisor import Run\n"
        "s = emulator.load_scenario('mlocked')\n"
        "run = Run(s, 'timeout', speed=10)\n"
        "run.check_room = lambda: None      # the check passed; then /dev/shm filled up\n"
        "r = run.execute()\n"
        "print(r.summary())\n"
        "sys.exit(r.exit_code)\n")
    p = in_small_shm(100, f"{sys.executable} {script}")
    assert p.returncode == 2, p.stdout + p.stderr
    assert ": error," in p.stdout and "ENOSPC" in p.stdout, p.stdout
    assert "Traceback" not in p.stderr


def test_too_few_open_files_is_one_line_and_exit_2(tmp_path):
    path = write_scenario(tmp_path, IDLE.format(count=50))
    p = oomemu("run", path, "--speed", "10",
               preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and "open files" in p.stderr and "ulimit -n" in p.stderr, p.stderr


def test_a_low_soft_limit_on_open_files_is_raised_to_the_hard_one(tmp_path):
    path = write_scenario(tmp_path, IDLE.format(count=50))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 400:
        pytest.skip(f"the hard limit ({hard}) is too low to show it")
    p = oomemu("run", path, "--speed", "10", "--quiet",
               preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)))
    assert p.returncode == 0, p.stderr
    assert "idle under v4.17: resolved" in p.stdout


def test_workers_offer_themselves_to_the_real_oom_killer_first(tmp_path):
    p = held(write_scenario(tmp_path, IDLE.format(count=2)))
    try:
        for w in workers_of(p.pid):
            with open(f"/proc/{w.pid}/oom_score_adj") as f:
                assert f.read().strip() == "1000"
        with open(f"/proc/{p.pid}/oom_score_adj") as f:
            assert f.read().strip() != "1000"            # the supervisor is not emulated memory
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)
        end_process(p)


def test_results_say_what_produced_them(tmp_path):
    import hashlib

    import emulator
    from emulator.scenario import builtin_path
    v = oomemu("--version")
    assert v.returncode == 0 and v.stdout.strip() == f"oomemu {emulator.__version__}"
    assert emulator.__version__ not in ("", "unknown")
    out = tmp_path / "r.json"
    p = oomemu("run", "mlocked", "--speed", "10", "--quiet", "--policy", "timeout", "--json", str(out))
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())
    assert d["oomemu_version"] == emulator.__version__
    with open(builtin_path("mlocked"), "rb") as f:
        assert d["scenario_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert d["accounting"]["charged_pages"] == d["accounting"]["rss_pages"] == d["accounting"]["segment_pages"]
