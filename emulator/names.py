"""Names of a run's kernel objects in /dev/shm, and how to find them again.

Every object a run creates carries the run id, so that ``oomemu cleanup``
(and the tests) can find the leftovers of a run whose supervisor is gone:

    /dev/shm/oomemu.<run>.zone              the zone (free pages, run facts)
    /dev/shm/oomemu.<run>.events            FIFO: events from workers and ``oomemu inject``
    /dev/shm/sem.oomemu.<run>.zone_lock     guards the zone's counters
    /dev/shm/sem.oomemu.<run>.start         released once per task at time 0
    /dev/shm/oomemu.<run>.mm.<i>            task i's mm: header, VMAs, pages
    /dev/shm/sem.oomemu.<run>.mmap_sem.<i>  task i's mmap_sem
    /dev/shm/sem.oomemu.<run>.oom_reply.<i> released when the OOM killer has
                                            handled task i's failed allocation
    /dev/shm/sem.oomemu.<run>.lock.<name>   a named lock of the scenario

The run id is ``<supervisor pid>-<4 hex digits>``; ``oomemu`` is the default
prefix (``OOMEMU_PREFIX`` changes it).
"""

from __future__ import annotations

import os
import re
import secrets

# OOMEMU_PREFIX keeps separate worlds apart (the test suite uses its own).
PREFIX = os.environ.get("OOMEMU_PREFIX", "oomemu")
if not PREFIX.replace("_", "").replace("-", "").isalnum():
    raise SystemExit(f"OOMEMU_PREFIX={PREFIX!r}: use letters, digits, '-' or '_'")
SHM_DIR = "/dev/shm"

_RUN_ID = re.compile(r"^(\d+)-([0-9a-f]{4})$")
_ENTRY = re.compile(r"^(?:sem\.)?" + re.escape(PREFIX) + r"\.(\d+-[0-9a-f]{4})\.(.+)$")


def new_run_id(pid: int | None = None) -> str:
    return f"{os.getpid() if pid is None else pid}-{secrets.token_hex(2)}"


def run_pid(run_id: str) -> int | None:
    """The supervisor pid encoded in a run id, or None if it is not one."""
    m = _RUN_ID.match(run_id)
    return int(m.group(1)) if m else None


def zone(run_id: str) -> str:
    return f"/{PREFIX}.{run_id}.zone"


def zone_lock(run_id: str) -> str:
    return f"/{PREFIX}.{run_id}.zone_lock"


def start(run_id: str) -> str:
    return f"/{PREFIX}.{run_id}.start"


def mm(run_id: str, index: int) -> str:
    return f"/{PREFIX}.{run_id}.mm.{index}"


def mmap_sem(run_id: str, index: int) -> str:
    return f"/{PREFIX}.{run_id}.mmap_sem.{index}"


def events(run_id: str) -> str:
    """The run's event FIFO (a path, not a POSIX IPC name): workers and ``inject`` write to it."""
    return os.path.join(SHM_DIR, f"{PREFIX}.{run_id}.events")


def oom_reply(run_id: str, index: int) -> str:
    return f"/{PREFIX}.{run_id}.oom_reply.{index}"


def lock(run_id: str, name: str) -> str:
    return f"/{PREFIX}.{run_id}.lock.{name}"


def shm_path(posix_name: str, semaphore: bool) -> str:
    """Where a POSIX name lives on Linux (glibc puts semaphores in sem.*)."""
    base = posix_name.lstrip("/")
    return os.path.join(SHM_DIR, ("sem." if semaphore else "") + base)


def leftovers(shm_dir: str = SHM_DIR) -> dict[str, list[str]]:
    """Map run id -> file names in ``shm_dir`` that belong to it."""
    runs: dict[str, list[str]] = {}
    try:
        entries = sorted(os.listdir(shm_dir))
    except FileNotFoundError:
        return runs
    for entry in entries:
        m = _ENTRY.match(entry)
        if m:
            runs.setdefault(m.group(1), []).append(entry)
    return runs
