"""The supervisor's side of the fork server (``workers.forkserver``): start the
template, have it clone one worker per task, and hold each worker as a child.

The template is started first thing in a run, so that its interpreter start and
imports overlap the making of the run's objects; it is a fresh interpreter (not a
fork of the supervisor, which may have threads: a library caller's, the FUSE
server's, the reaper's), so it is single-threaded whatever the caller is. Each
worker it clones is the supervisor's child (CLONE_PARENT): a :class:`Worker`
here holds it by a pidfd, from which the supervisor learns of its death at once
(the pidfd turns readable) and reaps it (``waitid(P_PIDFD)``). The template exits
once every worker is made; a template that dies before that ends the run
(:class:`ForkServerDied`), and the clones it made and did not report are found
as children of ours in its process group and killed too
(:func:`kill_unreported`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import select
import selectors
import signal
import subprocess
import struct
import sys
import time

import psutil

#: How the template makes a worker: clone(CLONE_PARENT), which this architecture's
#: syscall number is known for (its first argument is the flags everywhere, and the
#: others, all 0 here, are in the same places but on s390), on a 64-bit userland.
CLONE_PARENT = 0x00008000
SYS_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220}
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
TEMPLATE_BOOST = 5              # nice levels above the supervisor's, where allowed (about 3x the weight)


def clone_syscall() -> int | None:
    """clone(2)'s number here, or None: then workers are forked twice and reparented."""
    if struct.calcsize("P") != 8:
        return None                   # a 32-bit userland on a 64-bit kernel: another table
    return SYS_CLONE.get(platform.machine())


#: Real seconds the template may take to start and clone every worker before the
#: run gives up on it; generous: a loaded 2-core machine starts 1,000 in about a second.
SPAWN_TIMEOUT_S = 120.0
#: The return code of a worker reaped by someone else (a waitpid(-1) in the caller's
#: process): how it ended is not known.
UNKNOWN_EXIT = 255
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ForkServerDied(RuntimeError):
    """The template died or stalled before every worker was made (one line: how)."""


class Worker:
    """A worker process, a child of ours, held by a pidfd (what ``subprocess.Popen``
    gave before, for the part the supervisor uses). ``returncode``: None while it
    runs, then its exit code, or minus the signal that killed it."""

    def __init__(self, pid: int):
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)       # a child: its pid is ours until we reap it
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Reap it if it has exited; its return code, or None while it runs."""
        if self.returncode is None and self.pidfd >= 0:
            try:
                info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
            except ChildProcessError:         # reaped by someone else's waitpid(-1): how, unknown
                self.returncode = UNKNOWN_EXIT
                return self.returncode
            if info is not None:
                self.returncode = (info.si_status if info.si_code == os.CLD_EXITED
                                   else -info.si_status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait (at most ``timeout`` real seconds) for it to exit and reap it; its return
        code, or None if it still runs."""
        if self.poll() is not None or self.pidfd < 0:
            return self.returncode
        p = select.poll()                     # not select(): with 1,000 workers, fds pass 1,024
        p.register(self.pidfd, select.POLLIN)
        ready = p.poll(None if timeout is None else max(0, timeout) * 1000)
        return self.poll() if ready else None

    def send_signal(self, sig: int) -> None:
        """pidfd_send_signal; nothing if it has exited (even if not yet reaped)."""
        if self.returncode is None and self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class ForkServer:
    """The run's template process. :meth:`spawn` once, then :meth:`close` (always)."""

    def __init__(self, run_id: str, events_fd: int, mode: str | None = None):
        self.run_id = run_id
        # "clone": each worker a clone (CLONE_PARENT) of the template, our child at once.
        # "fork": forked twice and reparented to us, a child subreaper while spawning.
        self.mode = mode or ("clone" if clone_syscall() is not None else "fork")
        self._subreaper_was = None
        if self.mode == "fork":
            self._subreaper_was = _subreaper(True)
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            # A process group of its own, which its clones share: a terminal's Ctrl-C,
            # Ctrl-\, Ctrl-Z and hangup go to the supervisor alone.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.task", "--run", run_id, "--index", "template",
                 "--parent", str(os.getpid()), "--fd", str(events_fd), "--serve", f"{req_r},{rep_w}",
                 "--mode", self.mode],
                pass_fds=(events_fd, req_r, rep_w), stdin=subprocess.DEVNULL, env=env, process_group=0)
        except BaseException:
            for fd in (self._req_w, self._rep_r):
                os.close(fd)
            self._restore_subreaper()
            raise
        finally:
            os.close(req_r)
            os.close(rep_w)
        # The template is the start-up's one serial part, and a thousand clones of it compete
        # for the CPU as they fault in: it runs at a higher priority where we may give it one
        # (CAP_SYS_NICE), and each clone goes back to ours first thing (always allowed).
        try:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, os.getpriority(os.PRIO_PROCESS, 0) - TEMPLATE_BOOST)
        except OSError:
            pass

    def spawn(self, requests: list[tuple[int, bytes]], made, check=None) -> None:
        """Have a worker cloned for each (task index, ``WorkerSpec.to_line()``); ``made(index, Worker)``
        is called for each as it is made. ``check()`` is called between batches (a safe point:
        it may raise). ForkServerDied if the template dies or takes longer than SPAWN_TIMEOUT_S;
        OSError if it could not clone (EAGAIN: a limit on processes; ENOMEM)."""
        n = 0
        data = b"".join(b"%d %s\n" % (i, spec) for i, spec in requests)
        os.set_blocking(self._req_w, False)
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._rep_r, selectors.EVENT_READ)
            sel.register(self._req_w, selectors.EVENT_WRITE)
            while n < len(requests):
                if check is not None:
                    check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ForkServerDied(f"the fork server made {n} of {len(requests)} workers in "
                                         f"{SPAWN_TIMEOUT_S:g} s")
                for key, _ in sel.select(min(left, 0.25)):
                    if key.fd == self._req_w:
                        try:
                            data = data[os.write(self._req_w, data[:1 << 16]):]
                        except BrokenPipeError:
                            data = b""
                        if not data:              # EOF: the template starts cloning
                            sel.unregister(self._req_w)
                            os.close(self._req_w)
                            self._req_w = -1
                        continue
                    chunk = os.read(self._rep_r, 1 << 16)
                    if not chunk:
                        raise ForkServerDied(self._how_it_died(n, len(requests)))
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.startswith(b"!"):     # it failed: errno (0: not the machine's), what
                            _, err, why = line.split(b" ", 2)
                            if int(err):
                                raise OSError(int(err), why.decode(errors="replace"))
                            raise ForkServerDied(f"the fork server failed: {why.decode(errors='replace')}")
                        index, pid = (int(x) for x in line.split())
                        made(index, Worker(pid))
                        n += 1

    def _how_it_died(self, made: int, wanted: int) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = ("still running" if code is None else f"signal {signal.Signals(-code).name}" if code < 0
               else f"exit code {code}")
        return f"the fork server ({how}) stopped after making {made} of {wanted} workers"

    def close(self, kill: bool = False) -> None:
        """Make sure the template is gone and reaped (``kill``: at once, mid-spawn; else
        it is waited for, as it exits once every worker is made); close our pipe ends.
        Idempotent."""
        for attr in ("_req_w", "_rep_r"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._restore_subreaper()

    def _restore_subreaper(self) -> None:
        if self._subreaper_was is not None:
            _subreaper(self._subreaper_was)
            self._subreaper_was = None


def _subreaper(on: bool) -> bool:
    """PR_SET_CHILD_SUBREAPER; returns what it was."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")
    return bool(was.value)


def kill_unreported(pgid: int, known: set[int]) -> list[int]:
    """Children of ours in process group ``pgid`` (the template's, which its clones share:
    zombies show theirs too, where a command line cannot be read) but not in ``known``
    (made, and not reported before the template died or the run was interrupted): SIGKILL
    and reap each; their pids."""
    out = []
    for pid in _children():
        if pid in known:
            continue
        try:
            if os.getpgid(pid) != pgid:
                continue
            w = Worker(pid)
        except (ProcessLookupError, OSError):
            continue
        w.send_signal(signal.SIGKILL)
        w.wait(10)
        w.close()
        out.append(pid)
    return out


def _children() -> list[int]:
    """Our children's pids, zombies included."""
    try:
        return [c.pid for c in psutil.Process().children()]
    except psutil.Error:
        return []
