"""``handover``: the other side of the 2018 argument ("No timeouts please!").

Lineage: Michal Hocko's answer to the 2018 timeout patch was to fix the causes
rather than add a deadline:

* "mm, oom: distinguish blockable mode for mmu notifiers" (v4.19): the
  reaper invalidates mmu notifiers in non-blocking mode; when a notifier
  would block, the attempt fails and is retried like a contended mmap_sem,
  instead of a 1 s sleep and giving up.
* "rework mmap-exit vs. oom_reaper handover" (RFC, Sept/Oct 2018, not
  merged): the reaper keeps retrying while substantial memory is left
  (mlocked or shared memory it could not free counts as left), and once
  ``exit_mmap`` holds the mm's VMAs (mmap_sem for write) and is guaranteed
  to finish, ``MMF_OOM_SKIP`` is handed over to the exit path, which sets it
  after ``free_pgtables``, when the memory really is gone.

Still a single LIFO chain, one victim at a time, ``MAX_OOM_REAP_RETRIES``
attempts ``HZ/10`` apart: a victim that never reaches ``exit_mmap`` (D state,
its mmap_sem held by someone else) is given up on after about a second.
"""

from __future__ import annotations

from .base import ExitMmapRules, OomSkipAt
from .v4_17 import V417


class Handover(V417):
    name = "handover"
    summary = "v4.19 non-blocking notifiers + the hand-over RFC: retry while memory is left, exit_mmap sets MMF_OOM_SKIP"
    DEFAULTS = {
        "max_oom_reap_retries": 10,       # ~1 s at HZ/10, as in v4.17
        "reap_retry_interval_s": 0.1,
    }
    EXIT_MMAP = ExitMmapRules(oom_skip=OomSkipAt.AFTER_FREE_PGTABLES, reap_first=True, handover=True)
    NOTIFIER_SLEEPS_THEN_GIVES_UP = False
    RETRY_WHILE_MEMORY_LEFT = True
