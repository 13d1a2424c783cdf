"""oomemu sweep at the command line: every run appended as it ends, the summary, and a
sweep cut short (Ctrl-C, a torn last line) resumed without running a finished point again."""

import json
import signal

import pytest

from emulator.scenario import load_scenario
from tests.helpers import jsonl_lines as lines, oomemu, oomemu_args, shm_leftovers, started, wait_for

pytestmark = pytest.mark.timeout(200)

SWEEP = ("sweep", "mlocked", "--policies", "timeout,v6.6", "--set", "reap_timeout_s=0.5,10",
         "--set", "oom_reaper_delay_s=0,2", "--speed", "10")


def test_a_sweep_appends_every_run_resumes_after_ctrl_c_and_a_torn_line(tmp_path):
    out = tmp_path / "sweep.jsonl"
    before = shm_leftovers()
    with started(oomemu_args(*SWEEP, "--repeat", "2", "--jobs", "1", "--out", str(out))) as p:
        assert wait_for(lambda: out.exists() and len(lines(out)) >= 1, 120)
        p.send_signal(signal.SIGINT)                      # Ctrl-C: the run under way ends, torn down
        _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "oomemu: interrupted (SIGINT)", err
    first = len(lines(out))
    assert f"oomemu sweep: stopped; {first} run(s) in {out}: the same command resumes" in err
    assert 1 <= first < 8
    assert wait_for(lambda: shm_leftovers() <= before, 10)
    png = tmp_path / "sweep.png"
    p = oomemu(*SWEEP, "--repeat", "2", "--out", str(out), "--plot", str(png), timeout=150)
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert f"oomemu sweep: {8 - first} run(s) now, {first} of 8 in {out} already" in p.stderr
    recs = lines(out)
    points = {(r["policy"], tuple(sorted(r["set"].items())), r["repeat"]) for r in recs}
    assert len(recs) == len(points) == 8, "each point once: 2 policies x 2 values x 2 repeats"
    stated = {p: (e.verdict, e.kills) for p, e in load_scenario("mlocked").expected.items()}
    for r in recs:                                         # the defaults as the file states them
        if r["set"] in ({"reap_timeout_s": "10"}, {"oom_reaper_delay_s": "2"}):
            assert (r["verdict"], r["kills"]) == stated[r["policy"]], r
        assert r["scenario"] == "mlocked" and "log" in r and r["min_kills"] == 1
    # the summary: a row per policy and constants
    rows = [line.split() for line in p.stdout.splitlines()[1:]]
    assert sorted(r[1] for r in rows) == ["oom_reaper_delay_s=0", "oom_reaper_delay_s=2",
                                          "reap_timeout_s=0.5", "reap_timeout_s=10"]
    assert all(r[2] == "2" for r in rows)
    # a torn last line (a sweep killed while writing) is not a finished point
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:-1]) + text[-1][:40])
    p = oomemu(*SWEEP, "--repeat", "2", "--out", str(out), timeout=100)
    assert p.returncode == 0 and "oomemu sweep: 1 run(s) now, 7 of 8" in p.stderr, p.stderr
    assert len(lines_ok := [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{") and
                            x.endswith("}")]) == 8, lines_ok
    assert shm_leftovers() <= before


def test_sweep_mistakes_are_one_line():
    p = oomemu("sweep", "mlocked", "--set", "nope=1", "--out", "/tmp/never-written.jsonl")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--set nope: none of the policies" in p.stderr
    p = oomemu("sweep", "mlocked", "--policies", "timeout", "--set", "reap_timeout_s=1",
               "--out", "/nonexistent/dir/x.jsonl")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--out /nonexistent/dir/x.jsonl" in p.stderr


def test_a_family_file_sweeps_its_members(tmp_path):
    fam = tmp_path / "fam.toml"
    fam.write_text('[family]\nbase = "mlocked"\ncount = 2\nseed = 4\nbusy_ms = [0.5, 1.0]\n')
    out = tmp_path / "f.jsonl"
    p = oomemu("sweep", str(fam), "--policies", "v6.6", "--set", "oom_reaper_delay_s=0,2", "--out", str(out),
               timeout=100)
    assert p.returncode == 0, p.stderr
    recs = lines(out)
    assert sorted((r["scenario"], r["set"]["oom_reaper_delay_s"]) for r in recs) == [
        ("mlocked~0", "0"), ("mlocked~0", "2"), ("mlocked~1", "0"), ("mlocked~1", "2")]
    assert all(r["verdict"] in ("resolved", "panic", "hung") for r in recs)


def test_a_point_whose_code_changed_since_the_sweep_began_refuses_to_run():
    from emulator.tools import point
    spec = point.PointSpec(load_scenario("mlocked"), "v6.6", {}, 10.0, "test-1", digest="0" * 16)
    a = point.run_point(spec)
    assert a["status"] == "usage", a
    assert "changed since the sweep began" in a["message"] and "\n" not in a["message"]
    ok = point.run_point(point.PointSpec(load_scenario("mlocked"), "v6.6", {}, 10.0, "test-1",
                                         digest=point.code_digest()))
    assert ok["status"] == "ok" and ok["result"]["verdict"] == "resolved", ok


def test_a_family_changed_since_its_runs_is_refused_not_taken_for_done(tmp_path):
    """Its members keep their names (mlocked~0): resumed, the old runs would count as the
    new family's, and the summary would be of the old one."""
    fam, out = tmp_path / "fam.toml", tmp_path / "r.jsonl"
    fam.write_text('[family]\nbase = "mlocked"\ncount = 1\nseed = 1\nmb = [0.5, 1.5]\n')
    p = oomemu("sweep", str(fam), "--policies", "v6.6", "--out", str(out), timeout=100)
    assert p.returncode == 0 and len(lines(out)) == 1, p.stderr
    fam.write_text('[family]\nbase = "mlocked"\ncount = 1\nseed = 2\nmb = [0.5, 1.5]\n')
    p = oomemu("sweep", str(fam), "--policies", "v6.6", "--out", str(out), timeout=100)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert f"--out {out}: its runs of mlocked~0 are of another scenario of that name" in p.stderr
    assert len(lines(out)) == 1


def test_a_results_file_another_sweep_is_writing_is_refused(tmp_path):
    """Two sweeps of one file would each run what it lacks: every such point twice."""
    import fcntl
    out = tmp_path / "r.jsonl"
    with open(out, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)              # as a sweep of it under way holds it
        p = oomemu("sweep", "mlocked", "--policies", "v6.6", "--out", str(out), timeout=100)
    assert p.returncode == 2 and p.stderr == f"oomemu: error: --out {out}: another sweep is writing it\n"
    assert out.read_text() == ""


def test_sweep_diff_of_files_without_runs_is_a_mistake_not_an_agreement(tmp_path):
    """Two CSVs, or two empty files, have no point in common and none apart: 'they agree'
    (exit 0) would pass make sweep-check's comparison with nothing compared."""
    csv = tmp_path / "a.csv"
    csv.write_text("scenario,policy,repeat\nmlocked,v6.6,0\n")
    p = oomemu("sweep-diff", str(csv), str(csv))
    assert p.returncode == 2 and p.stderr == f"oomemu: error: {csv}: no runs in it (a sweep's --out file, JSON lines)\n"


def test_a_csv_or_plot_over_the_results_file_is_refused(tmp_path):
    """--csv and --plot write their file whole: over --out, they would erase the runs."""
    out = tmp_path / "r.jsonl"
    out.write_text('{"scenario": "mlocked", "policy": "v6.6", "set": {}, "repeat": 0, "verdict": "resolved"}\n')
    kept = out.read_text()
    for opt in ("--csv", "--plot"):
        p = oomemu("sweep", "mlocked", "--policies", "v6.6", "--out", str(out), opt, str(out), timeout=100)
        assert p.returncode == 2 and p.stderr == (f"oomemu: error: {opt} {out}: the results file (--out): "
                                                  "it would be written over\n"), p.stderr
        assert out.read_text() == kept


def test_a_scenario_file_given_for_the_results_file_is_refused_untouched(tmp_path):
    """--out appends: over the family file being swept, the runs would spoil it."""
    fam = tmp_path / "fam.toml"
    fam.write_text('[family]\nbase = "mlocked"\ncount = 1\nseed = 1\n')
    kept = fam.read_text()
    p = oomemu("sweep", str(fam), "--policies", "v6.6", "--out", str(fam), timeout=100)
    assert p.returncode == 2 and p.stderr == (f"oomemu: error: --out {fam}: a scenario file of this sweep: "
                                              "the runs would be appended to it\n"), p.stderr
    assert fam.read_text() == kept


def test_a_results_file_that_is_not_text_is_one_line(tmp_path):
    """A picture given where the results go (--out, or sweep-diff's files): one line, untouched."""
    png = tmp_path / "s.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    kept = png.read_bytes()
    p = oomemu("sweep", "mlocked", "--policies", "v6.6", "--out", str(png), timeout=100)
    assert p.returncode == 2 and p.stderr == (f"oomemu: error: {png}: not a sweep's results file (JSON lines): "
                                              "it is not text\n"), p.stderr
    assert png.read_bytes() == kept
    p = oomemu("sweep-diff", str(png), str(png))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not a sweep's results file" in p.stderr, p.stderr


def test_a_plot_that_cannot_be_written_is_refused_before_the_runs(tmp_path):
    out = tmp_path / "r.jsonl"
    p = oomemu("sweep", "mlocked", "--policies", "v6.6", "--out", str(out), "--plot", "/nonexistent/dir/s.png",
               timeout=100)
    assert p.returncode == 2 and p.stderr == "oomemu: error: --plot /nonexistent/dir/s.png: No such file or directory\n"
    assert out.read_text() == ""
    p = oomemu("sweep", "mlocked", "--policies", "v6.6", "--out", str(out), "--plot", str(tmp_path / "s.png"),
               timeout=100)
    assert p.returncode == 0 and (tmp_path / "s.png").stat().st_size > 0, p.stderr


def test_a_point_killed_from_outside_stops_the_sweep_in_one_line_and_leaves_nothing(tmp_path):
    """The host's OOM killer (or anyone) SIGKILLs a point's process: its run's supervisor
    dies with no teardown. The sweep says so in one line (exit 2: the machine's doing, not
    a fault of ours), removes what that run left, and the same command resumes."""
    import psutil
    before = shm_leftovers()
    out = tmp_path / "r.jsonl"
    args = ("sweep", "mmap_sem_held", "--policies", "v6.6", "--repeat", "2", "--speed", "1", "--jobs", "1",
            "--out", str(out))

    def point_of(pid):
        for k in psutil.Process(pid).children():
            try:
                if "emulator.tools.point" in k.cmdline():
                    return k
            except psutil.Error:
                pass
    with started(oomemu_args(*args)) as sw:
        victim = wait_for(lambda: point_of(sw.pid), 60)
        assert victim
        assert wait_for(lambda: shm_leftovers() - before, 30), "its run is under way"
        victim.kill()
        _, err = sw.communicate(timeout=60)
    assert sw.returncode == 2 and err.count("oomemu: error:") == 1 and err.startswith("oomemu sweep: 2 of 2 run(s) "
                                                                                  "to do"), err
    assert "mmap_sem_held under v6.6: its point process was ended by SIGKILL from outside the sweep" in err
    assert wait_for(lambda: shm_leftovers() <= before, 10), "the dead run's objects are removed"
    assert not (out.exists() and lines(out))
    p = oomemu(*args[:-6], "--speed", "10", "--jobs", "1", "--out", str(out), timeout=100)
    assert p.returncode == 0 and "2 run(s) now, 0 of 2" in p.stderr, p.stderr
