"""Signalling a process only once it is proven to be the one meant.

A pid read from /dev/shm is a claim: whoever wrote the file chose it, and
even an honest pid may belong to someone else by now. So a process is first
held by a pidfd (``pidfd_open``), then shown, from what the kernel says of it
in /proc, to be a run's supervisor or one of its workers, and is signalled
through that pidfd only (``pidfd_send_signal``): if it dies in between, the
signal fails instead of hitting whoever gets the pid next.

What /proc said was said of the pidfd's process if that process still holds
the pid after the reading (the ``Pid:`` line of the pidfd's fdinfo): a pid is
not reused while its process, even a zombie, exists.
"""

from __future__ import annotations

import os
import select
import signal
from dataclasses import dataclass

import psutil

from . import names
from .shm_trust import user

# psutil's create_time is the boot time (whole seconds, from the wall clock) plus the
# start in clock ticks: two readings of one process can differ by up to a second.
CTIME_SLACK_S = 1.0


class NotProven(Exception):
    """The process is gone, or not the one meant (one line: why)."""


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    uid: int              # real uid
    ppid: int
    create_time: float
    status: str           # psutil.STATUS_*: "stopped" for SIGSTOP
    cmdline: tuple[str, ...]


class Proven:
    """A process held by its pidfd, shown to be the one meant. Close it (or use ``with``)."""

    def __init__(self, info: ProcInfo, pidfd: int):
        self.info, self.pidfd = info, pidfd

    @property
    def pid(self) -> int:
        return self.info.pid

    def send_signal(self, sig: int) -> None:
        """pidfd_send_signal: ProcessLookupError if it has exited meanwhile."""
        signal.pidfd_send_signal(self.pidfd, sig)

    def wait_exit(self, timeout: float) -> bool:
        """Has it exited within ``timeout`` seconds? (A pidfd polls readable at exit.)"""
        p = select.poll()
        p.register(self.pidfd, select.POLLIN)
        return bool(p.poll(timeout * 1000))

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read(pid: int) -> ProcInfo:
    p = psutil.Process(pid)
    with p.oneshot():
        return ProcInfo(pid, p.uids().real, p.ppid(), p.create_time(), p.status(), tuple(p.cmdline()))


def _holds(pidfd: int, pid: int) -> bool:
    """Does the pidfd's process still hold ``pid``? (fdinfo says -1 once it is reaped.)"""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1]) == pid
    return False


def prove(pid: int, check) -> Proven:
    """Hold ``pid`` by a pidfd and return it if ``check(ProcInfo)`` finds nothing wrong
    (it returns why not, or None); NotProven otherwise. A zombie is never proven."""
    if not isinstance(pid, int) or not 0 < pid <= names.PID_MAX_LIMIT:
        raise NotProven(f"{pid!r} is not a pid")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise NotProven(f"no process {pid}") from None
    except OSError as e:
        raise NotProven(f"process {pid}: {e.strerror}") from None
    try:
        try:
            info = _read(pid)
        except psutil.NoSuchProcess:
            raise NotProven(f"no process {pid}") from None
        except psutil.Error as e:
            raise NotProven(f"process {pid} cannot be read ({type(e).__name__})") from None
        if info.status == psutil.STATUS_ZOMBIE:
            raise NotProven(f"process {pid} has exited")
        why = check(info)
        if why:
            raise NotProven(f"process {pid} {why}")
        if not _holds(pidfd, pid):
            raise NotProven(f"no process {pid}")
    except BaseException:
        os.close(pidfd)
        raise
    return Proven(info, pidfd)


def _arg(cmdline, flag: str) -> str | None:
    """The value after ``flag`` in an argv (None if absent or last)."""
    for a, b in zip(cmdline, cmdline[1:]):
        if a == flag:
            return b
    return None


def is_oomemu_run(cmdline) -> bool:
    """``python -m emulator run|demo ...`` or ``.../oomemu run|demo ...``: a command
    that starts runs itself and stops at SIGINT as at Ctrl-C."""
    for i, arg in enumerate(cmdline[:-1]):
        if (arg == "emulator" and i > 0 and cmdline[i - 1] == "-m") or os.path.basename(arg) == "oomemu":
            return cmdline[i + 1] in ("run", "demo")
    return False


def is_worker(cmdline, run_id: str, index: int | None = None) -> bool:
    """``python -m workers.task --run RUN_ID --index INDEX ...`` (any index if None)."""
    return (_arg(cmdline, "-m") == "workers.task" and _arg(cmdline, "--run") == run_id
            and (index is None or _arg(cmdline, "--index") == str(index)))


def _owned(info: ProcInfo, owner: int) -> str | None:
    if info.uid != owner:
        return f"belongs to {user(info.uid)}, not to the run's owner {user(owner)}"
    return None


def supervisor_check(owner: int, ctime: float):
    """A run's supervisor: the owner's, started when the zone says it was."""
    def check(info: ProcInfo) -> str | None:
        if (why := _owned(info, owner)) is not None:
            return why
        if abs(info.create_time - ctime) >= CTIME_SLACK_S:
            return "started at another time than the run's supervisor"
        return None
    return check


def worker_check(owner: int, run_id: str, index: int | None, supervisor: int | None):
    """Worker ``index`` of ``run_id`` (any if None): the owner's, started as one, and the
    child of ``supervisor`` (a pid held by a pidfd; None: its supervisor is dead)."""
    def check(info: ProcInfo) -> str | None:
        if (why := _owned(info, owner)) is not None:
            return why
        if not is_worker(info.cmdline, run_id, index):
            return f"is not {'a worker' if index is None else f'worker {index}'} of run {run_id}"
        if supervisor is not None and info.ppid != supervisor:
            return "is not a child of the run's supervisor"
        return None
    return check


def child_status(pid: int, owner: int, parent: int) -> str | None:
    """What ``oomemu ps`` needs of a worker, without a pidfd or psutil (a few µs, not
    ~0.4 ms: a thousand tasks are read in well under a second): its state letter from
    /proc/PID/stat (``R``, ``S``, ``D``, ``T``, ``t``) if it is ``owner``'s, alive, and
    a child of ``parent`` (a run's supervisor, held by its pidfd: while held, its pid
    is its own, and so is the parent of its children). None otherwise (gone, a zombie,
    another's or another's child). For reading only: a signal needs :func:`prove`."""
    if not isinstance(pid, int) or not 0 < pid <= names.PID_MAX_LIMIT:
        return None
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        uid = os.fstat(fd).st_uid
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # pid (comm) state ppid ...: comm may hold ") ", so split after the last ")"
    fields = stat[stat.rfind(b")") + 2:].split(None, 2)
    if len(fields) < 2 or uid != owner:
        return None
    state, ppid = fields[0].decode("ascii", "replace"), fields[1]
    if state in ("Z", "X") or not ppid.isdigit() or int(ppid) != parent:
        return None
    return state


def holds_any(pid: int, files: set[tuple[int, int]]) -> bool | None:
    """Does process ``pid`` have one of ``files`` ((st_dev, st_ino) pairs) open or mapped?
    None if we may not look (another user's process). A supervisor holds the run's
    objects from the moment it makes the first (O_CREAT returns an fd) until it tears down."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in files:
                return True
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) >= 5 and parts[4] != "0":
                    major, _, minor = parts[3].partition(":")
                    if (os.makedev(int(major, 16), int(minor, 16)), int(parts[4])) in files:
                        return True
    except PermissionError:
        return None
    except (FileNotFoundError, ProcessLookupError):
        return False
    return False

