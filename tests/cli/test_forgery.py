"""A second user forges objects under root's run names; root's commands refuse them.

The second user is a forked child of this (root) test process that drops to an
unused uid with setgid/setuid: no account needed. /dev/shm is world-writable
with the sticky bit, so it can put files there under any free name. It cannot
exec Python (the interpreter may live under a directory it cannot enter), so
what it does, it does in the forked child with the modules already loaded.

Then root's ``oomemu runs/ps/inject/stop/cleanup``, through the command line
with timeouts, must never signal a process outside the run, never print a
traceback, never hang, and exit 0, or 2 with one line.
"""

import json
import os
import pwd
import signal
import subprocess

import posix_ipc
import psutil
import pytest

from emulator.runtime import cleanup as cleanup_mod
from emulator.runtime import names
from emulator.runtime.mm import MM_HEADER, Mm
from emulator.runtime.shm_trust import SEM_SIZE
from emulator.runtime.zone import ZONE_HEADER, Zone
from emulator.tools import live
from tests.helpers import HeldRun, oomemu, tie_to_parent, wait_for, write_scenario

pytestmark = pytest.mark.timeout(180)

CALM = """
    memory_mb = 64
    [[task]]
    name = "victim"
      [[task.vma]]
      kind = "anon"
      mb = 8
      [[task.step]]
      op = "lock"
      name = "L"
      [[task.step]]
      op = "unlock"
      name = "L"
    [[task]]
    name = "other"
      [[task.vma]]
      kind = "anon"
      mb = 4
"""


def unused_uid() -> int:
    busy = {p.info["uids"].real for p in psutil.process_iter(["uids"]) if p.info["uids"]}
    for uid in range(54321, 54421):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in busy:
                return uid
    pytest.skip("no unused uid in 54321..54420")


class AsUser:
    """A forked child that has become ``uid`` and runs ``work()``; it sends back what
    work returns (JSON), then waits until told to go (so it can stand as a live process)."""

    def __init__(self, uid: int, work):
        r, w = os.pipe()
        self._go_r, self._go_w = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:                                 # the second user
            code = 1
            try:
                os.close(r)
                os.close(self._go_w)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                # Dies with the test even if pytest-timeout ends it (a change of uid clears
                # the parent-death signal, so it is set after).
                if not tie_to_parent(parent, signal.SIGKILL):
                    os._exit(1)
                out = {"ok": work()}
                code = 0
            except BaseException as e:                    # tell the test, do not run its code
                out = {"error": repr(e)}
            try:
                os.write(w, json.dumps(out).encode())
                os.close(w)
                os.read(self._go_r, 1)                    # until the test lets go
            finally:
                os._exit(code)
        os.close(w)
        os.close(self._go_r)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
        os.close(r)
        self.result = json.loads(b"".join(chunks) or b'{"error": "no answer"}')

    def alive(self) -> bool:
        return self.pid and os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def finish(self) -> None:
        if self.pid:
            os.close(self._go_w)
            os.waitpid(self.pid, 0)
            self.pid = 0

    def value(self):
        assert "ok" in self.result, self.result
        return self.result["ok"]


def shm(entry: str) -> str:
    return os.path.join(names.SHM_DIR, entry)


def zone_bytes(run_id: str, supervisor_pid: int, uid: int, ctime: float) -> bytes:
    """A zone laid out exactly as oomemu lays it out (made by root under a scratch name)."""
    scratch = f"{supervisor_pid}-ffff"
    zone = Zone(scratch, create={"supervisor_pid": supervisor_pid, "supervisor_ctime": ctime, "speed": 1.0,
                                 "total_pages": 16384, "scenario": "calm", "policy": "v4.17"})
    try:
        data = bytearray(zone.map[:])
    finally:
        zone.close()
        posix_ipc.unlink_shared_memory(names.zone(scratch))
    ZONE_HEADER.set(data, "uid", uid)
    return bytes(data)


def mm_bytes(real_mm: str, pid: int, comm: str) -> tuple[bytes, int]:
    """The header of a real mm of the run, naming another pid and name: (header, size)."""
    mm = Mm(real_mm)
    try:
        head = bytearray(mm.map[:4096])
        size = mm.size
    finally:
        mm.close()
    MM_HEADER.set(head, "pid", pid)
    MM_HEADER.set(head, "comm", comm.encode())
    return bytes(head), size


def write_file(path: str, data: bytes, size: int | None = None) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        if size is not None:
            os.ftruncate(fd, size)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def said_once(p) -> bool:
    """Exit 0, or 2 with one line; no traceback either way."""
    if "Traceback" in p.stderr or "internal error" in p.stderr:
        return False
    return p.returncode == 0 or (p.returncode == 2 and p.stderr.count("\n") == 1)


def untouched(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_a_second_users_forgeries_make_root_signal_nothing_and_break_nothing(tmp_path):
    uid = unused_uid()
    sleeper = subprocess.Popen(["sleep", "600"])          # the unrelated process forgeries name
    bystander = psutil.Process(sleeper.pid)
    made: list[str] = []
    fake_sup = None
    prefix = names.PREFIX
    try:
        with HeldRun(write_scenario(tmp_path, CALM, "calm"), "timeout") as run:
            R, S = run.id, sleeper.pid
            root_mm = names.mm(R, 0)
            forged_mm, mm_size = mm_bytes(root_mm, S, "forged")
            victim_mm, _ = mm_bytes(root_mm, S, "victim")
            claims_root = zone_bytes(f"{S}-beef", S, 0, bystander.create_time())
            claims_x = zone_bytes(f"{S}-cafe", S, uid, bystander.create_time())
            real_pid = names.run_pid(R)
            template = zone_bytes(f"{real_pid}-d00d", real_pid, uid, 0.0)   # pid, ctime set below
            F = {"root": f"{S}-beef", "x": f"{S}-cafe", "garbage": f"{S}-0bad", "fifo": f"{S}-f1f0",
                 "link": f"{real_pid}-5111"}
            files = [
                (f"{prefix}.{R}.mm.2", "mm", forged_mm),           # a well-made mm naming the sleeper
                (f"{prefix}.{R}.mm.3", "garbage", None),           # 4 KB of garbage
                (f"{prefix}.{R}.mm.4", "fifo", None),              # a FIFO under a segment's name
                (f"{prefix}.{R}.mm.5", "link", shm(f"{prefix}.{R}.mm.0")),   # a symlink to the real one
                (f"{prefix}.{R}.events.x", "garbage", None),
                (f"sem.{prefix}.{R}.lock.M", "sem", None),         # a lock the run does not have
                (f"{prefix}.{F['root']}.zone", "zone", claims_root),   # a fake run "of root's"
                (f"sem.{prefix}.{F['root']}.zone_lock", "sem", None),
                (f"{prefix}.{F['root']}.mm.0", "mm", victim_mm),
                (f"{prefix}.{F['x']}.zone", "zone", claims_x),      # its own fake run, naming the sleeper
                (f"sem.{prefix}.{F['x']}.zone_lock", "sem", None),
                (f"{prefix}.{F['x']}.mm.0", "mm", victim_mm),
                (f"{prefix}.{F['garbage']}.zone", "garbage", None),
                (f"{prefix}.{F['fifo']}.zone", "fifo", None),
                (f"{prefix}.{F['link']}.zone", "link", shm(f"{prefix}.{R}.zone")),   # root's real zone
                (f"sem.{prefix}.{F['link']}.zone_lock", "link", shm(f"sem.{prefix}.{R}.zone_lock")),
            ]
            made += [shm(name) for name, _, _ in files]
            live.runs_table()                              # every lazy import done before the fork

            def forge():
                for name, kind, data in files:
                    path = shm(name)
                    if kind == "mm":
                        write_file(path, data, mm_size)
                    elif kind == "zone":
                        write_file(path, data)
                    elif kind == "sem":
                        write_file(path, b"\0" * SEM_SIZE)
                    elif kind == "garbage":
                        write_file(path, os.urandom(4096))
                    elif kind == "fifo":
                        os.mkfifo(path, 0o600)
                    else:
                        os.symlink(data, path)
                # and a live fake run of its own: this process is its "supervisor"
                me = os.getpid()
                own = f"{me}-d00d"
                zone = bytearray(template)
                ZONE_HEADER.set(zone, "supervisor_pid", me)
                ZONE_HEADER.set(zone, "supervisor_ctime", psutil.Process(me).create_time())
                write_file(shm(f"{prefix}.{own}.zone"), bytes(zone))
                write_file(shm(f"sem.{prefix}.{own}.zone_lock"), b"\0" * SEM_SIZE)
                return {"own": own, "runs": live.runs_table()}

            fake_sup = AsUser(uid, forge)
            got = fake_sup.value()
            own = got["own"]
            made += [shm(f"{prefix}.{own}.zone"), shm(f"sem.{prefix}.{own}.zone_lock")]
            # The second user's own `runs`: root's run, which it may not read, shows as "?".
            assert any(line.split()[:2] == [R, "?"] and "root" in line for line in got["runs"].splitlines())

            calls = [("runs",), ("ps", R), ("cleanup",)]
            calls += [("inject", R, a, t) for a in ("stop", "crash", "cont") for t in ("forged", str(S))]
            calls += [("inject", R, "alloc", str(S), "5"), ("inject", R, "hold-mmap-sem", "forged",
                                                           "--seconds", "1"),
                      ("inject", R, "hold-lock", "M", "--seconds", "1")]
            for fake in [*F.values(), own]:
                calls += [("ps", fake), ("stop", fake), ("inject", fake, "stop", "victim"),
                          ("inject", fake, "crash", str(S))]
            results = {}
            for args in calls:
                p = oomemu(*args, timeout=30)             # a hang is a TimeoutExpired: a failure
                results[args] = p
                assert said_once(p), (args, p.returncode, p.stdout, p.stderr)
                assert untouched(bystander), f"{args} signalled the unrelated process {S}"
                assert fake_sup.alive(), f"{args} signalled the second user's process"
            for args, p in results.items():
                if args[0] in ("inject", "stop"):
                    assert p.returncode == 2, (args, p.stdout, p.stderr)

            runs = results[("runs",)].stdout
            rows = {line.split()[0]: line for line in runs.splitlines()[1:] if line.split()}
            assert R in rows and "root" in rows[R] and rows[R].split()[-1] == "2"
            assert not set(F.values()) & set(rows)        # no fake run is listed
            assert own in rows and rows[own].split()[4] == str(uid)   # the second user's claim, its own
            ps = results[("ps", R)]
            names_shown = [line.split()[1] for line in ps.stdout.splitlines()[2:]]
            assert names_shown == ["victim", "other"]
            assert "ignored 4 objects" in ps.stderr
            assert "has no task 'forged'" in results[("inject", R, "stop", "forged")].stderr
            assert f"has no task '{S}'" in results[("inject", R, "crash", str(S))].stderr
            lock_m = ("inject", R, "hold-lock", "M", "--seconds", "1")
            assert "has no lock M (locks: L)" in results[lock_m].stderr
            assert "is not oomemu's" in results[("stop", F["root"])].stderr
            assert "a symbolic link" in results[("stop", F["link"])].stderr
            assert "only its owner may stop it" in results[("stop", own)].stderr
            assert "only its owner may inject into it" in results[("inject", own, "stop", "victim")].stderr
            assert f"object(s) of uid {uid}" in results[("cleanup",)].stdout
            assert all(os.path.lexists(path) for path in made)      # root removed none of them

            # Through all of that, the run itself still answers, and only to its owner's hand.
            assert run.proc.poll() is None
            p = oomemu("inject", R, "stop", "other")
            assert p.returncode == 0, p.stderr
            assert wait_for(lambda: oomemu("ps", R).stdout.count(" stopped ") == 1, 10)
            assert oomemu("inject", R, "cont", "other").returncode == 0
            run.stop()
        assert untouched(bystander)
    finally:
        if fake_sup is not None:
            fake_sup.finish()
        sleeper.kill()
        sleeper.wait()
        for path in made:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def test_a_second_users_cleanup_leaves_roots_dead_run_alone():
    true = subprocess.Popen(["true"])
    true.wait()
    run_id = f"{true.pid}-dead"                          # a run whose supervisor is gone
    zone = Zone(run_id, create={"supervisor_pid": true.pid, "supervisor_ctime": 0.0, "speed": 1.0,
                                "total_pages": 256, "scenario": "s", "policy": "v4.17"})
    zone.close()
    paths = [names.shm_path(names.zone(run_id), False)]
    try:
        cleanup_mod.dead_groups()                         # warm every lazy import before the fork
        live.runs_table()
        x = AsUser(unused_uid(), lambda: [cleanup_mod.cleanup(), live.runs_table()])
        x.finish()
        lines, runs = x.value()
        assert lines == [f"left alone 1 object(s) of root under run {run_id}'s name: "
                         f"only their owner may remove them"]
        assert runs.splitlines() == [
            "oomemu: no live runs",
            "oomemu: 1 object in /dev/shm of root under run names belong to no live run of theirs: "
            "only their owner's 'oomemu cleanup' removes them"]
        assert all(os.path.exists(p) for p in paths)
        p = oomemu("cleanup")
        assert p.returncode == 0 and all(path in p.stdout for path in paths), p.stdout
    finally:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
