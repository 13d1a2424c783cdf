"""A run's user space: the OOM daemon it names (``v6.6+earlyoom``), and its door.

One process per run that needs either, started by the supervisor before
time 0 and told when time 0 comes (a line on the ``--go`` pipe; EOF there
means the run is over: exit). It opens the run's zone and every task's mm
by name, as the run's other processes do, and:

* **the daemon** (``--policy KERNEL+DAEMON``): a model from
  ``emulator/userspace/`` looks at a :class:`~emulator.runtime.view.RunView`
  snapshot at the emulated times it asks for (this process holds the run
  clock at each, in its own clock slot, so that it is never late for
  one), and this process does what it decides: the model's log lines go to
  the run's log (``Event.DAEMON``), its kills are real signals sent through
  pidfds (``runtime/door.send_kill``), its process_mrelease() calls are
  made here, in this process's context (``runtime/door.process_mrelease``);
  a wait on a victim's exit (``Decision.wake_on_exit``) is a poll on its
  pidfd, as lmkd's is.
* **the door** (``--door DIR``): the run's little /proc, written every
  ``--refresh-ms`` of real time (runtime/door.DoorDir), removed at the end.

A failure is one line on stderr and exit 1; the supervisor ends the run with
it (verdict error).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import select
import signal
import sys
import time

from emulator.kernel.mm_types import PAGE_SIZE
from emulator.policies import get_policy, register_daemon
from emulator.runtime import machine, names
from emulator.runtime.clock import RunClock
from emulator.runtime.door import DoorDir, DoorError, process_mrelease, send_kill, tell
from emulator.runtime.mm import Mm
from emulator.runtime.protocol import Event
from emulator.runtime.rwsem import MmapSem
from emulator.runtime.shm_trust import open_fifo_for_write
from emulator.runtime.view import RunView
from emulator.runtime.zone import Zone
from emulator.userspace.base import Decision, Kill, Log, Results
from workers.task import set_pdeathsig

COMM = "oomemu-daemon"
MAX_SPINS = 10_000                  # looks at one emulated time: a model that never lets time go on


class _Woken(Exception):
    """The wait ended early: the victim waited for died, or the run is over."""


class _RunOver(Exception):
    """EOF on the go pipe: the supervisor is done with us."""


class UserSpace:
    def __init__(self, run_id: str, policy_name: str, overrides: dict, go_fd: int, door: str | None,
                 refresh_s: float):
        self.run_id = run_id
        self.go_fd = go_fd
        self.zone = Zone(run_id)
        n = self.zone.nr_tasks
        if not machine.raise_nofile(2 * n + 64):         # a segment per task, a pidfd per victim
            raise RuntimeError(f"RLIMIT_NOFILE's hard limit is too low for {n} tasks")
        self.own = [Mm(names.mm(run_id, i)) for i in range(n)]
        self.uses = [o.shares_mm - 1 if o.shares_mm else i for i, o in enumerate(self.own)]   # mm index
        self.view = RunView(self.zone, [(self.own[i], self.own[self.uses[i]]) for i in range(n)])
        self.policy = get_policy(policy_name, overrides)
        self.daemon = self.policy.daemon
        self.name = self.daemon.name if self.daemon else COMM
        self.fifo = open_fifo_for_write(names.events(run_id), os.getuid())
        if self.fifo is None:
            raise RuntimeError("the run's event FIFO is not there")
        self.door = None
        self.pidfds: dict[int, int] = {}
        _OPEN.append(self)                                 # from here on, SIGTERM closes us
        self.door = DoorDir(door) if door else None
        self.refresh_s = refresh_s
        self.next_refresh = 0.0
        self.clock = RunClock(self.zone, self.zone.daemon_slot)
        self.sems: dict[int, MmapSem] = {}
        self.me = os.getpid()
        self.header = ""

    # -- the door ------------------------------------------------------------------
    def refresh(self) -> None:
        if self.door is None:
            return
        now = self.clock.now()
        snap = self.view.snapshot(now)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # no exit half-way through a file
        try:
            self.door.write(snap, self.header + "now: %.6f\n" % now)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.next_refresh = time.monotonic() + self.refresh_s

    # -- waiting --------------------------------------------------------------------
    def _wait_real(self, real_s: float, pidfd: int | None) -> None:
        """Wait up to ``real_s``, keeping the door fresh; _Woken if ``pidfd`` becomes
        readable (its process died), _RunOver on EOF on the go pipe."""
        end = time.monotonic() + real_s
        while (left := end - time.monotonic()) > 0:
            if self.door is not None:
                if time.monotonic() >= self.next_refresh:
                    self.refresh()
                left = min(left, max(0.0, self.next_refresh - time.monotonic()))
            fds = [self.go_fd] + ([pidfd] if pidfd is not None else [])
            ready, _, _ = select.select(fds, [], [], left)
            if self.go_fd in ready:
                if not os.read(self.go_fd, 64):
                    raise _RunOver
            if pidfd is not None and pidfd in ready:
                raise _Woken

    def idle(self) -> None:
        """The door only: refresh it until the run is over."""
        while True:
            self._wait_real(3600.0, None)

    # -- the daemon --------------------------------------------------------------------
    def log(self, line: str) -> None:
        tell(self.fifo, Event.DAEMON, -1, self.clock.now(), line=line[:1000], by=self.me, comm=self.name)

    def _index(self, pid: int) -> int | None:
        for i, o in enumerate(self.own):
            if o.pid == pid:
                return i
        return None

    def _pidfd(self, pid: int) -> int | None:
        fd = self.pidfds.get(pid)
        if fd is None:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                return None
            self.pidfds[pid] = fd
        return fd

    def kill(self, k: Kill, now: float, results: Results) -> None:
        i = self._index(k.pid)
        if i is None:
            results.kill[k.pid] = "ESRCH"
            return
        pidfd = self._pidfd(k.pid)
        try:
            if pidfd is None or self.own[i].pid != k.pid:
                raise DoorError(errno.ESRCH, "gone")
            send_kill(self.zone, self.own[i], i, k.signal,
                      lambda sig: signal.pidfd_send_signal(pidfd, sig), self.fifo, now, self.me, self.name)
            results.kill[k.pid] = ""
        except DoorError as e:
            results.kill[k.pid] = e.name
            return
        if k.mrelease:
            results.mrelease[k.pid] = self.mrelease(i, now)

    def mrelease(self, i: int, now: float) -> str:
        m = self.uses[i]
        sem = self.sems.get(m)
        if sem is None:
            sem = self.sems[m] = MmapSem.open(self.run_id, m, self.own[m], f"the mmap_sem of task {m}")
        users = [self.own[j] for j in range(len(self.own)) if self.uses[j] == m]
        try:
            freed = process_mrelease(self.zone, self.own[i], self.own[m], m, users, sem, self.policy, self.me,
                                     on_wait=self._blocked)
            result = ""
        except DoorError as e:
            freed, result = 0, e.name
        tell(self.fifo, Event.MRELEASE, i, self.clock.now(), by=self.me, comm=self.name, result=result,
             freed_kb=freed * PAGE_SIZE // 1024)          # when it returned (it may wait for mmap_sem)
        return result

    def _blocked(self, on: bool) -> None:
        """Waiting for another process (a victim's mmap_sem): time may pass meanwhile."""
        if on:
            self.clock.let_go()
        else:
            self.clock.hold(self.clock.now())

    def act(self, decision: Decision, now: float) -> Results:
        results = Results()
        for a in decision.actions:
            if isinstance(a, Log):
                self.log(a.line)
            elif isinstance(a, Kill):
                self.kill(a, now, results)
            else:
                raise TypeError(f"daemon {self.name}: unknown action {a!r}")
        return results

    def run_daemon(self) -> None:
        """Look when the model asks (a time already past, as after a call that blocked: at
        once); a model that keeps asking for now without time moving on is a fault."""
        decision = self.daemon.start(self.clock.now())
        results = self.act(decision, self.clock.now())
        spins, last = 0, -1.0
        while True:
            due = max(decision.next_at, self.clock.now())
            pidfd = self._pidfd(decision.wake_on_exit) if decision.wake_on_exit else None
            try:
                self.clock.sleep_until(due, lambda s: self._wait_real(s, pidfd))
            except _Woken:
                pass
            now = self.clock.hold(self.clock.now())        # we act now, wherever we woke
            spins = spins + 1 if now == last else 0
            if spins > MAX_SPINS:
                raise RuntimeError(f"daemon {self.name}: {MAX_SPINS} looks at {now:g} s without time "
                                   f"moving on (its next_at is never later than now)")
            last = now
            decision = self.daemon.poll(self.view.snapshot(now), results)
            results = self.act(decision, now)

    def run(self) -> None:
        if self.daemon is not None:
            self.clock.hold(0.0)                          # the clock waits for our first look
        os.write(1, b"ready\n")
        if not os.read(self.go_fd, 64):                   # time 0, or the run ended before it
            return
        self.header = "run: %s\nscenario: %s\npolicy: %s\nspeed: %g\n" % (
            self.run_id, self.zone.facts().scenario, self.policy.name, self.zone.speed)
        self.refresh()
        try:
            if self.daemon is not None:
                self.run_daemon()
            else:
                self.idle()
        except _RunOver:
            pass

    def close(self) -> None:
        """Remove the door, close the pidfds; again (from a SIGTERM handler) does no harm."""
        if self.door is not None:
            self.door.remove()
        for fd in list(self.pidfds.values()):
            try:
                os.close(fd)
            except OSError:
                pass
        self.pidfds.clear()


def _import(where: str):
    module, _, qualname = where.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="workers.userspace")
    p.add_argument("--run", required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--go", type=int, required=True, help="read end of the supervisor's time-0 pipe")
    p.add_argument("--policy", required=True, help="KERNEL or KERNEL+DAEMON")
    p.add_argument("--set", default="{}", help="the policy's and daemon's --set values, as JSON")
    p.add_argument("--daemon-class", help="MODULE:CLASS of the daemon model, if not a built-in one")
    p.add_argument("--door", help="write the run's view into this directory (made here)")
    p.add_argument("--refresh-ms", type=float, default=20.0)
    a = p.parse_args(argv)
    set_pdeathsig(signal.SIGTERM)                          # its handler removes the door on the way out
    if os.getppid() != a.parent:                           # the supervisor died before prctl
        return 1
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    # SIGTERM (the supervisor's death, someone's kill, a sweep of stray processes): remove
    # the door and exit, from the handler itself (an exception raised there could cut the
    # way out short: SIGTERM and EOF on the go pipe come together when the supervisor dies)
    signal.signal(signal.SIGTERM, _on_sigterm)
    us = None
    try:
        if a.daemon_class:
            register_daemon(_import(a.daemon_class))
        us = UserSpace(a.run, a.policy, json.loads(a.set), a.go, a.door, a.refresh_ms / 1000)
        us.run()
    except BrokenPipeError:
        return 0                                           # the run is over
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if us is not None:
            us.close()                                     # (a SIGTERM meanwhile closes and exits)
    return 0


_OPEN: list = []                                           # the UserSpace to close on SIGTERM


def _on_sigterm(signum, frame) -> None:
    for us in _OPEN:
        us.close()
    os._exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
