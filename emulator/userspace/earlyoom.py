"""earlyoom: SIGTERM, then SIGKILL, the task with the highest oom_score when memory and swap run low.

Lineage and sources: rfjakob/earlyoom, v1.9.0-9-g5c3e3ea (commit
5c3e3ea8cb9c, July 2026), read for this model:

- main.c:150-153 the defaults: SIGTERM when MemAvailable <= 10 % **and**
  SwapFree <= 10 %, SIGKILL at 5 % and 5 %; msg.c:166-212 (the kill level
  defaults to half the term level; a term level under the kill level is
  raised to it); main.c:524-531 ``lowmem_sig``.
- meminfo.c:96-120 ``parse_meminfo``: the memory percentage is
  MemAvailable / (MemAvailable + AnonPages), earlyoom's "user mem total", not
  MemTotal; SwapFree percent is 0 without swap, so then memory alone decides.
- main.c:492-517 ``sleep_time_ms``: the adaptive poll, 100-1000 ms, the
  headroom to the SIGTERM levels divided by assumed fill rates of 6000 MiB/s
  (memory) and 800 MiB/s (swap). main.c:534-585 ``poll_loop``: a report
  line every ``report_interval`` (-r, 1 s) while all is well.
- kill.c:400-529 ``is_larger``: the victim has the highest oom_score (ties:
  the larger VmRSS; ``--sort-by-rss`` swaps the two); it skips pid 1 and 2,
  kernel threads, oom_score_adj -1000 and, kill.c:636, itself. A task with
  oom_score 0 is not skipped (on kernels since 5.9 that is oom_score_adj
  -1000 or a task without an mm).
- kill.c:655-715 ``kill_process``: "sending SIGTERM to process ...", then
  kill.c:289-309 ``kill_release`` (kill(), then process_mrelease() on the
  pidfd), then kill.c:315-398 ``kill_wait``: 100 rounds 100 ms apart
  (10 s); in each, escalate SIGTERM to SIGKILL if memory has fallen to the
  SIGKILL levels, and stop when the victim is dead: meminfo.c:125-149
  ``is_alive``, a zombie (or gone). After 10 s: "kill failed: Timer
  expired" (ETIME). No victim: "Could not find a process to kill. Sleeping 1
  second."

Emulated: the model's clock steps are the sleeps above; the time earlyoom
spends reading /proc is taken as nil. The poll right after a kill is kill
round 0 (the kill's results, and a first ``is_alive``). The pidfd number in
the process_mrelease line is 4, as earlyoom's first free descriptor would be.
Not modelled: --prefer/--avoid/--ignore regexes, -g, -n/-N notifications,
-M/-S sizes, --dryrun, -k (the kernel OOM killer via sysrq), uids (all tasks
are uid 0 in a run, so --ignore-root-user is left out).
"""

from __future__ import annotations

from ..errors import UsageError
from ..kernel.policies.base import Limit
from .base import DEAD, PERCENT, Daemon, Decision, Kill, Log, Results, Snapshot, TaskInfo

#: kill_wait: poll_ms and its 100 rounds (10 s in all)
KILL_WAIT_POLL_S = 0.1
KILL_WAIT_ROUNDS = 100
#: sleep_time_ms: assumed fill rates in kiB/ms (== MiB/s) and the clamp, ms
MEM_FILL_RATE = 6000          # "6000MiB/s seen with stress -m 4 --vm-bytes 4G"
SWAP_FILL_RATE = 800          # "800MiB/s seen with membomb on ZRAM"
MIN_SLEEP_MS, MAX_SLEEP_MS = 100, 1000
#: "Could not find a process to kill. Sleeping 1 second." and after EPERM
NO_VICTIM_SLEEP_S = 1.0
#: strerror() of the errno names the runtime reports
STRERROR = {"ESRCH": "No such process", "EPERM": "Operation not permitted", "EINVAL": "Invalid argument",
            "EAGAIN": "Resource temporarily unavailable", "ETIME": "Timer expired", "EINTR": "Interrupted system call"}


def pct(value: float) -> str:
    """PRIPCT, earlyoom's "%5.2lf%%"."""
    return "%5.2f%%" % value


class Earlyoom(Daemon):
    """The watch loop and, after each kill, kill_wait's 10 s of 100 ms rounds."""
    name = "earlyoom"
    summary = "SIGTERM then SIGKILL the highest oom_score at <=10 %/5 % of memory and swap; waits up to 10 s"
    DEFAULTS = {
        "mem_term_percent": 10.0,     # -m PERCENT
        "mem_kill_percent": 5.0,      # -m PERCENT,KILL_PERCENT (default PERCENT/2)
        "swap_term_percent": 10.0,    # -s PERCENT
        "swap_kill_percent": 5.0,     # -s PERCENT,KILL_PERCENT (default PERCENT/2)
        "report_interval": 1.0,       # -r: seconds between memory reports; 0: none
        "sort_by_rss": 0,             # --sort-by-rss: the largest VmRSS, not the highest oom_score
    }
    LIMITS = {
        "mem_term_percent": PERCENT, "mem_kill_percent": PERCENT,
        "swap_term_percent": PERCENT, "swap_kill_percent": PERCENT,
        "report_interval": Limit(0.0, 3600.0, why="seconds, 0 for no reports"),
        "sort_by_rss": Limit(0, 1, integer=True, why="1 to sort by VmRSS"),
    }

    def __init__(self, overrides=None):
        overrides = dict(overrides or {})
        super().__init__(overrides)
        c = self.consts
        self.warnings: list[str] = []
        for kind in ("mem", "swap"):
            term, kill = f"{kind}_term_percent", f"{kind}_kill_percent"
            if term in overrides and kill not in overrides:
                c[kill] = c[term] / 2                      # "-m 30  # sets PERCENT=30, KILL_PERCENT=15"
            if c[term] < c[kill]:
                self.warnings.append(f"-{kind[0]}: SIGTERM level {c[term]:g} below SIGKILL level {c[kill]:g}, "
                                     f"setting both to {c[kill]:g}")
                c[term] = c[kill]
            if c[term] == 0 and c[kill] == 0:
                raise UsageError(f"--set {term}: earlyoom needs a non-zero {kind} level")
        self.victim: TaskInfo | None = None     # the task kill_wait waits for
        self.sig = ""                           # the signal sent to it last
        self.kill_at = 0.0                      # when kill_wait started
        self.kill_sleep_ms = 0                  # the sleep poll_loop takes after kill_process returns
        self.rounds = 0                         # kill_wait rounds done
        self.report_countdown_ms = 0            # until the next memory report (0: report now)
        self.started = False

    # -- what earlyoom reads ------------------------------------------------------

    @staticmethod
    def user_mem_total(snap: Snapshot) -> int:
        return snap.meminfo.MemAvailable + snap.meminfo.AnonPages

    def mem_percent(self, snap: Snapshot) -> float:
        total = self.user_mem_total(snap)
        return 100.0 * snap.meminfo.MemAvailable / total if total else 0.0

    def lowmem_sig(self, snap: Snapshot) -> str:
        """lowmem_sig: "SIGKILL", "SIGTERM" or "" (both memory and swap must be at or below a level)."""
        c, mem, swap = self.consts, self.mem_percent(snap), snap.meminfo.swap_free_percent
        if mem <= c["mem_kill_percent"] and swap <= c["swap_kill_percent"]:
            return "SIGKILL"
        if mem <= c["mem_term_percent"] and swap <= c["swap_term_percent"]:
            return "SIGTERM"
        return ""

    def sleep_time_ms(self, snap: Snapshot) -> int:
        """sleep_time_ms: the headroom to the SIGTERM levels at the fill rates, 100 to 1000 ms."""
        c, m = self.consts, snap.meminfo
        mem_headroom = max(0, int((self.mem_percent(snap) - c["mem_term_percent"]) * self.user_mem_total(snap) / 100))
        swap_headroom = max(0, int((m.swap_free_percent - c["swap_term_percent"]) * m.SwapTotal / 100))
        ms = mem_headroom // MEM_FILL_RATE + swap_headroom // SWAP_FILL_RATE
        return min(max(ms, MIN_SLEEP_MS), MAX_SLEEP_MS)

    def mem_stats(self, snap: Snapshot) -> str:
        """print_mem_stats."""
        m = snap.meminfo
        return "mem avail: %5d of %5d MiB (%s), swap free: %4d of %4d MiB (%s)" % (
            m.MemAvailable // 1024, self.user_mem_total(snap) // 1024, pct(self.mem_percent(snap)),
            m.SwapFree // 1024, m.SwapTotal // 1024, pct(m.swap_free_percent))

    def is_larger(self, cur: TaskInfo, victim: TaskInfo | None) -> bool:
        """is_larger: would ``cur`` replace ``victim``? (skips pid 1, 2, oom_score_adj -1000, dead tasks)"""
        if cur.pid <= 2 or cur.state == DEAD or cur.oom_score_adj == -1000:
            return False
        if victim is None:
            return True
        cur_key, victim_key = self.score_rss(cur), self.score_rss(victim)
        if self.consts["sort_by_rss"] and cur_key[1] > 0 and victim_key[1] > 0:
            return cur_key[::-1] > victim_key[::-1]
        return cur_key > victim_key                    # also when rss is 0: "Zombie main thread?"

    @staticmethod
    def score_rss(t: TaskInfo) -> tuple[int, int]:
        """(oom_score, VmRSS) as /proc shows them: a zombie has no mm, so 0 and 0."""
        return (0, 0) if t.gone else (t.oom_score, t.rss_kb)

    def find_largest_process(self, snap: Snapshot) -> TaskInfo | None:
        """find_largest_process: is_larger over /proc in pid order (on equal keys the first stays)."""
        best = None
        for t in sorted(snap.tasks, key=lambda t: t.pid):
            if self.is_larger(t, best):
                best = t
        return best

    # -- the loops ------------------------------------------------------------------

    def banner(self, snap: Snapshot) -> list[Log]:
        c, m = self.consts, snap.meminfo
        lines = [Log(w) for w in self.warnings]
        lines += [Log("earlyoom v1.9.0 (emulated)"),
                  Log("mem total: %4d MiB, user mem total: %4d MiB, swap total: %4d MiB" % (
                      m.MemTotal // 1024, self.user_mem_total(snap) // 1024, m.SwapTotal // 1024)),
                  Log("sending SIGTERM when mem avail <= %s and swap free <= %s," % (
                      pct(c["mem_term_percent"]), pct(c["swap_term_percent"]))),
                  Log("        SIGKILL when mem avail <= %s and swap free <= %s" % (
                      pct(c["mem_kill_percent"]), pct(c["swap_kill_percent"])))]
        return lines

    def poll(self, snap: Snapshot, results: Results) -> Decision:
        out: list = []
        if not self.started:
            self.started = True
            out += self.banner(snap)
        if self.victim is not None:
            return self.kill_wait(snap, results, out)
        return self.poll_loop(snap, out)

    def poll_loop(self, snap: Snapshot, out: list) -> Decision:
        """One turn of poll_loop: look, perhaps kill (kill_wait then runs from the next poll)."""
        c = self.consts
        sig = self.lowmem_sig(snap)
        sleep_ms = self.sleep_time_ms(snap)
        if not sig:
            if c["report_interval"] and self.report_countdown_ms <= 0:
                out.append(Log(self.mem_stats(snap)))
                self.report_countdown_ms = round(c["report_interval"] * 1000)
            self.report_countdown_ms -= sleep_ms
            return Decision(tuple(out), snap.now + sleep_ms / 1000)
        level = "SIGKILL" if sig == "SIGKILL" else "SIGTERM"
        out += [Log(self.mem_stats(snap)),
                Log("low memory! at or below %s limits: mem %s, swap %s" % (
                    level, pct(c[f"mem_{level[3:].lower()}_percent"]), pct(c[f"swap_{level[3:].lower()}_percent"])))]
        victim = self.find_largest_process(snap)
        if victim is None:
            out.append(Log("Could not find a process to kill. Sleeping 1 second."))
            self.report_countdown_ms -= sleep_ms
            return Decision(tuple(out), snap.now + NO_VICTIM_SLEEP_S + sleep_ms / 1000)
        out.append(Log('sending %s to process %d uid 0 "%s": oom_score %d, oom_score_adj %d, VmRSS %d MiB, '
                       'cmdline "%s"' % (sig, victim.pid, victim.comm, victim.oom_score, victim.oom_score_adj,
                                         victim.rss_kb // 1024, victim.comm)))
        out.append(Kill(victim.pid, sig, mrelease=True, reason=f"earlyoom: {sig} at {self.mem_percent(snap):.2f}% "
                                                                 f"mem avail"))
        self.victim, self.sig, self.kill_at, self.rounds = victim, sig, snap.now, 0
        self.kill_sleep_ms = sleep_ms
        return Decision(tuple(out), snap.now)           # kill round 0 right away: the kill's results

    def kill_wait(self, snap: Snapshot, results: Results, out: list) -> Decision:
        """One round of kill_wait: results of the last kill, escalation, is_alive; or give up after 10 s."""
        v, secs = self.victim, snap.now - self.kill_at
        assert v is not None
        err = results.kill.get(v.pid, "")
        if err:
            out.append(Log("kill failed: %s" % STRERROR.get(err, err)))
            if err == "EPERM":                             # "trying again in 100ms will just yield the same error"
                out.append(Log("sleeping 1 second"))
            return self.kill_done(snap, out, extra=NO_VICTIM_SLEEP_S if err == "EPERM" else 0.0)
        if v.pid in results.mrelease:
            r = results.mrelease[v.pid]
            out.append(Log("kill_release: pid=%d: process_mrelease pidfd=4 %s" % (
                v.pid, "success" if not r else "failed: " + STRERROR.get(r, r))))
        if self.rounds >= KILL_WAIT_ROUNDS:
            out += [Log("process %d did not exit" % v.pid), Log("kill failed: Timer expired")]
            return self.kill_done(snap, out)
        self.rounds += 1
        if self.sig != "SIGKILL" and self.lowmem_sig(snap) == "SIGKILL":
            self.sig = "SIGKILL"
            out += [Log("escalating to SIGKILL after %.3f seconds" % secs),
                    Kill(v.pid, "SIGKILL", mrelease=True, reason="earlyoom: escalating to SIGKILL")]
        t = snap.task(v.pid)
        if t is None or t.gone:
            out.append(Log("process %d exited after %.3f seconds" % (v.pid, secs)))
            return self.kill_done(snap, out)
        return Decision(tuple(out), self.kill_at + self.rounds * KILL_WAIT_POLL_S)

    def kill_done(self, snap: Snapshot, out: list, extra: float = 0.0) -> Decision:
        """kill_process returned: poll_loop sleeps as it computed before the kill (plus 1 s after EPERM)."""
        self.victim = None
        self.report_countdown_ms -= self.kill_sleep_ms
        return Decision(tuple(out), snap.now + extra + self.kill_sleep_ms / 1000)
