"""The kernel's log as a run sees it: /dev/kmsg records on the run's time base, and the
OOM lines of mm/oom_kill.c parsed into typed records.

/dev/kmsg gives one record per read(2): ``PRI,SEQ,USEC,FLAGS[,...];TEXT\\n`` then
optional `` KEY=VALUE`` dictionary lines. TEXT has non-printable bytes escaped as
``\\xNN`` (a message of several lines has ``\\x0a`` in it). FLAGS ``c`` (and ``+`` on
old kernels) marks a fragment that continues the record before it: one pr_cont() that
could not be appended to its open record. A read that fails with EPIPE means records
were overwritten before we read them; the next read returns the oldest one left.

USEC is the printk timestamp, local_clock(): on x86 with a stable TSC this is
sched_clock, which counts from boot like CLOCK_MONOTONIC but is not the same clock.
Measured on this machine (Linux 6.18, x86_64, a VM): a marker written between two
CLOCK_MONOTONIC reads 50 us apart was stamped about 0.34 ms after the second read,
i.e. printk time = CLOCK_MONOTONIC + ~0.3 ms, stable over a run. KernelLog measures
this offset at start (``printk_offset_s``) with one marker line, and maps each record
onto the run's base with it; if the marker cannot be written or is not seen, the
offset is taken as 0 and ``clock_checked`` is False.
"""

from __future__ import annotations

import errno
import os
import re
import select
import time
from dataclasses import dataclass

from ..errors import EnvironmentProblem
from ..runtime import names

KMSG = "/dev/kmsg"
READ_SIZE = 8192                        # a record is at most ~1 KiB of text plus its dictionary
MARKER_WAIT_S = 1.0                     # a write to /dev/kmsg is in the log before write() returns


@dataclass(frozen=True)
class Record:
    """One kernel log record: ``time`` in seconds since the run's t0, ``usec`` as printed."""
    seq: int
    level: int                          # 0 (emerg) .. 7 (debug)
    facility: int                       # 0: the kernel; 1: user (a write to /dev/kmsg)
    usec: int
    time: float
    text: str                           # unescaped; may hold "\n" for a multi-line message


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def parse_raw(raw: bytes) -> tuple[int, int, int, str, str] | None:
    """(priority, seq, usec, flags, text) of one /dev/kmsg record, or None if it is not one."""
    line = raw.decode("utf-8", "replace")
    head, sep, rest = line.partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 4:
        return None
    try:
        pri, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    text = rest.split("\n", 1)[0]       # what follows are " KEY=VALUE" dictionary lines
    return pri, seq, usec, fields[3], _unescape(text)


def assemble(raws: list[bytes], run_time, last_seq: int | None = None) -> tuple[list[Record], int | None, int]:
    """Records from raw /dev/kmsg reads, in order: a fragment flagged ``c`` or ``+``
    (a pr_cont() that could not join its open record) is appended to the record before it.
    ``run_time`` maps a printk usec to the run's base. Returns the records, the last seq
    seen, and how many seqs were skipped (records overwritten before they were read)."""
    out: list[Record] = []
    lost = 0
    for raw in raws:
        parsed = parse_raw(raw)
        if parsed is None:
            continue
        pri, seq, usec, flags, text = parsed
        if last_seq is not None and seq > last_seq + 1:
            lost += seq - last_seq - 1
        last_seq = seq
        if flags[:1] in ("c", "+") and out:
            prev = out[-1]
            out[-1] = Record(prev.seq, prev.level, prev.facility, prev.usec, prev.time, prev.text + text)
            continue
        out.append(Record(seq, pri & 7, pri >> 3, usec, run_time(usec), text))
    return out, last_seq, lost


class KernelLog:
    """New kernel log records from the moment it is opened, on the run's time base.

    Opened read-only and non-blocking at the end of the log (SEEK_END): records older than
    the run are never read. One marker line is written at start (devkmsg writes are rate
    limited per open file; one is always allowed) to measure the printk clock. close() is
    idempotent; a KernelLog holds only its file descriptor. EnvironmentProblem if the log
    cannot be read (not root: dmesg_restrict).
    """

    def __init__(self, run_clock_t0_monotonic: float, *, path: str = KMSG, check_clock: bool = True):
        self.t0 = run_clock_t0_monotonic
        self.path = path
        self.printk_offset_s = 0.0          # printk time minus CLOCK_MONOTONIC
        self.clock_checked = False
        self.lost = 0                       # records overwritten before we read them (seq gaps)
        self.overrun = False                # a read met EPIPE: some were overwritten
        self._pending: list[Record] = []
        self._last_seq: int | None = None
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            why = " (host runs need root, or CAP_SYSLOG)" if e.errno in (errno.EPERM, errno.EACCES) else ""
            raise EnvironmentProblem(f"cannot read the kernel log {path}: {e.strerror}{why}") from None
        try:
            os.lseek(self._fd, 0, os.SEEK_END)
            if check_clock:
                self._check_clock()
        except BaseException:
            self.close()
            raise

    def _check_clock(self) -> None:
        tag = f"{names.PREFIX}: printk clock check {os.getpid()} {time.monotonic_ns()}"
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError:
            return
        try:
            before = time.monotonic()
            os.write(fd, f"<14>{tag}\n".encode())     # facility user, level info
            after = time.monotonic()
        except OSError:
            return
        finally:
            os.close(fd)
        deadline = time.monotonic() + MARKER_WAIT_S
        while time.monotonic() < deadline:
            for rec in self._read_records():
                if rec.text.endswith(tag) and not self.clock_checked:
                    self.printk_offset_s = rec.usec / 1e6 - (before + after) / 2
                    self.clock_checked = True
                else:
                    self._pending.append(rec)
            if self.clock_checked:
                break
            select.select([self._fd], [], [], 0.01)
        # re-express what was read before the offset was known
        self._pending = [self._retime(r) for r in self._pending]

    def _retime(self, r: Record) -> Record:
        return Record(r.seq, r.level, r.facility, r.usec, self.run_time(r.usec), r.text)

    def run_time(self, usec: int) -> float:
        """A printk timestamp as seconds since the run's t0."""
        return usec / 1e6 - self.printk_offset_s - self.t0

    def _read_records(self) -> list[Record]:
        raws: list[bytes] = []
        while True:
            try:
                raw = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            except BrokenPipeError:
                self.overrun = True             # overwritten; the seq gap says how many
                continue
            except OSError as e:
                if e.errno == errno.EINVAL:     # a record larger than the buffer: skip it
                    continue
                raise
            if not raw:
                break
            raws.append(raw)
        records, self._last_seq, gap = assemble(raws, self.run_time, self._last_seq)
        self.lost += gap
        return records

    def read(self) -> list[Record]:
        """Every record logged since the last read (or since the log was opened)."""
        if self._fd < 0:
            return []
        out, self._pending = self._pending + self._read_records(), []
        return out

    def fileno(self) -> int:
        """For select/poll: readable when a new record is there."""
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- the lines the run needs, as mm/oom_kill.c prints them (v6.6 .. v6.18) ---------------

@dataclass(frozen=True)
class OomKill:
    """``%s: Killed process %d (%s) total-vm:%lukB, anon-rss:%lukB, file-rss:%lukB,
    shmem-rss:%lukB, UID:%u pgtables:%lukB oom_score_adj:%hd`` (__oom_kill_process);
    message is "Out of memory", "Memory cgroup out of memory", ..."""
    message: str
    pid: int
    comm: str
    total_vm_kb: int
    anon_rss_kb: int
    file_rss_kb: int
    shmem_rss_kb: int
    uid: int
    pgtables_kb: int
    oom_score_adj: int

    @property
    def memcg(self) -> bool:
        return self.message.startswith("Memory cgroup")


@dataclass(frozen=True)
class OomReaped:
    """``oom_reaper: reaped process %d (%s), now anon-rss:%lukB, file-rss:%lukB, shmem-rss:%lukB``"""
    pid: int
    comm: str
    anon_rss_kb: int
    file_rss_kb: int
    shmem_rss_kb: int


@dataclass(frozen=True)
class OomReapFailed:
    """``oom_reaper: unable to reap pid:%d (%s)`` (oom_reap_task: MAX_OOM_REAP_RETRIES spent)"""
    pid: int
    comm: str


@dataclass(frozen=True)
class OomInvoked:
    """``%s invoked oom-killer: gfp_mask=%#x(%pGg), order=%d, oom_score_adj=%hd`` (dump_header).
    The line names no pid: the caller may take it from the dump_stack line after it
    (``CPU: N UID: U PID: P Comm: ...``, see parse_dump_stack_pid)."""
    comm: str
    gfp_mask: int
    gfp_flags: str
    order: int
    oom_score_adj: int


@dataclass(frozen=True)
class OomSummary:
    """``oom-kill:constraint=%s,nodemask=%*pbl[,cpuset=%s,mems_allowed=%*pbl][,oom_memcg=...
    ,task_memcg=...],task=%s,pid=%d,uid=%d`` (dump_oom_victim / dump_oom_summary)."""
    constraint: str
    fields: dict
    oom_memcg: str | None
    task_memcg: str | None
    comm: str
    pid: int
    uid: int


_COMM = r"(?P<comm>.{0,64}?)"
_KILLED = re.compile(
    r"^(?P<message>.+?): Killed process (?P<pid>\d+) \(" + _COMM + r"\) total-vm:(?P<vm>\d+)kB, "
    r"anon-rss:(?P<anon>\d+)kB, file-rss:(?P<file>\d+)kB, shmem-rss:(?P<shmem>\d+)kB, "
    r"UID:(?P<uid>\d+) pgtables:(?P<pgt>\d+)kB oom_score_adj:(?P<adj>-?\d+)$")
_REAPED = re.compile(
    r"^oom_reaper: reaped process (?P<pid>\d+) \(" + _COMM + r"\), now anon-rss:(?P<anon>\d+)kB, "
    r"file-rss:(?P<file>\d+)kB, shmem-rss:(?P<shmem>\d+)kB$")
_UNABLE = re.compile(r"^oom_reaper: unable to reap pid:(?P<pid>\d+) \(" + _COMM + r"\)$")
_INVOKED = re.compile(
    r"^" + _COMM + r" invoked oom-killer: gfp_mask=(?P<gfp>0x[0-9a-f]+)\((?P<flags>[^)]*)\), "
    r"order=(?P<order>-?\d+), oom_score_adj=(?P<adj>-?\d+)$")
_SUMMARY = re.compile(r"^oom-kill:constraint=(?P<constraint>CONSTRAINT_\w+),(?P<middle>.*),"
                      r"task=" + _COMM + r",pid=(?P<pid>\d+),uid=(?P<uid>\d+)$")
_DUMP_STACK = re.compile(r"^CPU: \d+ (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: ")


def parse_kill(text: str) -> OomKill | None:
    m = _KILLED.match(text)
    if not m:
        return None
    g = m.group
    return OomKill(g("message"), int(g("pid")), g("comm"), int(g("vm")), int(g("anon")), int(g("file")),
                   int(g("shmem")), int(g("uid")), int(g("pgt")), int(g("adj")))


def parse_reaped(text: str) -> OomReaped | None:
    m = _REAPED.match(text)
    if not m:
        return None
    return OomReaped(int(m.group("pid")), m.group("comm"), int(m.group("anon")), int(m.group("file")),
                     int(m.group("shmem")))


def parse_reap_failed(text: str) -> OomReapFailed | None:
    m = _UNABLE.match(text)
    return OomReapFailed(int(m.group("pid")), m.group("comm")) if m else None


def parse_invoked(text: str) -> OomInvoked | None:
    m = _INVOKED.match(text)
    if not m:
        return None
    return OomInvoked(m.group("comm"), int(m.group("gfp"), 16), m.group("flags"), int(m.group("order")),
                      int(m.group("adj")))


def parse_summary(text: str) -> OomSummary | None:
    """The one-line summary; its middle fields (nodemask, cpuset, mems_allowed, oom_memcg or
    global_oom, task_memcg) are split on the commas before each key (a nodemask list such
    as ``0-1,3`` holds commas of its own)."""
    m = _SUMMARY.match(text)
    if not m:
        return None
    fields: dict[str, str] = {}
    key = None
    for part in m.group("middle").split(","):
        k, eq, v = part.partition("=")
        if re.fullmatch(r"[a-z_]+", k):
            key, fields[k] = k, v                   # "global_oom" is a key without a value
        elif key is not None:
            fields[key] += "," + part
    return OomSummary(m.group("constraint"), fields, fields.get("oom_memcg"), fields.get("task_memcg"),
                      m.group("comm"), int(m.group("pid")), int(m.group("uid")))


def parse_dump_stack_pid(text: str) -> int | None:
    """The pid in dump_stack's first line, ``CPU: 1 UID: 0 PID: 2274 Comm: python3 ...``
    (no ``UID:`` before v6.10)."""
    m = _DUMP_STACK.match(text)
    return int(m.group("pid")) if m else None


PARSERS = (parse_kill, parse_reaped, parse_reap_failed, parse_summary, parse_invoked)


def parse(text: str):
    """The typed record for one OOM line, or None if it is none of them."""
    for p in PARSERS:
        rec = p(text)
        if rec is not None:
            return rec
    return None


@dataclass(frozen=True)
class OomEvent:
    """One OOM line of the run: its record's time on the run's base, the typed line, and
    for an OomInvoked the pid of the allocating task (from the dump_stack line after it)."""
    time: float
    line: object
    text: str
    pid: int | None


def oom_events(records: list[Record], pids) -> list[OomEvent]:
    """The OOM lines about the run's own processes (``pids``), in log order: others on the
    machine (another cgroup's OOM, a global one) are left out."""
    pids = set(pids)
    out = []
    for i, r in enumerate(records):
        line = parse(r.text)
        if line is None:
            continue
        if isinstance(line, OomInvoked):
            pid = next((p for p in (parse_dump_stack_pid(x.text) for x in records[i + 1:i + 3]) if p), None)
        else:
            pid = line.pid
        if pid in pids:
            out.append(OomEvent(r.time, line, r.text, pid))
    return out
