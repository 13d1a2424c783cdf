"""The kernel's OOM lines, parsed: records copied from this machine's /dev/kmsg (Linux
6.18.44, a memcg v1 OOM of a python task touching 100 MB under a 64 MB limit) and lines
made from v6.6's format strings in mm/oom_kill.c. A pure test: no /dev/kmsg is opened."""

from __future__ import annotations

import pytest

from emulator.host import kmsg

pytestmark = pytest.mark.timeout(30)

# Raw records as read(2) from /dev/kmsg returned them (Linux 6.18.44-fc-v595), abridged:
# the call trace, registers and memory.stat lines between them are left out.
REAL_RAW = [
    b"14,344,19524199733,-;oomemu-probe: marker 19524.199349\n",
    b"4,345,19524260765,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n",
    b"4,346,19524260921,-;CPU: 1 UID: 0 PID: 2274 Comm: python3 Not tainted 6.18.44-fc-v595 #1 PREEMPT(none) \n",
    b"4,347,19524260945,-;Call Trace:\n",
    b"6,374,19524262959,-;memory: usage 65536kB, limit 65536kB, failcnt 19\n",
    b"6,422,19524263135,-;[   2274]     0  2274    29746    18941    18023      918         0   212992"
    b"        0             0 python3\n",
    b"6,423,19524263141,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    b"oom_memcg=/probe-cgk-961,task_memcg=/probe-cgk-961,task=python3,pid=2274,uid=0\n",
    b"3,424,19524263175,-;Memory cgroup out of memory: Killed process 2274 (python3) total-vm:118984kB, "
    b"anon-rss:72092kB, file-rss:3672kB, shmem-rss:0kB, UID:0 pgtables:208kB oom_score_adj:0\n",
]


def _c(fmt: str, *args) -> str:
    """A kernel format string of mm/oom_kill.c (v6.6) filled in as printk would."""
    for spec in ("%lu", "%hd", "%u"):
        fmt = fmt.replace(spec, "%d")
    return fmt % args


# v6.6 mm/oom_kill.c, the format strings as the source has them.
V66_KILLED = ("%s: Killed process %d (%s) total-vm:%lukB, anon-rss:%lukB, file-rss:%lukB, shmem-rss:%lukB, "
              "UID:%u pgtables:%lukB oom_score_adj:%hd")
V66_REAPED = "oom_reaper: reaped process %d (%s), now anon-rss:%lukB, file-rss:%lukB, shmem-rss:%lukB"
V66_UNABLE = "oom_reaper: unable to reap pid:%d (%s)"


def records():
    recs, last, lost = kmsg.assemble(REAL_RAW, lambda usec: usec / 1e6 - 19524.0)
    assert last == 424 and lost == (424 - 344 + 1) - len(REAL_RAW)     # abridged: the seqs left out
    return recs


def test_raw_records_are_split_into_priority_seq_time_and_text():
    recs = records()
    assert [r.seq for r in recs][:3] == [344, 345, 346]
    first = recs[0]
    assert (first.facility, first.level, first.usec) == (1, 6, 19524199733)
    assert first.time == pytest.approx(0.199733)
    kill = recs[-1]
    assert (kill.facility, kill.level) == (0, 3)          # pr_err
    assert kill.text.startswith("Memory cgroup out of memory: Killed process 2274 (python3)")


def test_skipped_seqs_are_counted_as_lost():
    _, last, lost = kmsg.assemble([b"6,10,1,-;a\n", b"6,11,2,-;b\n", b"6,15,3,-;c\n"], lambda u: 0.0, 9)
    assert (last, lost) == (15, 3)


def test_the_real_kill_line():
    line = kmsg.parse(records()[-1].text)
    assert line == kmsg.OomKill("Memory cgroup out of memory", 2274, "python3", 118984, 72092, 3672, 0, 0, 208, 0)
    assert line.memcg


def test_the_real_invoked_and_summary_lines_and_the_run_filter():
    recs = records()
    events = kmsg.oom_events(recs, {2274})
    kinds = [type(e.line).__name__ for e in events]
    assert kinds == ["OomInvoked", "OomSummary", "OomKill"]
    invoked, summary, kill = (e.line for e in events)
    assert invoked == kmsg.OomInvoked("python3", 0xcc0, "GFP_KERNEL", 0, 0)
    assert events[0].pid == 2274                          # from dump_stack's "CPU: 1 UID: 0 PID: 2274" line
    assert summary.constraint == "CONSTRAINT_MEMCG"
    assert (summary.oom_memcg, summary.task_memcg) == ("/probe-cgk-961", "/probe-cgk-961")
    assert summary.fields["cpuset"] == "/" and summary.fields["nodemask"] == "(null)"
    assert (summary.comm, summary.pid, summary.uid) == ("python3", 2274, 0)
    assert events[-1].time == pytest.approx(0.263175)
    assert kmsg.oom_events(recs, {2275}) == []            # another process's OOM is not the run's


def test_a_fragment_continues_the_record_before_it():
    raws = [b"6,1,100,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=0-1,3\n",
            b"6,2,101,c;,cpuset=/,mems_allowed=0-1,3,task=a b (c),pid=7,uid=1000\n",
            b"6,3,102,-;next\n"]
    recs, _, _ = kmsg.assemble(raws, lambda u: u / 1e6)
    assert [r.seq for r in recs] == [1, 3]
    summary = kmsg.parse(recs[0].text)
    assert summary.fields["nodemask"] == "0-1,3" and summary.fields["mems_allowed"] == "0-1,3"
    assert (summary.comm, summary.pid, summary.uid, summary.oom_memcg) == ("a b (c)", 7, 1000, None)


def test_escaped_bytes_and_dictionary_lines():
    raw = b"6,9,5,-;line one\\x0aline two \\x5c\n SUBSYSTEM=mem\n DEVICE=c1:11\n"
    (rec,), _, _ = kmsg.assemble([raw], lambda u: 0.0)
    assert rec.text == "line one\nline two \\"


@pytest.mark.parametrize("message", ["Out of memory", "Memory cgroup out of memory",
                                     "Out of memory (oom_kill_allocating_task)"])
def test_v66_kill_line_shapes(message):
    text = _c(V66_KILLED, message, 4242, "db (main)", 1024000, 500000, 1200, 65536, 1000, 1104, -500)
    assert kmsg.parse_kill(text) == kmsg.OomKill(message, 4242, "db (main)", 1024000, 500000, 1200, 65536, 1000,
                                                 1104, -500)
    assert kmsg.parse_kill(text).memcg == message.startswith("Memory cgroup")


def test_v66_reaper_lines():
    assert kmsg.parse(_c(V66_REAPED, 4242, "db", 0, 1200, 65536)) == kmsg.OomReaped(4242, "db", 0, 1200, 65536)
    assert kmsg.parse(_c(V66_UNABLE, 4242, "holder")) == kmsg.OomReapFailed(4242, "holder")


def test_v66_invoked_and_summary_shapes():
    # dump_header: "%s invoked oom-killer: gfp_mask=%#x(%pGg), order=%d, oom_score_adj=%hd"
    text = "alloc invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=-100"
    assert kmsg.parse(text) == kmsg.OomInvoked("alloc", 0x140cca, "GFP_HIGHUSER_MOVABLE|__GFP_COMP", 0, -100)
    # dump_oom_victim (v6.6): constraint, nodemask, cpuset_print_current_mems_allowed, then the memcg context
    text = ("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
            "oom_memcg=/oomemu.1-abcd/a,task_memcg=/oomemu.1-abcd/a/b,task=alloc,pid=99,uid=0")
    s = kmsg.parse(text)
    assert (s.oom_memcg, s.task_memcg, s.pid) == ("/oomemu.1-abcd/a", "/oomemu.1-abcd/a/b", 99)
    # a global OOM has no memcg context
    s = kmsg.parse("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
                   "global_oom,task_memcg=/,task=x,pid=5,uid=0")
    assert s.constraint == "CONSTRAINT_NONE" and s.task_memcg == "/" and s.pid == 5
    assert s.oom_memcg is None and "global_oom" in s.fields and s.fields["mems_allowed"] == "0"


def test_lines_that_are_not_oom_lines():
    for text in ("memory: usage 65536kB, limit 65536kB, failcnt 19", "Call Trace:", "",
                 "Killed process 12 (x)", "oom_reaper: reaped process x (y), now anon-rss:0kB"):
        assert kmsg.parse(text) is None
