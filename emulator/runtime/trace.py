"""Trace events: what happened in a run, one JSON object per line.

Event names follow include/trace/events/oom.h where the kernel has one
(``mark_victim``, ``wake_reaper``, ``start_task_reaping``,
``finish_task_reaping``, ``skip_task_reaping``, ``oom_score_adj_update``),
and include/trace/events/mmap_lock.h (``mmap_lock_start_locking``,
``mmap_lock_acquire_returned``, ``mmap_lock_released``), and say what they
are otherwise (``oom_kill``, ``oom_abort``,
``reap_deadline``, ``oom_skip_set``, ``exit_mmap_start``, ``exit_mmap_done``,
``alloc_stall``, ``alloc_ok``, ``panic``, ``inject``; and ``run_start``,
``run_end``, ``task_state`` (R or D), ``handover``, ``exited``, ``lag``,
``mmput_wait``).

Every event carries ``t`` (emulated seconds since time 0), ``ev``, ``pid``,
``task`` and ``free_kb`` (the zone's free memory right then), plus fields of
its own.
"""

from __future__ import annotations

import json
import threading

from ..errors import UsageError

KERNEL_EVENTS = ("mark_victim", "wake_reaper", "start_task_reaping", "finish_task_reaping",
                 "skip_task_reaping", "oom_score_adj_update", "mmap_lock_start_locking",
                 "mmap_lock_acquire_returned", "mmap_lock_released", "mm_vmscan_direct_reclaim_begin",
                 "mm_vmscan_direct_reclaim_end", "mm_vmscan_memcg_reclaim_begin", "mm_vmscan_memcg_reclaim_end",
                 "mm_vmscan_throttled", "writeback_start", "writeback_written")
OOMEMU_EVENTS = ("oom_kill", "oom_abort", "reap_deadline", "oom_skip_set", "exit_mmap_start",
                 "exit_mmap_done", "alloc_stall", "alloc_ok", "panic", "inject", "run_start",
                 "run_end", "task_state", "handover", "exited", "run_stopped", "lag", "mmput_wait",
                 "shm_unlink", "shm_truncate", "shmem_freed", "mm_sharer_killed", "mm_pin", "mm_unpin",
                 "refault", "swap_out", "swap_in", "user_kill", "process_mrelease", "daemon_log")


class Tracer:
    """Collects events; writes them to ``path`` as JSON lines if given. Thread-safe."""

    def __init__(self, path: str | None, now, free_kb):
        self._now, self._free_kb = now, free_kb
        self._lock = threading.Lock()
        self.events: list[dict] = []
        self._file = None
        if path:
            try:
                self._file = open(path, "w", buffering=1)      # line by line: tail -f works
            except OSError as e:
                raise UsageError(f"--trace {path}: {e.strerror}") from None

    def emit(self, ev: str, pid: int = 0, task: str = "", t: float | None = None, **fields) -> None:
        rec = {"t": round(self._now() if t is None else t, 6), "ev": ev, "pid": pid, "task": task,
               "free_kb": self._free_kb()}
        rec.update(fields)
        with self._lock:
            self.events.append(rec)
            if self._file is not None:
                self._file.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def load_trace(path: str) -> list[dict]:
    """Read a trace file; a line that is not an event is a usage error naming the line."""
    events = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise UsageError(f"{path}:{n}: not a JSON line") from None
                if (not isinstance(rec, dict) or not isinstance(rec.get("ev"), str)
                        or isinstance(rec.get("t"), bool) or not isinstance(rec.get("t"), (int, float))):
                    raise UsageError(f"{path}:{n}: not an oomemu trace event")
                events.append(rec)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a trace file (not UTF-8 text)") from None
    if not events:
        raise UsageError(f"{path}: no events")
    return events
