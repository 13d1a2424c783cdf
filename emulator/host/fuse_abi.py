"""The FUSE kernel ABI this server speaks: opcodes and records of include/uapi/linux/fuse.h.

Only what emulator.host.fuse needs, at protocol 7.31 (the minor it answers
INIT with: the kernel then uses the 7.31 layouts below). Each record is one
``struct.Struct`` with the kernel's field names in a comment, so that every
offset is derived from one table. All fields are native-endian (the kernel's).
"""

from __future__ import annotations

import enum
import struct

FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR_VERSION = 31   # what we answer INIT with; the kernel speaks down to it
FUSE_ROOT_ID = 1
FUSE_INT_REQ_BIT = 1 << 0        # an INTERRUPT's unique has this bit set (kernel >= 5.1)
FUSE_MIN_READ_BUFFER = 8192


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    GETXATTR = 22
    LISTXATTR = 23
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    ACCESS = 34
    INTERRUPT = 36
    DESTROY = 38
    BATCH_FORGET = 42
    READDIRPLUS = 44
    LSEEK = 46
    STATX = 52


#: Requests the kernel expects no reply to.
NO_REPLY = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET})

# struct fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
IN_HEADER = struct.Struct("=IIQQIIIHH")
# struct fuse_out_header: len, error (negative errno), unique
OUT_HEADER = struct.Struct("=IiQ")
# struct fuse_init_in (first five fields): major, minor, max_readahead, flags, flags2
INIT_IN = struct.Struct("=IIIII")
# struct fuse_init_out: major, minor, max_readahead, flags, max_background,
# congestion_threshold, max_write, time_gran, max_pages, map_alignment, flags2, unused[7]
INIT_OUT = struct.Struct("=IIIIHHIIHHI28x")
# struct fuse_attr: ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec,
# ctimensec, mode, nlink, uid, gid, rdev, blksize, flags
ATTR = struct.Struct("=QQQQQQIIIIIIIIII")
# struct fuse_entry_out: nodeid, generation, entry_valid, attr_valid,
# entry_valid_nsec, attr_valid_nsec (then struct fuse_attr)
ENTRY_OUT = struct.Struct("=QQQQII")
# struct fuse_attr_out: attr_valid, attr_valid_nsec, dummy (then struct fuse_attr)
ATTR_OUT = struct.Struct("=QII")
# struct fuse_open_out: fh, open_flags, backing_id
OPEN_OUT = struct.Struct("=QIi")
# struct fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding
READ_IN = struct.Struct("=QQIIQII")
# struct fuse_interrupt_in: unique
INTERRUPT_IN = struct.Struct("=Q")
# struct fuse_batch_forget_in: count, dummy (then count x struct fuse_forget_one)
BATCH_FORGET_IN = struct.Struct("=II")
# struct fuse_kstatfs: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, spare[6]
KSTATFS = struct.Struct("=QQQQQIIII24x")
# struct fuse_dirent: ino, off, namelen, type (then the name, padded to 8 bytes)
DIRENT = struct.Struct("=QQII")

assert (IN_HEADER.size, OUT_HEADER.size, INIT_OUT.size, ATTR.size, READ_IN.size, KSTATFS.size) == \
    (40, 16, 64, 88, 40, 80)


def dirent(ino: int, next_off: int, dtype: int, name: bytes) -> bytes:
    """One struct fuse_dirent with its name, padded to 8 bytes (FUSE_DIRENT_ALIGN)."""
    raw = DIRENT.pack(ino, next_off, len(name), dtype) + name
    return raw + b"\0" * (-len(raw) % 8)
