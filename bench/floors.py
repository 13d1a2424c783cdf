"""The floors: what the operating system and Python charge for the same thing, measured
in the same run as the figure beside them (same machine, same load).

Each returns raw samples (seconds or bytes); ``bench.stats`` summarises them. Every
process started here is waited for, and every named semaphore is unlinked, whatever
happens.
"""

from __future__ import annotations

import os
import signal
import time

import posix_ipc
import psutil


def fork_exit_wait(n: int) -> list[float]:
    """Real seconds for each of ``n`` rounds of fork, _exit(0) in the child, waitpid in the
    parent, from this (Python) process: what starting and reaping a task costs at least."""
    out = []
    for _ in range(n):
        began = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        out.append(time.perf_counter() - began)
    return out


def forked_idle_uss() -> int:
    """USS (bytes) of a child forked from this Python process that does nothing but wait:
    the memory a task must have of its own, at least."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: say it is up, then block
        os.close(r)
        os.write(w, b".")
        try:
            while True:
                signal.pause()                    # until the parent's SIGKILL
        finally:
            os._exit(0)
    try:
        os.close(w)
        os.read(r, 1)                             # it is up
        return psutil.Process(pid).memory_full_info().uss
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _sem_name(what: str) -> str:
    return f"/oomemu_bench{os.getpid()}.{what}"


def sem_ping_pong(n: int) -> list[float]:
    """Real seconds of each of ``n`` round trips between this process and a forked one over
    two POSIX semaphores (posix_ipc): release ping, the other acquires it and releases pong,
    acquire pong. What one process waking another and hearing back costs at least."""
    ping = posix_ipc.Semaphore(_sem_name("ping"), posix_ipc.O_CREX, mode=0o600, initial_value=0)
    pong = posix_ipc.Semaphore(_sem_name("pong"), posix_ipc.O_CREX, mode=0o600, initial_value=0)
    pid = -1
    try:
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(n + 1):
                    ping.acquire()
                    pong.release()
            finally:
                os._exit(0)
        ping.release()                            # one round to wake the child up
        pong.acquire()
        out = []
        for _ in range(n):
            began = time.perf_counter()
            ping.release()
            pong.acquire()
            out.append(time.perf_counter() - began)
        return out
    finally:
        if pid > 0:
            os.waitpid(pid, 0)
        for sem in (ping, pong):
            sem.unlink()
            sem.close()


def timed_wait_lateness(n: int, timeout_s: float = 0.002) -> list[float]:
    """Real seconds past its timeout at which each of ``n`` timed waits on a POSIX
    semaphore that nobody releases (posix_ipc acquire(timeout)) returns: how late a
    thread that sleeps until a deadline wakes, at least."""
    sem = posix_ipc.Semaphore(_sem_name("timed"), posix_ipc.O_CREX, mode=0o600, initial_value=0)
    try:
        out = []
        for _ in range(n):
            began = time.perf_counter()
            try:
                sem.acquire(timeout_s)
            except posix_ipc.BusyError:
                pass
            out.append(max(0.0, time.perf_counter() - began - timeout_s))
        return out
    finally:
        sem.unlink()
        sem.close()
