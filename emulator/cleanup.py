"""``oomemu cleanup``: remove what runs whose supervisor is gone left behind.

A run's objects are found by name (see ``emulator.names``); its supervisor
by the pid and start time recorded in the zone. A run whose supervisor is
alive is left alone.
"""

from __future__ import annotations

import os
import signal

import psutil

from . import names
from .zone import Zone


def supervisor_alive(run_id: str) -> bool:
    """Is the process that created this run still there (same pid, same start time)?"""
    try:
        facts = Zone(run_id).facts()
        pid, ctime = facts.supervisor_pid, facts.supervisor_ctime
    except Exception:
        pid, ctime = names.run_pid(run_id), None
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        return ctime is None or abs(p.create_time() - ctime) < 1.0
    except psutil.Error:
        return False


def run_workers(run_id: str) -> list[psutil.Process]:
    """Worker processes of a run, found by their command line."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "workers.task" in cmd and "--run" in cmd and run_id in cmd:
            found.append(p)
    return found


def cleanup(shm_dir: str = names.SHM_DIR) -> list[str]:
    """Remove leftovers of dead runs; return one line per thing removed."""
    done: list[str] = []
    for run_id, entries in names.leftovers(shm_dir).items():
        if supervisor_alive(run_id):
            continue
        for p in run_workers(run_id):
            try:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=5)
                done.append(f"killed worker {p.pid} of run {run_id}")
            except psutil.Error:
                pass
        for entry in entries:
            try:
                os.unlink(os.path.join(shm_dir, entry))
                kind = "semaphore" if entry.startswith("sem.") else "segment"
                done.append(f"removed {kind} {os.path.join(shm_dir, entry)}")
            except FileNotFoundError:
                pass
    return done
