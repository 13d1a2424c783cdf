"""The fork server: a template process that makes the run's workers by cloning itself.

A worker used to be a new interpreter (``python -m workers.task``), about 25 ms
and 11 MiB of its own each. The template is that interpreter, started once per
run with everything a worker needs imported; for each request it clones itself,
and the clone becomes the worker at once (``workers.task.become_worker``).

    python -m workers.task --run RUN --index template --parent PID --fd FD --serve REQ,REP --mode clone

How, and the invariants:

* **Single-threaded.** The template is a fresh interpreter that starts no
  thread: a clone of a process has only the calling thread, and any lock
  another thread held would stay held in the clone forever.
* **The supervisor's children.** The clone is made with ``CLONE_PARENT``: its
  parent is the template's parent, the supervisor, which thus holds a pidfd
  on it, reaps it with ``waitid`` and learns its exit status, exactly as for a
  child it forked itself. The template need not outlive the spawning. Where
  clone(2)'s number is not known (``--mode fork``), a worker is forked twice
  and reparented to the supervisor, a child subreaper while spawning
  (:func:`fork_reparented`).
* **Dies with the run.** ``PR_SET_PDEATHSIG`` is not inherited across a
  clone and is tied to the parent *thread*: each worker arms it again (its
  parent is now the supervisor's thread that started the template) and then
  checks that its parent is still the supervisor (else it died before the
  prctl, and the worker exits). The template arms its own the same way.
* **Python's fork protocol.** CPython's fork hooks run around the clone
  (``PyOS_BeforeFork``, ``PyOS_AfterFork_Child``, ``PyOS_AfterFork_Parent``) as
  ``os.fork()`` runs them; ``gc.freeze()`` first, so that the collector does not
  write to (and so copy) every object the clones share with the template.
* **Known by its command line.** A clone's ``/proc/PID/cmdline`` is the
  template's: the template writes the worker's index over its ``template``
  placeholder, in place, just before the clone (and puts it back after the
  last), so ``ps`` and ``oomemu cleanup`` see ``workers.task --run RUN
  --index N``, as before.
* **The clone does as little as it can.** Every page a clone writes is a
  copy-on-write fault (a few microseconds each on a VM); what every worker
  would do alike is done once in the template before the first clone: the
  signal mask and the oom_score_adj (inherited), every WorkerSpec decoded,
  the run's zone and run-wide semaphores opened (``workers.task.prepare``).
  The supervisor gives the template a higher priority where it may (the
  template is the start-up's serial part); each clone takes back the
  supervisor's first thing.

The protocol: every request, ``INDEX SPEC\\n`` (SPEC: ``WorkerSpec.to_line()``),
in on REQ until EOF; then one ``INDEX PID\\n`` out on REP for each worker, as it
is made, or ``! ERRNO WHAT\\n`` if it fails (ERRNO 0: not the machine's doing); then
the template exits. A request stream not ending in a newline (the supervisor was
interrupted) makes no worker.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import time

from emulator.runtime.forkserver import CLONE_PARENT, clone_syscall

#: What the template's ``--index`` says; a worker writes its index over it (so at most
#: this many digits).
PLACEHOLDER = "template"

# Called through PyDLL, which keeps the GIL (a CDLL call lets go of it): between
# PyOS_BeforeFork and PyOS_AfterFork_* the interpreter stays as os.fork() leaves it.
_syscall = ctypes.PyDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long


def _clone_args() -> tuple | None:
    number = clone_syscall()
    if number is None:
        return None
    zero = ctypes.c_long(0)
    return ctypes.c_long(number), ctypes.c_long(CLONE_PARENT | signal.SIGCHLD), zero, zero, zero, zero


_CLONE_ARGS = _clone_args()     # made once: each object the template makes per clone is a page to copy


def clone_parent() -> int:
    """fork(), but the child's parent is our parent (CLONE_PARENT). Returns 0 in the
    child, the child's pid in the caller; OSError if the kernel refuses.

    The raw syscall skips glibc's fork bookkeeping in the child: its cached thread id
    is still the template's (``pthread_getcpuclockid(pthread_self())`` fails) and no
    robust-futex list is registered. Nothing a worker uses depends on either (no
    thread-id-addressed pthread call, no robust, PI or error-checking mutex); a worker
    that needed one would have to be made by :func:`fork_reparented` instead."""
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _syscall(*_CLONE_ARGS)
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone(CLONE_PARENT): {os.strerror(err)}")
    return pid


def fork_reparented() -> int:
    """Where clone(CLONE_PARENT) is not known (another architecture, a 32-bit userland):
    fork twice and let the middle process exit, so that the worker is reparented to the
    supervisor, which made itself a child subreaper for the spawning. Returns as
    clone_parent does; the worker returns once it is no longer the middle's child (its
    new parent is checked by the caller, after PR_SET_PDEATHSIG: were the supervisor gone,
    it would be init or another subreaper)."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(r)
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            while os.getppid() == me:                 # the middle exits at once
                time.sleep(0.0001)
            return 0
        os.write(w, b"%d" % pid)
        os._exit(0)
    os.close(w)
    try:
        pid = int(os.read(r, 32) or b"-1")
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    if pid < 0:
        raise OSError(0, "fork: the middle process died")
    return pid


class IndexSlot:
    """The ``template`` after ``--index`` in our own argv memory, which /proc/PID/cmdline
    shows. The template writes each worker's index there just before cloning it, so the
    clone starts with its own command line (NUL-padded: the length cannot change)."""

    def __init__(self):
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2:].split()
        arg_start = int(fields[48 - 3])               # field 48 of proc(5); fields[0] is field 3
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read()
        marker = b"\0--index\0" + PLACEHOLDER.encode() + b"\0"
        at = cmdline.find(marker)
        self.address = None if at < 0 else arg_start + at + len(b"\0--index\0")

    def write(self, text: str) -> None:
        data = text.encode()
        if self.address is not None and len(data) <= len(PLACEHOLDER):
            ctypes.memmove(self.address, data.ljust(len(PLACEHOLDER), b"\0"), len(PLACEHOLDER))


def serve(run_id: str, requests: int, replies: int, prepare, become_worker, mode: str = "clone") -> int:
    """The template's life. Read every request (until EOF), ``prepare(run_id, [(index,
    spec_line)])`` once, which returns ``(index, arg)`` pairs (what needs computing or opening
    for every worker alike is done there, before the first clone, in memory of the template's
    own), then for each pair make a worker (``mode``: "clone", or "fork" for
    :func:`fork_reparented`) and tell its pid. A worker calls ``become_worker(index, arg)``,
    which never returns (os._exit). A request stream cut short (the supervisor was
    interrupted) makes no worker; a failure is one line on REP (``! ERRNO WHAT``), never a
    traceback on the user's terminal."""
    data = bytearray()
    while chunk := os.read(requests, 1 << 16):
        data += chunk
    os.close(requests)
    if not data.endswith(b"\n"):
        return 1                                      # none, or cut short: the run is ending
    try:
        lines = [line.partition(b" ") for line in bytes(data).split(b"\n") if line]
        work = prepare(run_id, [(int(index), spec) for index, _, spec in lines])
    except Exception as e:                            # the run's objects went away, or garbage
        _tell(replies, b"! %d %s\n" % (getattr(e, "errno", None) or 0,
                                       f"{type(e).__name__}: {e}".encode(errors="replace")[:300]))
        return 2
    del data, lines
    make = clone_parent if mode == "clone" else fork_reparented
    slot = IndexSlot()
    gc.collect()
    gc.freeze()
    try:
        for index, arg in work:
            slot.write(str(index))
            try:
                pid = make()
            except OSError as e:                      # EAGAIN, ENOMEM: the machine's limits
                _tell(replies, b"! %d %s\n" % (e.errno or 0, (e.strerror or str(e)).encode()[:200]))
                return 2
            if pid == 0:
                os.close(replies)
                become_worker(index, arg)
                os._exit(1)                           # not reached
            if not _tell(replies, b"%d %d\n" % (index, pid)):
                return 1                              # the supervisor gave up on us: it kills the clones
    finally:
        slot.write(PLACEHOLDER)
    return 0


def _tell(fd: int, data: bytes) -> bool:
    """Write it all; False if the supervisor no longer reads (it was interrupted)."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except BrokenPipeError:
        return False
    return True
