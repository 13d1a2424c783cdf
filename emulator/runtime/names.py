"""Names of a run's kernel objects in /dev/shm, and how to find them again.

Every object a run creates carries the run id, so that ``oomemu cleanup``
(and the tests) can find the leftovers of a run whose supervisor is gone:

    /dev/shm/oomemu.<run>.zone              the zone (free pages, run facts)
    /dev/shm/oomemu.<run>.events            FIFO: events from workers and ``oomemu inject``
    /dev/shm/sem.oomemu.<run>.start         released once per task at time 0
    /dev/shm/oomemu.<run>.mm.<i>            task i's mm: header (with its mmap_sem's
                                            state), VMAs, pages
    /dev/shm/sem.oomemu.<run>.mmap_sem_readers.<i>  where readers wait for task i's mmap_sem
    /dev/shm/sem.oomemu.<run>.mmap_sem_writers.<i>  where writers (and the exiting owner) wait
    /dev/shm/sem.oomemu.<run>.oom_reply.<i> released when the OOM killer has
                                            handled task i's failed allocation
    /dev/shm/sem.oomemu.<run>.lock.<name>   a named lock of the scenario

The run id is ``<supervisor pid>-<4 hex digits>``; ``oomemu`` is the default
prefix (``OOMEMU_PREFIX`` changes it).
"""

from __future__ import annotations

import codecs
import os
import re

from ..kernel.mm_types import TASK_COMM_LEN

# OOMEMU_PREFIX keeps separate worlds apart (the test suite uses its own).
PREFIX = os.environ.get("OOMEMU_PREFIX", "oomemu")
if not PREFIX.replace("_", "").replace("-", "").isalnum():
    raise SystemExit(f"OOMEMU_PREFIX={PREFIX!r}: use letters, digits, '-' or '_'")
SHM_DIR = "/dev/shm"
PID_MAX_LIMIT = 4 * 1024 * 1024       # include/linux/threads.h: no pid is larger on 64-bit
NAME_MAX = TASK_COMM_LEN - 1          # a lock's or a task's name, as a comm

_RUN_ID = re.compile(r"^([1-9]\d{0,6})-([0-9a-f]{4})$")
_ENTRY = re.compile(r"^(sem\.)?" + re.escape(PREFIX) + r"\.([1-9]\d{0,6}-[0-9a-f]{4})\.(.+)$")


def door_base() -> str:
    """Where runs' doors (their /proc as files) go: $OOMEMU_DOOR_DIR, else /run/oomemu for
    root, else $XDG_RUNTIME_DIR/oomemu, else /tmp/oomemu-UID."""
    if os.environ.get("OOMEMU_DOOR_DIR"):
        return os.environ["OOMEMU_DOOR_DIR"]
    if os.geteuid() == 0:
        return "/run/oomemu"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "oomemu")
    return f"/tmp/oomemu-{os.getuid()}"


def door(run_id: str, base: str | None = None) -> str:
    """A run's door directory."""
    return os.path.join(base or door_base(), f"{PREFIX}.{run_id}")


def new_run_id(pid: int | None = None) -> str:
    return f"{os.getpid() if pid is None else pid}-{os.urandom(2).hex()}"


def run_pid(run_id: str) -> int | None:
    """The supervisor pid encoded in a run id, or None if it is not one."""
    m = _RUN_ID.match(run_id)
    if not m or int(m.group(1)) > PID_MAX_LIMIT:
        return None
    return int(m.group(1))


def valid_name(name: str) -> bool:
    """A lock's name as a scenario may give it: 1 to 15 letters, digits, '-' or '_'
    (so that it can never leave /dev/shm or take another object's name)."""
    return 0 < len(name) <= NAME_MAX and all(c.isalnum() or c in "-_" for c in name)


def c_string(raw: bytes) -> str:
    """A NUL-padded name read from shared memory, as text; never raises. A name cut
    inside a UTF-8 character (names are cut to fit in bytes) loses the cut character;
    bytes that are not UTF-8 (garbage) become U+FFFD."""
    raw = bytes(raw).split(b"\0", 1)[0]
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(raw, final=False)


def zone(run_id: str) -> str:
    return f"/{PREFIX}.{run_id}.zone"



def start(run_id: str) -> str:
    return f"/{PREFIX}.{run_id}.start"


def mm(run_id: str, index: int) -> str:
    return f"/{PREFIX}.{run_id}.mm.{index}"


def mmap_sem_readers(run_id: str, index: int) -> str:
    """Readers queued on task ``index``'s mmap_sem sleep on this semaphore (emulator.runtime.rwsem)."""
    return f"/{PREFIX}.{run_id}.mmap_sem_readers.{index}"


def mmap_sem_writers(run_id: str, index: int) -> str:
    """Writers queued on task ``index``'s mmap_sem sleep on this one, and so does its exiting owner."""
    return f"/{PREFIX}.{run_id}.mmap_sem_writers.{index}"


def events(run_id: str) -> str:
    """The run's event FIFO (a path, not a POSIX IPC name): workers and ``inject`` write to it."""
    return os.path.join(SHM_DIR, f"{PREFIX}.{run_id}.events")


def oom_reply(run_id: str, index: int) -> str:
    return f"/{PREFIX}.{run_id}.oom_reply.{index}"


def obj(run_id: str, index: int) -> str:
    """A page-cache or shmem object's pages (runtime/objects.py)."""
    return f"/{PREFIX}.{run_id}.obj.{index}"


def lock(run_id: str, name: str) -> str:
    return f"/{PREFIX}.{run_id}.lock.{name}"


def shm_path(posix_name: str, semaphore: bool) -> str:
    """Where a POSIX name lives on Linux (glibc puts semaphores in sem.*)."""
    base = posix_name.lstrip("/")
    return os.path.join(SHM_DIR, ("sem." if semaphore else "") + base)


def split_entry(entry: str) -> tuple[str, str, bool] | None:
    """A file name in /dev/shm -> (run id, what: "zone", "mm.3", "lock.L", ..., is a semaphore),
    or None if it is not named as a run's object. Only the name: not who made it."""
    m = _ENTRY.match(entry)
    if not m or run_pid(m.group(2)) is None:
        return None
    return m.group(2), m.group(3), bool(m.group(1))


def leftovers(shm_dir: str = SHM_DIR) -> dict[str, list[str]]:
    """Map run id -> file names in ``shm_dir`` that carry it (anyone may have made them)."""
    runs: dict[str, list[str]] = {}
    try:
        entries = sorted(os.listdir(shm_dir))
    except FileNotFoundError:
        return runs
    for entry in entries:
        parts = split_entry(entry)
        if parts:
            runs.setdefault(parts[0], []).append(entry)
    return runs
