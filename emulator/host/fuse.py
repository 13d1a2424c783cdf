"""A slow file system: FUSE over the raw /dev/fuse protocol, to put host tasks in real D states.

``SlowFs`` mounts a flat directory of zero-filled regular files and answers
every READ of a file only when that file's *gate* lets it through. A task that
reads such a file, or faults on a page of it mapped MAP_PRIVATE, waits in the
kernel for the reply in its own context (INIT is answered without
FUSE_ASYNC_READ); a task that preads /proc/PID/mem over such a page of another
process waits with that process's mmap_lock held for read
(docs/kernel-crosscheck.md, "D state and a slow page").

Why the waits are D and not S: until the server has answered one INTERRUPT
with ENOSYS, the kernel waits for a reply interruptibly (request_wait_answer:
S state, any signal cuts in); after that it sets fc->no_interrupt and every
wait is killable (D state), and a request the server has already read is
waited out uninterruptibly even by a SIGKILLed task. ``SlowFs`` provokes that
one INTERRUPT at mount (a ``cat`` of a private file, SIGKILLed while its READ
is held), so the first task of a run already waits in D state.

Requests are served by one daemon thread of the mounting process: it never
blocks on a gate (held READs wait in a list; it polls /dev/fuse, a wake pipe
and the earliest gate deadline), so no thread of the supervisor waits on it,
and if the process dies its fd closes, which aborts the connection
(fuse_dev_release): no task stays stuck behind a dead server.

Names: the mount point is ``<parent>/<PREFIX>.<run id>.fuse`` and the mount's
source is the same name, so ``cleanup_leftovers`` finds the mounts of dead
runs in /proc/self/mountinfo wherever they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import math
import os
import re
import select
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import EnvironmentProblem
from ..runtime import names
from . import fuse_abi as abi
from .fuse_abi import Opcode

MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 0x2
CAP_SYS_ADMIN = 21
FUSECTL_DIR = "/sys/fs/fuse/connections"
MAX_WRITE = 128 * 1024              # we never get WRITEs; the read buffer must still fit one
READ_BUFFER = MAX_WRITE + 64 * 1024
ATTR_VALID_S = 3600                 # attributes never change: let the kernel cache them
PRIME_TIMEOUT_S = 3.0               # bound on each step of provoking the first INTERRUPT
STOP_TIMEOUT_S = 3.0                # bound on waiting for the server thread to leave
OPEN, SHUT = -math.inf, math.inf    # a gate's "until": always passed / never (until open_gate)
_PRIME = ".prime"                   # the private file behind the first INTERRUPT (not listed)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mountpoint_name(run_id: str, prefix: str | None = None) -> str:
    """The mount point's base name (and the mount's source) for a run."""
    return f"{prefix or names.PREFIX}.{run_id}.fuse"


def fusectl_name(run_id: str, prefix: str | None = None) -> str:
    """Where fusectl is mounted for a moment when /sys/fs/fuse/connections is not."""
    return f"{prefix or names.PREFIX}.{run_id}.fusectl"


# -- the machine -----------------------------------------------------------------------

def check_environment() -> None:
    """Raise EnvironmentProblem (one line) unless this process can mount a FUSE file system."""
    if os.geteuid() != 0 and not _has_cap(CAP_SYS_ADMIN):
        raise EnvironmentProblem("host mode's FUSE file needs root (CAP_SYS_ADMIN to mount it)")
    try:
        with open("/proc/filesystems") as f:
            known = {line.split()[-1] for line in f if line.strip()}
    except OSError:
        known = set()
    if "fuse" not in known:
        raise EnvironmentProblem("host mode needs FUSE: 'fuse' is not in /proc/filesystems (modprobe fuse)")
    if not os.path.exists("/dev/fuse"):
        raise EnvironmentProblem("host mode needs FUSE: there is no /dev/fuse")


def _has_cap(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def _mount(source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                   data.encode() if data is not None else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount_lazy(target: str) -> bool:
    """umount2(MNT_DETACH); False if nothing was mounted there."""
    if _libc.umount2(target.encode(), MNT_DETACH) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    raise OSError(err, f"umount {target}: {os.strerror(err)}")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""
    point: str
    dev: str          # "major:minor"
    fstype: str
    source: str

    @property
    def minor(self) -> int:
        return int(self.dev.split(":")[1])


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[Mount]:
    """This mount namespace's mounts, innermost last."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            lf, rf = left.split(), right.split()
            if len(lf) >= 5 and len(rf) >= 2:
                out.append(Mount(_unescape(lf[4]), lf[2], rf[0], _unescape(rf[1])))
    return out


def abort_connection(minor: int, workdir: str, run_id: str) -> bool:
    """Write to /sys/fs/fuse/connections/<minor>/abort: every request of that connection
    ends with ENOTCONN and no new one can wait. If fusectl is not mounted there, mount it
    for a moment on ``workdir/fusectl_name(run_id)``. False if there was no such connection
    (its superblock is gone: nothing can be waiting on it)."""
    if any(m.fstype == "fusectl" and m.point == FUSECTL_DIR for m in mounts()):
        return _write_abort(os.path.join(FUSECTL_DIR, str(minor)))
    ctl = os.path.join(workdir, fusectl_name(run_id))
    try:
        os.mkdir(ctl, 0o700)
    except FileExistsError:
        pass
    try:
        _mount(fusectl_name(run_id), ctl, "fusectl", MS_NOSUID | MS_NODEV, None)
        try:
            return _write_abort(os.path.join(ctl, str(minor)))
        finally:
            _umount_lazy(ctl)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(ctl)


def _write_abort(conn: str) -> bool:
    try:
        with open(os.path.join(conn, "abort"), "w") as f:
            f.write("1")
        return True
    except FileNotFoundError:
        return False


# -- the server ------------------------------------------------------------------------

@dataclass
class _File:
    name: str
    nodeid: int
    size: int
    until: float = OPEN        # READs are answered once time.monotonic() >= until


@dataclass
class _HeldRead:
    unique: int
    file: _File
    size: int
    pid: int                   # the reading thread's id (fuse_in_header.pid is task_pid, a TID)


class SlowFs:
    """A mounted FUSE directory of zero-filled files whose READs wait on per-file gates.

    Invariants: every READ is answered exactly once, by the server thread, when its
    file's gate is open (or with EIO on a bad request); the server never blocks on
    a gate; ``close()`` leaves no mount, no directory, no waiting task, and may be
    called any number of times, also after a partial set-up."""

    #: bound on each of close()'s waits (the server answering what it holds; its thread leaving)
    stop_timeout = STOP_TIMEOUT_S

    def __init__(self, mountpoint_parent: str, run_id: str,
                 on_read: Callable[[str, int], None] | None = None,
                 _clock: Callable[[], float] = time.monotonic):
        check_environment()
        self.run_id = run_id
        self.parent = os.path.abspath(mountpoint_parent)
        self.path = os.path.join(self.parent, mountpoint_name(run_id))
        self.on_read = on_read
        #: True once the kernel waits on this connection killably (D state), see the module doc;
        #: False if provoking the first INTERRUPT failed: reads then wait in S state
        self.d_state_waits = False
        #: exceptions the server met (a failing on_read included); the server goes on
        self.errors: list[BaseException] = []
        self._clock = _clock
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._by_node: dict[int, _File] = {}
        self._held: list[_HeldRead] = []
        self._interrupts = 0
        self._changed = threading.Condition(self._lock)   # notified when a READ is held or answered, on INTERRUPT
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._mounted = False
        self._made_dir = False
        self._minor: int | None = None
        self._closed = False
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- set-up
    def _start(self) -> None:
        try:
            os.mkdir(self.path, 0o755)
        except FileExistsError:
            raise EnvironmentProblem(f"{self.path} exists: another run's? (oomemu cleanup)") from None
        self._made_dir = True
        try:
            self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise EnvironmentProblem(f"host mode needs FUSE: cannot open /dev/fuse: {e.strerror}") from None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        opts = f"fd={self._fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},allow_other"
        try:
            _mount(mountpoint_name(self.run_id), self.path, "fuse", MS_NOSUID | MS_NODEV, opts)
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EACCES):
                raise EnvironmentProblem(f"host mode cannot mount its FUSE file ({e.strerror}): "
                                         "it needs root or CAP_SYS_ADMIN") from None
            raise
        self._mounted = True
        self._minor = next((m.minor for m in mounts() if m.point == self.path), None)
        self._thread = threading.Thread(target=self._serve, name=f"slowfs-{self.run_id}", daemon=True)
        self._thread.start()
        self._add(_PRIME, 4096, SHUT)
        self._prime()

    def _prime(self) -> None:
        """Make the kernel wait killably (D state) on this connection: hold one READ,
        SIGKILL its reader so that the kernel sends an INTERRUPT, answer it ENOSYS."""
        proc = subprocess.Popen(["cat", os.path.join(self.path, _PRIME)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
        try:
            with self._lock:
                self._changed.wait_for(lambda: any(h.pid == proc.pid for h in self._held), PRIME_TIMEOUT_S)
                held = any(h.pid == proc.pid for h in self._held)
            if held:
                proc.kill()
                with self._lock:
                    self.d_state_waits = self._changed.wait_for(lambda: self._interrupts > 0, PRIME_TIMEOUT_S)
        finally:
            self.open_gate(_PRIME)
            proc.kill()
            try:
                proc.wait(PRIME_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                if self._minor is not None:
                    abort_connection(self._minor, self.parent, self.run_id)
                proc.wait(PRIME_TIMEOUT_S)

    # -- files and gates
    def add_file(self, name: str, size_bytes: int) -> str:
        """A regular file of ``size_bytes`` zero bytes, its gate open; returns its path.
        ``name``: letters, digits, '.', '-', '_' (not starting with '.')."""
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}", name):
            raise ValueError(f"bad file name {name!r}")
        if size_bytes < 0:
            raise ValueError("size_bytes < 0")
        self._add(name, size_bytes, OPEN)
        return os.path.join(self.path, name)

    def _add(self, name: str, size: int, until: float) -> None:
        with self._lock:
            if name in self._files:
                raise ValueError(f"{name} exists")
            f = _File(name, abi.FUSE_ROOT_ID + 1 + len(self._files), size, until)
            self._files[name], self._by_node[f.nodeid] = f, f

    def gate(self, name: str, until_monotonic: float | None) -> None:
        """READs of ``name`` are answered from ``until_monotonic`` (time.monotonic() time) on;
        None: not until ``open_gate(name)``. READs already waiting follow the new gate."""
        with self._lock:
            self._files[name].until = SHUT if until_monotonic is None else until_monotonic
        self._wake()

    def open_gate(self, name: str) -> None:
        """Answer the READs of ``name`` that wait, and every later one at once."""
        self.gate(name, OPEN)

    def held(self, name: str | None = None) -> list[int]:
        """Pids of the tasks whose READs (of ``name``, or of any file) wait on a gate now."""
        with self._lock:
            return [h.pid for h in self._held if name is None or h.file.name == name]

    def wait_held(self, pid: int, timeout: float) -> bool:
        """Wait (bounded) until a READ of task ``pid`` waits on a gate; False on timeout."""
        with self._lock:
            return self._changed.wait_for(lambda: any(h.pid == pid for h in self._held), timeout)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # -- the loop
    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stopping:
                self._answer_due()
                with self._lock:
                    due = min((h.file.until for h in self._held), default=SHUT)
                timeout = None if due == SHUT else max(0, math.ceil((due - self._clock()) * 1000))
                for fd, ev in poller.poll(timeout):
                    if fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    elif ev & (select.POLLERR | select.POLLHUP):
                        return                      # the connection was aborted or unmounted
                    else:
                        if not self._read_request():
                            return
        except BaseException as e:                  # noqa: BLE001: kept for close() and the tests
            self.errors.append(e)
        finally:
            if self._stopping:          # close() left them to us (we outlived its wait)
                self._close_fds()

    def _read_request(self) -> bool:
        """Read and handle one request; False once the connection is gone."""
        try:
            buf = os.read(self._fd, READ_BUFFER)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            if e.errno == errno.ENOENT:             # the request was taken back (interrupted)
                return True
            if e.errno == errno.ENODEV:             # unmounted, or aborted
                return False
            raise
        length, opcode, unique, nodeid, uid, gid, pid, _, _ = abi.IN_HEADER.unpack_from(buf)
        body = buf[abi.IN_HEADER.size:length]
        handler = self._HANDLERS.get(opcode)
        try:
            if handler is None:
                self._reply(unique, -errno.ENOSYS)
            else:
                handler(self, unique, nodeid, pid, body)
        except (struct.error, KeyError, ValueError) as e:
            self.errors.append(e)
            if opcode not in abi.NO_REPLY:
                self._reply(unique, -errno.EIO)
        return opcode != Opcode.DESTROY

    def _reply(self, unique: int, error: int = 0, payload: bytes = b"") -> None:
        out = abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(payload), error, unique) + payload
        try:
            os.write(self._fd, out)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV):     # taken back, or connection gone
                raise

    def _answer_due(self) -> None:
        now = self._clock()
        with self._lock:
            due = [h for h in self._held if h.file.until <= now]
            self._held = [h for h in self._held if h.file.until > now]
        for h in due:
            self._reply(h.unique, 0, bytes(h.size))
        if due:
            with self._lock:
                self._changed.notify_all()

    # -- requests
    def _attr(self, f: _File | None) -> bytes:
        uid, gid = os.getuid(), os.getgid()
        if f is None:
            return abi.ATTR.pack(abi.FUSE_ROOT_ID, 0, 0, 0, 0, 0, 0, 0, 0,
                                 stat.S_IFDIR | 0o755, 2, uid, gid, 0, 4096, 0)
        return abi.ATTR.pack(f.nodeid, f.size, (f.size + 511) // 512, 0, 0, 0, 0, 0, 0,
                             stat.S_IFREG | 0o444, 1, uid, gid, 0, 4096, 0)

    def _node(self, nodeid: int) -> _File | None:
        """The file of a nodeid; None for the root. KeyError for an unknown one."""
        if nodeid == abi.FUSE_ROOT_ID:
            return None
        with self._lock:
            return self._by_node[nodeid]

    def _init(self, unique, nodeid, pid, body):
        major, minor, max_readahead, _flags, _ = abi.INIT_IN.unpack_from(body + bytes(abi.INIT_IN.size))
        if major != abi.FUSE_KERNEL_VERSION:
            self._reply(unique, 0, abi.INIT_OUT.pack(abi.FUSE_KERNEL_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            return
        # flags 0: no FUSE_ASYNC_READ (reads wait in the caller's context), nothing else either
        self._reply(unique, 0, abi.INIT_OUT.pack(abi.FUSE_KERNEL_VERSION,
                                                 min(minor, abi.FUSE_KERNEL_MINOR_VERSION),
                                                 max_readahead, 0, 16, 12, MAX_WRITE, 1, 0, 0, 0))

    def _lookup(self, unique, nodeid, pid, body):
        name = body.split(b"\0", 1)[0].decode(errors="replace")
        with self._lock:
            f = self._files.get(name) if nodeid == abi.FUSE_ROOT_ID else None
        if f is None:
            self._reply(unique, -errno.ENOENT)
            return
        self._reply(unique, 0, abi.ENTRY_OUT.pack(f.nodeid, 1, ATTR_VALID_S, ATTR_VALID_S, 0, 0) + self._attr(f))

    def _getattr(self, unique, nodeid, pid, body):
        self._reply(unique, 0, abi.ATTR_OUT.pack(ATTR_VALID_S, 0, 0) + self._attr(self._node(nodeid)))

    def _open(self, unique, nodeid, pid, body):
        # no FOPEN_KEEP_CACHE: each open drops the cached pages, so a new open reads (and waits) again
        self._node(nodeid)              # KeyError (EIO) for a node we never gave
        self._reply(unique, 0, abi.OPEN_OUT.pack(0, 0, 0))

    def _read(self, unique, nodeid, pid, body):
        f = self._node(nodeid)
        if f is None:
            self._reply(unique, -errno.EISDIR)
            return
        _fh, offset, size, *_ = abi.READ_IN.unpack_from(body)
        held = _HeldRead(unique, f, max(0, min(size, f.size - offset)), pid)
        with self._lock:
            self._held.append(held)
            self._changed.notify_all()
        if self.on_read is not None and f.name != _PRIME:
            try:
                self.on_read(f.name, pid)
            except Exception as e:                  # noqa: BLE001: a caller's bug must not stop the server
                self.errors.append(e)
        # answered by _answer_due, at once if the gate is open

    def _interrupt(self, unique, nodeid, pid, body):
        # ENOSYS: the kernel sets fc->no_interrupt and waits killably from now on (D state);
        # the interrupted READ stays held and its gate answers it
        with self._lock:
            self._interrupts += 1
            self._changed.notify_all()
        self._reply(unique, -errno.ENOSYS)

    def _readdir(self, unique, nodeid, pid, body):
        _fh, offset, size, *_ = abi.READ_IN.unpack_from(body)
        with self._lock:
            entries = [(abi.FUSE_ROOT_ID, 4, b"."), (abi.FUSE_ROOT_ID, 4, b"..")] + \
                [(f.nodeid, 8, f.name.encode()) for f in self._files.values() if f.name != _PRIME]
        out = b""
        for i, (ino, dtype, name) in enumerate(entries[offset:], start=offset):
            ent = abi.dirent(ino, i + 1, dtype, name)
            if len(out) + len(ent) > size:
                break
            out += ent
        self._reply(unique, 0, out)

    def _statfs(self, unique, nodeid, pid, body):
        self._reply(unique, 0, abi.KSTATFS.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0))

    def _ok(self, unique, nodeid, pid, body):
        self._reply(unique, 0)

    def _enosys(self, unique, nodeid, pid, body):
        self._reply(unique, -errno.ENOSYS)

    def _no_reply(self, unique, nodeid, pid, body):
        pass

    _HANDLERS = {
        Opcode.INIT: _init, Opcode.LOOKUP: _lookup, Opcode.GETATTR: _getattr,
        Opcode.OPEN: _open, Opcode.OPENDIR: _open, Opcode.READ: _read, Opcode.READDIR: _readdir,
        Opcode.RELEASE: _ok, Opcode.RELEASEDIR: _ok, Opcode.FLUSH: _ok, Opcode.ACCESS: _ok,
        Opcode.STATFS: _statfs, Opcode.INTERRUPT: _interrupt, Opcode.DESTROY: _ok,
        Opcode.GETXATTR: _enosys, Opcode.LISTXATTR: _enosys,
        Opcode.FORGET: _no_reply, Opcode.BATCH_FORGET: _no_reply,
    }

    # -- tear-down
    def _close_fds(self) -> None:
        """Close /dev/fuse (the last fd of the connection: the kernel aborts it) and the wake pipe."""
        with self._lock:
            fds, self._fd, self._wake_r, self._wake_w = (self._fd, self._wake_r, self._wake_w), -1, -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        """Open every gate, unmount (lazily), abort the connection if a task may still wait
        on it, stop the server, remove the mount point. Idempotent; a no-op in a forked child."""
        if self._closed or os.getpid() != self._owner:
            return
        self._closed = True
        with self._lock:
            for f in self._files.values():
                f.until = OPEN
        self._wake()
        thread = self._thread
        if thread is not None and thread.is_alive():
            with self._lock:        # the server answers what is held on its next turn
                self._changed.wait_for(lambda: not self._held or not thread.is_alive(), self.stop_timeout)
        if self._mounted:
            _umount_lazy(self.path)
            self._mounted = False
        self._stopping = True
        self._wake()
        if thread is not None:
            thread.join(self.stop_timeout)
        if thread is None or not thread.is_alive():
            self._close_fds()       # else the wedged thread closes them when it leaves
        # A wedged server, or a copy of the fd in a forked child, would keep the connection
        # (and a task waiting on it) alive: abort it if its superblock is still there.
        if self._minor is not None:
            abort_connection(self._minor, self.parent, self.run_id)
        if self._made_dir:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(self.path)
            self._made_dir = False

    def __enter__(self) -> SlowFs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- leftovers ---------------------------------------------------------------------------

def process_alive(pid: int) -> bool:
    """A process that still runs (a zombie or a dead one does not): read from /proc, not kill -0."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X", b"x")


def cleanup_leftovers(prefix: str | None = None, parents: tuple[str, ...] = ()) -> list[str]:
    """Remove the FUSE mounts (and fusectl mounts) of runs whose supervisor is dead: abort
    the connection, lazy-unmount, remove the mount point; also such mount points left
    unmounted in ``parents``. Returns one line per thing done."""
    prefix = prefix or names.PREFIX
    ours = re.compile(r"^" + re.escape(prefix) + r"\.([1-9]\d{0,6}-[0-9a-f]{4})\.(fuse|fusectl)$")
    done = []

    def dead_run(name: str) -> tuple[str, str] | None:
        m = ours.match(name)
        if not m:
            return None
        pid = names.run_pid(m.group(1))
        return (m.group(1), m.group(2)) if pid is not None and not process_alive(pid) else None

    for m in reversed(mounts()):
        run = dead_run(m.source) if m.fstype in ("fuse", "fusectl") else None
        if run is None or os.path.basename(m.point) != m.source:
            continue
        run_id, kind = run
        parent = os.path.dirname(m.point)
        if kind == "fuse":
            aborted = abort_connection(m.minor, parent, run_id)
            done.append(f"fuse: {'aborted the connection of and ' if aborted else ''}unmounted {m.point}")
        else:
            done.append(f"fuse: unmounted fusectl at {m.point}")
        _umount_lazy(m.point)
        with contextlib.suppress(OSError):
            os.rmdir(m.point)
            done.append(f"fuse: removed {m.point}")
    for parent in parents:
        try:
            entries = sorted(os.listdir(parent))
        except FileNotFoundError:
            continue
        for entry in entries:
            path = os.path.join(parent, entry)
            if dead_run(entry) and os.path.isdir(path) and not os.path.ismount(path):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                    done.append(f"fuse: removed {path}")
    return done
