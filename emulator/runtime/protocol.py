"""The wire protocol between the supervisor and its workers, defined once.

Both sides import this module and nothing else to talk:

* :class:`WorkerSpec`: the record a worker is started with (``--spec``):
  its layout, its steps, and the policy's :class:`ExitMmapRules`. It
  crosses as JSON, field by field (:func:`to_wire`/:func:`from_wire` walk
  the dataclasses and enums), so neither side spells a key by hand.
* :class:`Event`: the kinds of message on the run's event FIFO, one JSON
  line each (``ev`` the kind, ``i`` the task index, ``t`` the run's
  emulated time it happened at, then the kind's own fields); :func:`encode` and
  :func:`decode`. Workers write them, and so does ``oomemu inject``
  (``INJECT``). Every line is below PIPE_BUF, so lines never interleave.
* The signals: :data:`SIGKILL_EMULATED` (the OOM killer's SIGKILL, which a
  task acts on only at a killable point) and :data:`SIGWAKE` (a command is
  waiting in the mm's mailbox).
"""

from __future__ import annotations

import base64
import json
import pickle
import signal
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..kernel.policies.base import ExitMmapRules
from ..scenario import StepSpec

SIGKILL_EMULATED = signal.SIGUSR1     # blocked in workers: pending until a killable point
SIGWAKE = signal.SIGUSR2              # "there is a command in your mailbox" (oomemu inject alloc)

class Event(StrEnum):
    """What a message on the event FIFO says. Fields besides ``ev``, ``i`` and ``t``:"""
    READY = "ready"                   # the worker faulted in its VMAs: pid
    FAULT = "fault"                   # its last words before dying of a fault: what, environment
    STATE = "state"                   # entered or left D state: state ("D" or "R")
    ALLOC_STALL = "alloc_stall"       # an allocation failed for the first time: pages, where, memcg
    OOM = "oom"                       # reclaim, then out_of_memory() if it must; it waits on oom_reply
                                      # (then retries at the mm's oom_retry_at): pages, where, memcg
                                      # (GLOBAL or MEMCG, and the memcg over its limit: zone.Short),
                                      # stall_monotonic (time.monotonic() when the charge failed)
    ALLOC_OK = "alloc_ok"             # the allocation succeeded: pages, stalled
    STEPS_DONE = "steps_done"         # every step of the scenario is done
    EXITING = "exiting"               # do_exit began: fatal (the emulated SIGKILL, or its own exit)
    HANDOVER = "handover"             # exit_mmap marked the mm MMF_OOM_HANDOVER
    OOM_SKIP = "oom_skip"             # exit_mmap set MMF_OOM_SKIP: by, where
    EXIT_MMAP_START = "exit_mmap_start"   # victim
    EXIT_MMAP_DONE = "exit_mmap_done"     # freed_kb
    EXITED = "exited"                 # the mm is gone; the process exits next
    LATE = "late"                     # the task woke late for something due, the worst so far: late_ms, where
    MMAP_LOCK = "mmap_lock"           # a lock event on an mmap_sem: what ("start_locking",
                                      # "acquire_returned", "released"), mm (its task's index),
                                      # write, success (acquire_returned: false if the mm was gone)
    MMPUT_WAIT = "mmput_wait"         # the exit waits for other tasks' references to its mm: users
    SHM = "shm"                       # shm_unlink or shm_truncate, please; it waits on oom_reply: op, name
    MM_PIN = "mm_pin"                 # an mm_pin step: what ("mmget_not_zero", "mmput"), mm (the mm's
                                      # task index), success (mmget_not_zero: false if the mm was gone)
    INJECT = "inject"                 # from ``oomemu inject``: action, what, by (its pid)
    KILL = "kill"                     # from a user-space killer (``oomemu kill``, a daemon), written
                                      # before its signal goes: sig ("SIGKILL", "SIGTERM"), by, comm
    MRELEASE = "mrelease"             # a process_mrelease() done in its caller's context: by, comm,
                                      # result ("" or the errno's name), freed_kb
    DAEMON = "daemon"                 # a line of the run's user-space daemon's log (index -1): line, by, comm
    SLEEP = "sleep"                   # a sleep step begins (PSI: asleep): until (its end), or -1: idle
                                      # until an event (after an injected command)
    TOUCH = "touch"                   # a touch step reached pages of a file VMA that reclaim took:
                                      # vma, pages (of the VMA to be resident); it waits on oom_reply,
                                      # then until its oom_retry_at (the refault's read)


@dataclass(frozen=True)
class Message:
    """One decoded line of the event FIFO."""
    kind: Event
    index: int                        # the task's index (-1: none, for an injection into a lock)
    at: float                         # the run's emulated time it happened at (``t`` on the wire)
    fields: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


class ProtocolError(ValueError):
    """A line on the event FIFO that is not a message of this protocol."""


def encode(kind: Event, index: int, t: float, **fields) -> bytes:
    """One line for the event FIFO."""
    return (json.dumps({"ev": str(kind), "i": index, "t": t, **fields}, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> Message:
    """A line of the event FIFO as a :class:`Message`; ProtocolError if it is not one."""
    try:
        rec = json.loads(line)
        kind = Event(rec.pop("ev"))
        index, t = rec.pop("i"), rec.pop("t")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ProtocolError(f"not an event: {bytes(line[:80])!r} ({e})") from None
    if isinstance(index, bool) or not isinstance(index, int) or isinstance(t, bool) \
            or not isinstance(t, (int, float)):
        raise ProtocolError(f"not an event: {bytes(line[:80])!r} (index or time)")
    return Message(kind, index, float(t), rec)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to run its task; built by the supervisor, rebuilt by the worker."""
    speed: float                          # emulated seconds per real second
    jiffy_s: float                        # emulated seconds between allocation retries
    locks: tuple[str, ...]                # the run's named locks, to open
    initial_pages: tuple[int, ...]        # pages to fault in, per VMA, before time 0
    grow_vma: int                         # the VMA that ``alloc`` grows
    pgtables_pages: int                   # page tables to populate before time 0
    others: dict[str, int]                # task name -> index of its mm's owner, of tasks whose mmap_sem
                                          # (or mm: mm_pin) a step takes
    mm_index: int                         # the task whose mm this task uses: its own index, or the
                                          # owner's if it shares one (CLONE_VM); charges go to that task
    mm_shared: bool                       # several processes use the mm: faults are serialised
                                          # (Mm.shared_fault)
    exit_unmap_ms_per_mb: float
    exit_free_pgtables_ms: float
    exit_mmap: ExitMmapRules              # the policy's rules for this task's exit_mmap
    steps: tuple[StepSpec, ...]

    def to_line(self) -> bytes:
        """For the fork server's request pipe (private to the run: only the supervisor
        writes it): a pickle, in base64. Unpickling runs in C, where decoding the JSON
        form runs Python code and so writes (copy-on-write) some 500 kB of the template's
        memory in each worker."""
        return base64.b64encode(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def from_line(cls, line: bytes) -> WorkerSpec:
        spec = pickle.loads(base64.b64decode(line))
        if not isinstance(spec, cls):
            raise ProtocolError(f"expected a {cls.__name__}, got {type(spec).__name__}")
        return spec
