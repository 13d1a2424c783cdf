"""One task of a host run: a real process that does, for real, what its scenario task says.

Started by the host run (``emulator.host.run``) as ``python -m
emulator.host.task --ctl FD --spec JSON``; FD is its end of a socketpair with
the run, on which both sides write one JSON object per line. The life of a
task, each stage waiting for the run's word so that the run controls who
touches what first (page cache and shmem are charged to the memcg of the
first process that touches a page):

1. ``spawned``, then wait for ``go``: meanwhile the run has put us in our
   memory cgroup and set our oom_score_adj.
2. Map and touch the initial VMAs and page tables, say ``ready``, wait for
   ``start``: time 0 of the run.
3. Do the steps, saying what matters to the verdict (``alloc``/``alloc_done``,
   ``busy`` then wait for ``ack``, ``steps_done``); then wait to be killed.

Nothing here catches the kernel's SIGKILL: an OOM kill ends the process where
it stands, as it would any program. The run learns of it from the kernel's
log and of the death from a pidfd.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import signal
import socket
import sys
import threading
import time

PAGE = mmap.PAGESIZE
MB = 1 << 20
CHUNK = MB                        # an allocation touches its pages 1 MB at a time, as faults come
PMD_SPAN = 2 * MB                 # one page-table page maps 2 MB (x86-64, 4 KB pages)
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_FILL = b"\xa5" * CHUNK


def _address(m: mmap.mmap) -> int:
    buf = (ctypes.c_char * 1).from_buffer(m)
    try:
        return ctypes.addressof(buf)
    finally:
        del buf


def _mlock(m: mmap.mmap, length: int) -> None:
    if _libc.mlock(ctypes.c_void_p(_address(m)), ctypes.c_size_t(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mlock: {os.strerror(e)}")


def touch_write(m: mmap.mmap, start: int, length: int) -> None:
    """Write every page of [start, start+length): anon or dirty page cache, charged here."""
    off, end = start, start + length
    while off < end:
        n = min(CHUNK, end - off)
        m[off:off + n] = _FILL[:n]
        off += n


def touch_read(m: mmap.mmap, length: int) -> int:
    """Read one byte of every page (page cache: clean, charged to whoever reads it first)."""
    total = 0
    for off in range(0, length, PAGE):
        total += m[off]
    return total


class HostTask:
    def __init__(self, spec: dict, ctl: socket.socket):
        self.spec = spec
        self.ctl = ctl
        self.rfile = ctl.makefile("r")
        self.maps: list[mmap.mmap] = []     # kept: our memory stays mapped until we die
        self.shm_fds: dict[str, int] = {}    # the shmem files we map, open
        self.vma_maps: list[mmap.mmap] = []  # the scenario's VMAs, in order (those of mb > 0)
        self.written: set[str] = set()       # tasks whose writer thread our steps set queueing
        self.busy_count = 0

    def send(self, ev: str, **fields) -> None:
        self.ctl.sendall((json.dumps({"ev": ev, **fields}) + "\n").encode())

    def expect(self, what: str) -> dict:
        line = self.rfile.readline()
        if not line:
            os._exit(3)                   # the run is gone
        msg = json.loads(line)
        if msg.get("ev") != what:
            raise RuntimeError(f"expected {what!r} from the run, got {msg!r}")
        return msg

    # -- memory -------------------------------------------------------------
    def map_vma(self, v: dict) -> None:
        kind, size = v["kind"], v["pages"] * PAGE
        if size == 0:
            return
        if kind == "anon":
            m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            touch_write(m, 0, size)
        else:
            fd = os.open(v["path"], os.O_RDWR)
            if kind == "shmem":
                self.shm_fds[v["path"]] = os.dup(fd)   # its shm_truncate works after an unlink too
            try:
                shared = kind in ("file_shared", "shmem")
                flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if shared else 0)
                m = mmap.mmap(fd, size, flags=flags, prot=prot)
            finally:
                os.close(fd)
            if kind == "shmem":
                touch_write(m, 0, size)            # tmpfs pages, charged to the first writer
            else:
                touch_read(m, size)                # clean page cache
                if v.get("dirty_pages"):
                    touch_write(m, 0, v["dirty_pages"] * PAGE)
        if v.get("mlocked"):
            _mlock(m, size)
        self.maps.append(m)
        self.vma_maps.append(m)

    def kvm_guest(self) -> None:
        """A KVM virtual machine whose guest memory is our first anon VMA: creating the VM
        registers KVM's mmu notifier on our mm, whose non-blocking invalidation (the
        reaper's) succeeds. No vCPU is needed."""
        import fcntl
        import struct
        KVM_CREATE_VM = 0xAE01
        KVM_SET_USER_MEMORY_REGION = 0x4020AE46          # _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)
        mapped = [v for v in self.spec["vmas"] if v["pages"]]          # vma_maps holds these, in order
        m = next((m for m, v in zip(self.vma_maps, mapped) if v["kind"] == "anon"), None)
        if m is None:
            raise RuntimeError("a KVM guest needs an anon VMA for its memory")
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        region = struct.pack("=IIQQQ", 0, 0, 0, len(m), _address(m))
        fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
        self.kvm_fds = (kvm, vm)                           # kept: the guest lives as long as we do

    def map_pgtables(self, pages: int) -> None:
        """``pages`` page-table pages and no rss: a sparse anonymous mapping read once per
        2 MB (each read maps the zero page, which needs a page-table page). THP off for it,
        or the huge zero page would need none."""
        if pages <= 0:
            return
        span = pages * PMD_SPAN
        m = mmap.mmap(-1, span, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000))
        m.madvise(mmap.MADV_NOHUGEPAGE)
        total = 0
        for off in range(0, span, PMD_SPAN):
            total += m[off]
        self.maps.append(m)

    def alloc(self, mb: float) -> None:
        size = round(mb * MB / PAGE) * PAGE
        if size <= 0:
            return
        self.send("alloc", pages=size // PAGE)
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.maps.append(m)
        touch_write(m, 0, size)                    # charged page by page: the OOM comes mid-way
        self.send("alloc_done")

    def busy(self, ms: float) -> None:
        """D state for ``ms``: a read of our FUSE file, answered when the run's gate for it
        opens (it sets it ``ms`` from now when we ask, and says so first)."""
        self.send("busy", ms=ms)
        self.expect("ack")
        fd = os.open(self.spec["fuse_path"], os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            os.pread(fd, PAGE, self.busy_count * MB)   # a page never read before: no page cache hit
        finally:
            os.close(fd)
        self.busy_count += 1

    # -- the life of the task ----------------------------------------------------
    def map_hold_page(self) -> int:
        """A page of our FUSE hold file, mapped and never touched: another task's read of it
        through /proc/PID/mem faults it in under our mmap_sem held for read, and waits."""
        fd = os.open(self.spec["hold_path"], os.O_RDONLY)
        try:
            m = mmap.mmap(fd, PAGE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)   # COW: untouched
        finally:
            os.close(fd)
        self.maps.append(m)
        return _address(m)

    def queue_writer(self, address: int) -> None:
        """A thread of ours that, on the run's word (a byte on our control socket's twin),
        calls mbind() on our hold page: it takes our mmap_sem for write, uninterruptibly,
        and so queues behind a reader (and blocks new ones) until it gets it."""
        SYS_mbind = 237                                  # x86-64
        wfd = self.spec["writer_fd"]

        def writer():
            while os.read(wfd, 1):
                _libc.syscall(SYS_mbind, ctypes.c_void_p(address), ctypes.c_size_t(PAGE), 0, None, 0, 0)
        threading.Thread(target=writer, daemon=True).start()

    def hold(self, task: str) -> None:
        """mmap_sem_down(task, read): a thread reads that task's hold page through its
        /proc/PID/mem; the read holds its mmap_sem for read (and a reference to its mm)
        until the run answers it at our mmap_sem_up."""
        self.send("hold", task=task)
        msg = self.expect("ack")

        def read():
            try:
                fd = os.open(f"/proc/{msg['pid']}/mem", os.O_RDONLY)
            except OSError:
                return                              # gone: mmget_not_zero failed
            try:
                os.pread(fd, 1, msg["address"])
            except OSError:
                pass
            finally:
                os.close(fd)
        threading.Thread(target=read, daemon=True).start()

    def run(self) -> None:
        self.send("spawned", pid=os.getpid())
        self.expect("go")
        self.map_pgtables(self.spec["pgtables_pages"])
        for v in self.spec["vmas"]:
            self.map_vma(v)
        if self.spec.get("kvm"):
            self.kvm_guest()
        address = self.map_hold_page() if self.spec.get("hold_path") else 0
        if self.spec.get("writer_fd") is not None:
            self.queue_writer(address)
        self.send("ready", address=address)
        self.expect("start")
        for step in self.spec["steps"]:
            op = step["op"]
            if op == "alloc":
                self.alloc(step["mb"])
            elif op == "sleep":
                time.sleep(step["ms"] / 1000)
            elif op == "busy":
                self.busy(step["ms"])
            elif op == "exit":
                self.send("exit")
                os._exit(0)
            elif op == "shm_unlink":
                try:
                    os.unlink(self.spec["objects"][step["name"]])
                except FileNotFoundError:
                    pass
            elif op == "shm_truncate":
                path = self.spec["objects"][step["name"]]
                if path in self.shm_fds:
                    os.ftruncate(self.shm_fds[path], 0)
                else:
                    os.truncate(path, 0)
            elif op == "mmap_sem_down" and step.get("mode") == "write":
                self.send("write", task=step["task"])     # a thread of that task's queues for it
                self.written.add(step["task"])
            elif op == "mmap_sem_down":
                self.hold(step["task"])
            elif op == "mmap_sem_up" and step["task"] in self.written:
                self.written.discard(step["task"])        # that thread lets go once it has it
            elif op == "mmap_sem_up":
                self.send("unhold", task=step["task"])
            else:
                raise RuntimeError(f"step {op} cannot be made real")
        self.send("steps_done")
        while True:
            signal.pause()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="emulator.host.task")
    p.add_argument("--ctl", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--spec", required=True)
    a = p.parse_args(argv)
    if _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0 or os.getppid() != a.parent:
        return 1                                   # the run died before we could tie ourselves to it
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    ctl = socket.socket(fileno=a.ctl)
    spec = json.loads(a.spec)
    PR_SET_NAME = 15
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(spec["name"].encode()[:15]), 0, 0, 0)   # the kernel's log names it
    task = HostTask(spec, ctl)
    try:
        task.run()
    except BaseException as e:                     # our fault or the machine's: say it, in one line
        try:
            task.send("fault", what=f"{type(e).__name__}: {e}"[:400])
        except OSError:
            pass
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
