"""What the machine can give a run: room in /dev/shm, memory, processes, open files.

A run that the machine cannot hold is refused before it starts, in one line
(``EnvironmentProblem``, exit 2), rather than failing half-way; an OS error
during a run whose cause is the machine's is told apart from a fault of ours
by :data:`emulator.errors.ENVIRONMENT_ERRNOS`.
"""

from __future__ import annotations

import errno
import os
import resource

import psutil

from ..errors import EnvironmentProblem
from ..kernel.mm_types import PAGE_SIZE, PAGES_PER_MB
from ..scenario import Scenario
from . import names
from .mm import HEADER_SIZE
from .zone import zone_size

WORKER_MEMORY_MB = 4            # a worker's own memory beside the emulated pages: a clone of the fork
                                # server's template writes (copies) about 2.5 MiB of it (make bench)
FDS_PER_TASK = 3                # the supervisor keeps a pidfd, the mm's fd and mmap's own dup of it per task
FDS_BASE = 64


def needs(scenario: Scenario) -> dict[str, int]:
    """What a run of ``scenario`` will take from the machine, in bytes and file descriptors."""
    n = len(scenario.tasks)
    shm = round(scenario.memory_mb * PAGES_PER_MB) * PAGE_SIZE + n * HEADER_SIZE + zone_size(n, len(scenario.objects))
    return {"shm": shm, "memory": shm + ((n + 1) * WORKER_MEMORY_MB << 20),
            "fds": FDS_BASE + FDS_PER_TASK * n + 2 * len(scenario.objects)}


def check_room(scenario: Scenario) -> None:
    """Refuse to start, in one line, if /dev/shm, the machine's available memory,
    the caller's memory cgroup or the open-file limit cannot hold the run."""
    need = needs(scenario)
    mb = lambda b: f"{b / (1 << 20):.0f} MB"
    what = (f"{scenario.memory_mb:g} MB of emulated memory + {len(scenario.tasks)} mm headers")
    try:
        st = os.statvfs(names.SHM_DIR)
    except OSError as e:
        raise EnvironmentProblem(f"{names.SHM_DIR}: {e.strerror}: oomemu keeps a run's memory there") from None
    free = st.f_bavail * st.f_frsize
    if free < need["shm"]:
        raise EnvironmentProblem(
            f"{names.SHM_DIR} has {mb(free)} free, this run needs {mb(need['shm'])} ({what}): "
            f"make room there (or mount it larger) or use a smaller memory_mb")
    avail = _mem_available()
    if avail is not None and avail < need["memory"]:
        raise EnvironmentProblem(
            f"the machine has {mb(avail)} of memory available, this run needs about {mb(need['memory'])} "
            f"({what}, and about {WORKER_MEMORY_MB} MB per process)")
    room = _memcg_room()
    if room is not None and room[0] < need["memory"]:
        raise EnvironmentProblem(
            f"memory cgroup {room[1]} has {mb(room[0])} left under its limit, this run needs about "
            f"{mb(need['memory'])} ({what}, and about {WORKER_MEMORY_MB} MB per process)")
    _check_nproc(len(scenario.tasks))
    if not raise_nofile(need["fds"]):
        raise EnvironmentProblem(
            f"this run needs about {need['fds']} open files ({len(scenario.tasks)} tasks), the limit is "
            f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]} (ulimit -n): raise it or run fewer tasks")


def raise_nofile(fds: int) -> bool:
    """Make room for ``fds`` open files: the soft RLIMIT_NOFILE is raised to the hard one if
    it is lower (a supervisor holds a pidfd per task: 1,000 tasks pass the usual 1,024).
    False if even the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= fds:
        return True
    if hard != resource.RLIM_INFINITY and hard < fds:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))          # as far as we may
    return True


def _check_nproc(tasks: int) -> None:
    """RLIMIT_NPROC counts every process of the user (root is exempt)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if os.geteuid() == 0 or soft == resource.RLIM_INFINITY:
        return
    uid = os.getuid()
    mine = sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)
    need = mine + tasks + 1
    if soft < need:
        if hard == resource.RLIM_INFINITY or hard >= need:
            resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
        else:
            raise EnvironmentProblem(
                f"this run needs {tasks} more processes, you have {mine} and the limit is "
                f"{hard} (ulimit -u): raise it or run fewer tasks")


def hint(err: int) -> str:
    """What to do about one of ENVIRONMENT_ERRNOS, as a clause ("" if nothing to say)."""
    return {errno.EMFILE: ": too many open files; raise 'ulimit -n'",
            errno.ENFILE: ": the system's file table is full",
            errno.EAGAIN: ": no more processes; see 'ulimit -u'",
            errno.ENOSPC: f": {names.SHM_DIR} is full",
            errno.ENOMEM: ": out of memory"}.get(err, "")


def shm_free_mb() -> float:
    try:
        st = os.statvfs(names.SHM_DIR)
        return st.f_bavail * st.f_frsize / (1 << 20)
    except OSError:
        return 0.0


def _mem_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _memcg_room() -> tuple[int, str] | None:
    """Bytes left under the tightest memory limit of this process's memory cgroup
    and its ancestors (cgroup v1 or v2), and that cgroup's path; None if unlimited."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):
            base, limit_f, usage_f = "/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        elif hid == "0" and controllers == "":
            base, limit_f, usage_f = "/sys/fs/cgroup", "memory.max", "memory.current"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            cg = "/" + "/".join(parts[:depth])
            d = os.path.join(base, *parts[:depth])
            try:
                with open(os.path.join(d, limit_f)) as f:
                    raw = f.read().strip()
                with open(os.path.join(d, usage_f)) as f:
                    usage = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if raw == "max" or int(raw) >= 1 << 60:
                continue
            room = max(0, int(raw) - usage)
            if best is None or room < best[0]:
                best = (room, cg)
    return best
