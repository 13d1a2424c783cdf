"""Opening what lies in /dev/shm under a run's name, trusting it only as far as checked.

/dev/shm is world-writable (with the sticky bit): any user can put a file, a
FIFO or a symlink under any free name, and a run's names are easy to guess.
So a reader (``oomemu runs``, ``ps``, ``inject``, ``stop``, ``cleanup``)
counts an object as the run's only if:

* it is opened without following a symlink (``O_NOFOLLOW``) and without
  blocking (``O_NONBLOCK``: a FIFO under a segment's name must not hang us),
  then ``fstat``'ed before a byte is read;
* it is of the right type (a regular file for segments and semaphores, a FIFO
  for the events file) and owned by the run's owner, who is the owner of the
  zone file (not whatever uid is written inside it);
* its layout is oomemu's: magic, size, fields in range. ``Mm`` and ``Zone``
  check that themselves when they open an existing segment.

The sticky bit also means that a file owned by the run's owner can be
removed or renamed only by that owner (or root): once checked, it stays the
file we checked unless its owner changes it.

Nothing here imports mm or zone: they import it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import stat
import sys

from . import names

OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# glibc's sem_t (what a named semaphore's file holds): 32 bytes on 64-bit, 16 on 32-bit
SEM_SIZE = 32 if sys.maxsize > 2**32 else 16


class Refused(Exception):
    """An object under a run's name that is not what oomemu put there (one line: why)."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path}: {why}")


def user(uid: int | None) -> str:
    """A uid as a user name where there is one (uid 54321 has none)."""
    if uid is None:
        return "another user"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "a device"


def check_stat(path: str, st: os.stat_result, owner: int | None, fmt: int = stat.S_IFREG,
               size: int | None = None) -> None:
    """Refused unless ``st`` is of type ``fmt``, owned by ``owner`` (None: anyone) and
    ``size`` bytes long (None: any size)."""
    if stat.S_IFMT(st.st_mode) != fmt:
        raise Refused(path, f"{_kind(st.st_mode)}, not {_kind(fmt)}")
    if owner is not None and st.st_uid != owner:
        raise Refused(path, f"owned by {user(st.st_uid)}, not by the run's owner {user(owner)}")
    if size is not None and st.st_size != size:
        raise Refused(path, f"{st.st_size} bytes, not {size}")


def owner_of(path: str) -> int | None:
    """The owner of ``path`` itself (a symlink's own), or None if it is not there."""
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def open_checked(path: str, owner: int | None, size: int | None = None, write: bool = False) -> int:
    """Open a regular file under a run's name; returns the fd (the caller closes it).

    FileNotFoundError if there is none; PermissionError if we may not open it;
    Refused if it is a symlink, not a regular file, not ``owner``'s, or not ``size`` bytes."""
    try:
        fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | OPEN_FLAGS)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refused(path, "a symbolic link") from None
        raise Refused(path, f"cannot be opened ({e.strerror})") from None
    try:
        check_stat(path, os.fstat(fd), owner, stat.S_IFREG, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_semaphore(posix_name: str, owner: int) -> None:
    """Refused unless the named semaphore's file is a regular file of ``owner``'s, of
    sem_t's size; FileNotFoundError if there is none.

    posix_ipc (glibc's sem_open) opens it by name itself, with O_NOFOLLOW but
    without these checks, and maps it: a file of 0 bytes would make the first
    touch a SIGBUS. The race that remains, between this lstat and sem_open,
    is open only to ``owner`` (and root): in sticky /dev/shm nobody else can
    remove or rename ``owner``'s file to put another in its place."""
    path = names.shm_path(posix_name, True)
    check_stat(path, os.lstat(path), owner, stat.S_IFREG, SEM_SIZE)


def open_fifo_for_write(path: str, owner: int) -> int | None:
    """The run's event FIFO, opened to write without blocking; None if it is not there,
    has no reader, or is not a FIFO of ``owner``'s."""
    try:
        fd = os.open(path, os.O_WRONLY | OPEN_FLAGS)
    except OSError:                      # ENXIO: no reader; ELOOP: a symlink; ENOENT
        return None
    try:
        check_stat(path, os.fstat(fd), owner, stat.S_IFIFO)
    except Refused:
        os.close(fd)
        return None
    return fd


class Segment:
    """What ``posix_ipc.SharedMemory`` gives Mm and Zone (``fd``, ``size``, ``close_fd``),
    for a file opened and checked by :func:`open_checked`. It takes the fd over.

    Opened read-only, it holds a private copy of the file's first ``copy`` bytes
    (the header: all a reader reads), in a memfd as long as the file, so that
    whatever the file's owner does to the file (truncate it) cannot turn a read
    into SIGBUS. Opened read-write (the caller's own run), it is the file itself."""

    def __init__(self, fd: int, copy: int):
        try:
            self.size = os.fstat(fd).st_size
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                head = os.pread(fd, min(copy, self.size), 0)
                mfd = os.memfd_create("oomemu-copy", os.MFD_CLOEXEC)
                try:
                    os.ftruncate(mfd, self.size)
                    os.pwrite(mfd, head, 0)
                except BaseException:
                    os.close(mfd)
                    raise
                os.close(fd)
                fd = mfd
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def unmap(mapping, segment) -> None:
    """Close a segment's mapping and its fd, whatever state they are in (idempotent).
    A mapping still exported (BufferError) is left to the garbage collector."""
    try:
        mapping.close()
    except (BufferError, ValueError):
        pass
    try:
        segment.close_fd()
    except Exception:
        pass
