"""The fork server: a template process that makes the run's workers by cloning itself.

A worker used to be a new interpreter (``python -m workers.task``), about 25 ms
and 11 MiB of its own each. The template is that interpreter, started once per
run with everything a worker needs imported; for each request it clones itself,
and the clone becomes the worker at once (``workers.task.become_worker``).

    python -m workers.task --run RUN --index template --parent PID --fd FD --serve REQ,REP

How, and the invariants:

* **Single-threaded.** The template is a fresh interpreter that starts no
  thread: a clone of a process has only the calling thread, and any lock
  another thread held would stay held in the clone forever.
* **The supervisor's children.** The clone is made with ``CLONE_PARENT``: its
  parent is the template's parent, the supervisor, which thus holds a pidfd
  on it, reaps it with ``waitid`` and learns its exit status, exactly as for a
  child it forked itself. The template need not outlive the spawning.
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
  would do alike is done once in the template: the hints for decoding a
  WorkerSpec, the signal mask, the oom_score_adj, all inherited.

The protocol, one line each way: ``INDEX SPEC_JSON\\n`` in on REQ, ``INDEX PID\\n``
out on REP; EOF on REQ: the template exits.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import signal

#: What the template's ``--index`` says; a worker writes its index over it (so at most
#: this many digits).
PLACEHOLDER = "template"

CLONE_PARENT = 0x00008000
# clone(2)'s number; its first argument is the flags everywhere, and the others
# (stack, tid pointers, tls) are all 0 here, so their order does not matter.
SYS_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def clone_parent() -> int:
    """fork(), but the child's parent is our parent (CLONE_PARENT). Returns 0 in the
    child, the child's pid in the caller; OSError if the kernel refuses."""
    number = SYS_CLONE.get(platform.machine())
    if number is None:
        raise OSError(0, f"the fork server does not know clone(2) on {platform.machine()}")
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    zero = ctypes.c_long(0)
    pid = _libc.syscall(ctypes.c_long(number), ctypes.c_long(CLONE_PARENT | signal.SIGCHLD),
                        zero, zero, zero, zero)
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone(CLONE_PARENT): {os.strerror(err)}")
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


def serve(run_id: str, parent: int, fd: int, requests: int, replies: int, become_worker, warm=None) -> int:
    """The template's life: clone a worker per request until EOF. ``become_worker(run_id,
    index, parent, fd, spec_json)`` is what a clone does; it never returns (os._exit).
    ``warm()`` first: whatever every worker would compute alike, computed once here."""
    if warm is not None:
        warm()
    slot = IndexSlot()
    gc.collect()
    gc.freeze()
    try:
        return _serve(run_id, parent, fd, requests, replies, become_worker, slot)
    finally:
        slot.write(PLACEHOLDER)


def _serve(run_id, parent, fd, requests, replies, become_worker, slot: IndexSlot) -> int:
    buf = b""
    while True:
        chunk = os.read(requests, 1 << 16)
        if not chunk:
            return 0
        buf += chunk
        *lines, buf = buf.split(b"\n")
        out = []
        for line in lines:
            index_s, _, spec = line.partition(b" ")
            index = int(index_s)
            slot.write(str(index))
            pid = clone_parent()
            if pid == 0:
                os.close(requests)
                os.close(replies)
                become_worker(run_id, index, parent, fd, spec.decode())
                os._exit(1)                           # not reached
            out.append(b"%d %d\n" % (index, pid))
        data = b"".join(out)
        while data:
            data = data[os.write(replies, data):]
