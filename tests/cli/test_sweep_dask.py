"""oomemu sweep --dask: the points through a real Dask distributed cluster of worker
processes (started here, as ``dask worker`` would be on other machines), giving the
points --jobs gives; a worker killed mid-point; Ctrl-C; nothing left behind."""

import os
import signal

import psutil
import pytest

from tests.helpers import jsonl_lines as lines, oomemu, oomemu_args, shm_leftovers, started, wait_for

distributed = pytest.importorskip("distributed")       # the 'cluster' extra; make test installs it

pytestmark = pytest.mark.timeout(240)

GRID = ("mlocked", "mmap_sem_held", "--policies", "timeout,v6.6", "--set", "reap_timeout_s=0.5,10",
        "--repeat", "2", "--speed", "10")            # 2 scenarios x 3 policies and constants x 2 repeats


def cluster(n):
    return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                    silence_logs=50)


def worker_pids(c) -> list[int]:
    with distributed.Client(c) as client:
        return list(client.run(os.getpid).values())


def points_of(pids) -> list[psutil.Process]:
    """The point processes (tools/point.py) the workers ``pids`` run now."""
    out = []
    for pid in pids:
        try:
            kids = psutil.Process(pid).children()
        except psutil.Error:
            continue
        for k in kids:
            try:
                if "emulator.tools.point" in k.cmdline() and k.status() != psutil.STATUS_ZOMBIE:
                    out.append(k)
            except psutil.Error:
                pass
    return out


def is_point(p: psutil.Process) -> bool:
    try:
        return "emulator.tools.point" in p.cmdline()
    except psutil.Error:
        return False


def alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def two_workers():
    with cluster(2) as c:
        yield c


def test_a_sweep_through_dask_gives_the_points_jobs_gives_and_resumes_after_ctrl_c(tmp_path, two_workers):
    before = shm_leftovers()
    workers = worker_pids(two_workers)
    here, there = tmp_path / "here.jsonl", tmp_path / "there.jsonl"
    p = oomemu("sweep", *GRID, "--jobs", "2", "--out", str(here), "--csv", str(tmp_path / "here.csv"), timeout=150)
    assert p.returncode == 0, p.stderr
    with started(oomemu_args("sweep", *GRID, "--dask", two_workers.scheduler_address, "--out", str(there))) as sw:
        running = wait_for(lambda: points_of(workers), 60)
        assert running, "the workers run the points"
        for pt in running:                          # each point: a process group and session of its own
            assert os.getsid(pt.pid) == pt.pid and os.getpgid(pt.pid) == pt.pid
        assert wait_for(lambda: there.exists() and len(lines(there)) >= 2, 120)
        sw.send_signal(signal.SIGINT)                # Ctrl-C: the points under way end through their teardown
        _, err = sw.communicate(timeout=60)
    assert sw.returncode == 130, err
    assert not [pt for pt in running if alive(pt)] and not points_of(workers)
    assert wait_for(lambda: shm_leftovers() <= before, 10), "the stopped runs' objects are gone"
    first = len(lines(there))
    assert 2 <= first < 12
    p = oomemu("sweep", *GRID, "--dask", two_workers.scheduler_address, "--out", str(there), timeout=150)
    assert p.returncode == 0, p.stderr
    assert f"oomemu sweep: {12 - first} run(s) now, {first} of 12 in {there} already" in p.stderr
    recs = lines(there)
    assert len(recs) == len({(r["scenario"], r["policy"], str(r["set"]), r["repeat"]) for r in recs}) == 12
    assert all(r["host"] for r in recs)
    d = oomemu("sweep-diff", str(here), str(there))
    assert d.returncode == 0, d.stdout
    same = int(d.stdout.split(": ")[1].split()[0])
    assert d.stdout.startswith("6 point(s) in both") and same >= 4, d.stdout   # mlocked and mmap_sem_held
    assert (tmp_path / "here.csv").read_text().count("\n") == 13                  # are not timing-sensitive
    assert shm_leftovers() <= before


def test_a_worker_killed_mid_point_leaves_nothing_and_its_point_is_recorded_once(tmp_path):
    """At speed 0.5 a point runs about 7 s: the orphan's end within 3 s of its worker's
    death is its watch on its parent, not its run ending by itself."""
    before = shm_leftovers()
    out = tmp_path / "r.jsonl"
    with cluster(2) as c:
        workers = worker_pids(c)
        args = ("sweep", "mmap_sem_held", "--policies", "v6.6", "--repeat", "2", "--speed", "0.5",
                "--dask", c.scheduler_address, "--out", str(out))
        with started(oomemu_args(*args)) as sw:
            running = wait_for(lambda: points_of(workers), 60)
            assert running
            victim = running[0]
            psutil.Process(victim.ppid()).kill()        # its Dask worker dies (the nanny starts another)
            assert wait_for(lambda: not alive(victim), 3), "the orphaned point ends through its teardown"
            out_, err = sw.communicate(timeout=150)
        assert sw.returncode == 0, err
    recs = lines(out)
    assert sorted(r["repeat"] for r in recs) == [0, 1], "the re-run point is recorded once"
    assert all(r["verdict"] == "resolved" and r["kills"] == 1 for r in recs)
    assert wait_for(lambda: shm_leftovers() <= before, 10)


def test_dask_mistakes_are_one_line(tmp_path):
    p = oomemu("sweep", "mlocked", "--dask", "tcp://127.0.0.1:9", "--jobs", "2", "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--jobs: with --dask ADDRESS" in p.stderr
    p = oomemu("sweep", "mlocked", "--dask", "tcp://127.0.0.1:9", "--out", str(tmp_path / "x"), timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "--dask tcp://127.0.0.1:9: no Dask scheduler answers there" in p.stderr


def test_an_address_where_something_else_answers_is_one_line(tmp_path):
    """sshd's port given for the scheduler's: Dask reads its banner as a frame's length
    (exabytes) and raises MemoryError; that is the user's address, not our fault."""
    import socket
    import threading
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def banner():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                c.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                c.settimeout(2)
                try:
                    c.recv(1024)
                except OSError:
                    pass
    threading.Thread(target=banner, daemon=True).start()
    try:
        out = tmp_path / "x.jsonl"
        p = oomemu("sweep", "mlocked", "--policies", "v6.6", "--dask", f"tcp://127.0.0.1:{port}", "--out", str(out),
                   timeout=60)
    finally:
        srv.close()
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert f"--dask tcp://127.0.0.1:{port}: what answers there is not a Dask scheduler" in p.stderr
    assert out.read_text() == ""


def test_an_address_where_something_listens_and_says_nothing_is_one_line_not_a_hang(tmp_path):
    """The dashboard's port (an HTTP server) given for the scheduler's: Dask's handshake
    waits for ever there (dask/distributed#8071); the sweep gives up after Dask's connect
    timeout (here 1 s, through Dask's own configuration) and its margin."""
    import socket
    srv = socket.create_server(("127.0.0.1", 0))              # accepts, never speaks
    port = srv.getsockname()[1]
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    try:
        with started(oomemu_args("sweep", "mlocked", "--policies", "v6.6", "--dask", f"tcp://127.0.0.1:{port}",
                                 "--out", str(tmp_path / "x.jsonl")), env=env) as p:
            _, err = p.communicate(timeout=60)
    finally:
        srv.close()
    assert p.returncode == 2 and err.count("\n") == 1, err
    assert f"--dask tcp://127.0.0.1:{port}: something listens there but does not answer as a Dask scheduler " \
           "(no handshake in 6 s" in err


def mp_semaphores() -> set[str]:
    """multiprocessing's named semaphores (a Dask nanny's): removed when their cluster closes."""
    return {e for e in os.listdir("/dev/shm") if e.startswith("sem.mp-")}


def test_dask_local_starts_a_cluster_here_and_ctrl_c_takes_it_down_with_its_points(tmp_path):
    before, sems = shm_leftovers(), mp_semaphores()
    out = tmp_path / "r.jsonl"
    args = ("sweep", "mmap_sem_held", "--policies", "v6.6", "--repeat", "6", "--speed", "4", "--dask", "local",
            "--jobs", "2", "--out", str(out))
    with started(oomemu_args(*args)) as sw:
        me = psutil.Process(sw.pid)
        assert wait_for(lambda: [k for k in me.children(recursive=True) if is_point(k)], 60), \
            "the local cluster's workers run the points"
        sw.send_signal(signal.SIGINT)
        _, err = sw.communicate(timeout=60)
    assert sw.returncode == 130, err
    assert err.strip().splitlines()[-1] == "oomemu: interrupted (SIGINT)", err
    assert wait_for(lambda: mp_semaphores() <= sems, 10), "the cluster's semaphores went with it"
    assert wait_for(lambda: shm_leftovers() <= before, 10)
    done = len(lines(out)) if out.exists() else 0
    p = oomemu(*args, timeout=150)
    assert p.returncode == 0, p.stderr
    assert f"{6 - done} run(s) now, {done} of 6" in p.stderr
    assert sorted(r["repeat"] for r in lines(out)) == list(range(6))
