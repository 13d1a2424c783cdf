"""``oomemu kernel-check``: each scenario on this machine's kernel, beside every emulated policy.

For every scenario a host run can make real (emulator.host.features), the
host's outcome (verdict, kills, victims in order) is set beside each emulated
policy's, and a policy that gives the same outcome in every run is marked
``=``. Victims are compared by task name without a copy's number
(``locked-2`` is ``locked``): among equal copies, which one the kernel picks
depends on a few pages of each process's own. A policy's ``panic`` after a
global OOM is compared as ``hung``: a host run's zone is a memcg, where
nobody to kill makes the allocation wait (features.comparable_verdict). Host
runs marked ``diverged`` (a task meant to be spared was killed: see
emulator.host.run) are shown and not compared.

``--check`` exits 3 when the policy that models the running kernel (v6.6)
disagrees with the host's majority outcome on a reproducible scenario (every
run of v6.6 must give it; the host's runs may vary where the kernel does).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ..kernel.verdict import Verdict
from ..result import RunResult
from ..scenario import Scenario

KERNEL_POLICY = "v6.6"            # the policy that models the running kernel
_COPY = re.compile(r"-\d+$")


@dataclass(frozen=True)
class Outcome:
    verdict: str
    kills: int
    victims: tuple[str, ...]

    def show(self) -> str:
        victims = ",".join(self.victims) if self.victims else "none"
        return f"{'ok' if self.verdict == Verdict.RESOLVED else self.verdict} {self.kills}: {victims}"


def outcome(r: RunResult, global_oom: bool = True) -> Outcome:
    from ..host.features import comparable_verdict
    verdict = comparable_verdict(Verdict(r.verdict), global_oom) if r.policy != "host" else Verdict(r.verdict)
    return Outcome(str(verdict), r.kills, tuple(_COPY.sub("", v.name) for v in r.victims))


def cell(outcomes: list[Outcome], host: Outcome | None) -> str:
    """One policy's cell: its outcome(s), ``xN`` when all N agree, and ``=`` when that is the
    host's, ``!=`` when it is not."""
    counts = Counter(outcomes)
    shown = "; ".join(f"{o.show()} x{n}" for o, n in counts.most_common())
    if host is None:
        return shown
    mark = "=" if len(counts) == 1 and host in counts else "!="
    return f"{mark} {shown}"


def host_outcome(results: list[RunResult]) -> tuple[Outcome | None, str]:
    """The host's outcome, and its cell: what most of the runs that did not diverge gave
    (more than half of them; None if none did). The kernel is not deterministic where a
    window is a few ms wide (small_rss: the second OOM falls in free_pgtables' window or
    just after it), so the cell shows every outcome it gave, and how often."""
    kept = [outcome(r) for r in results if not r.diverged]
    diverged = len(results) - len(kept)
    counts = Counter(kept)
    shown = "; ".join(f"{o.show()} x{n}" for o, n in counts.most_common())
    if diverged:
        shown += ("; " if shown else "") + f"diverged x{diverged}"
    top = counts.most_common(1)
    return (top[0][0] if top and top[0][1] * 2 > len(kept) else None), shown


def global_oom(scenario: Scenario) -> bool:
    """Does the scenario's OOM come from the zone rather than a memcg limit (approximately:
    it has no memcg, or an allocating task outside every memcg)?"""
    return not scenario.memcgs or any(not t.memcg and any(s.op == "alloc" for s in t.steps)
                                      for t in scenario.tasks)


def kernel_check(scenarios: list[Scenario], repeat: int, speed: float = 10.0, say=print) -> bool:
    """Run each scenario ``repeat`` times on the host and under every emulated policy, print
    the table and what could not be made real; returns whether the kernel's policy
    (KERNEL_POLICY) agreed with the host on every reproducible scenario."""
    from ..errors import UsageError
    from ..host.run import HostRun, check_host, refuse
    from ..policies import POLICIES
    from ..runtime.supervisor import run_scenario
    from .columns import columns
    version = check_host()
    rows = [("scenario", "host", *POLICIES)]
    skipped, agree = [], True
    for s in scenarios:
        try:
            refuse(s, version)
            HostRun(s)                    # what this machine lacks for it (FUSE): not reproducible here
        except UsageError as e:
            skipped.append(f"  {s.name}: {str(e).split('cannot make real ', 1)[-1]}")
            continue
        say(f"oomemu kernel-check: {s.name} on this kernel, {repeat} run(s) ...")
        results = [HostRun(s).execute() for _ in range(repeat)]
        for r in results:
            if r.error:
                say(f"oomemu kernel-check: {s.name} on this kernel broke: {r.error}")
        host, host_cell = host_outcome(results)
        compared = any(not r.diverged for r in results)      # all diverged: nothing to hold v6.6 to
        cells = []
        for pol in POLICIES:
            outs = [outcome(run_scenario(s, policy=pol, speed=speed), global_oom(s)) for _ in range(repeat)]
            cells.append(cell(outs, host))
            if pol == KERNEL_POLICY and compared and (host is None or set(outs) != {host}):
                agree = False
        rows.append((s.name, host_cell, *cells))
    say(f"oomemu kernel-check --repeat {repeat}: verdict kills: victims, on this kernel and under each policy "
        f"(= the host's in every run)")
    if len(rows) > 1:
        say(columns(rows))
    if skipped:
        say("not reproducible here:")
        for line in skipped:
            say(line)
    return agree
