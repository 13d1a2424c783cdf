"""Reaper policies as pure logic, driven through emulated time by a fake clock.

The executor is the real one (``OomReaper.step``, as the reaper thread calls
it); only what an attempt finds in an mm is scripted (real mms:
tests/test_reaper_fakeclock.py).
"""

import threading
import types

import pytest

from emulator.kernel.clock import FakeClock
from emulator.errors import UsageError
from emulator.kernel.mm_types import VM_HUGETLB, VM_LOCKED, VM_PFNMAP, vm_flags_for
from emulator.policies import Attempt, OomSkipAt, Outcome, Wait, get_policy
from emulator.runtime.reaper import OomReaper

pytestmark = pytest.mark.timeout(10)


class Victim:
    def __init__(self, name):
        self.name = name
        self.mm = types.SimpleNamespace(reap_deadline=0.0)     # where the reaper publishes a deadline

    def __repr__(self):
        return self.name


class ScriptedReaper(OomReaper):
    """The real executor (``OomReaper.step``), with its two actions on an mm scripted:
    an attempt finds what ``outcome(victim, t)`` says; each action is recorded."""

    def __init__(self, policy, clock, outcome):
        super().__init__(policy, clock, zone=None, oom_lock=threading.Lock(), printk=print,
                         on_oom_skip=lambda task, by: None)
        self.outcome, self.events = outcome, []

    def oom_reap_task_mm(self, task):
        self.events.append((round(self.clock.now(), 6), "attempt", task))
        return self.outcome(task, self.clock.now())

    def set_oom_skip(self, action):
        self.events.append((round(self.clock.now(), 6), "unable" if action.unable_to_reap else "skip",
                            action.victim))


def drive(policy, outcome, horizon, enqueue=(), exits=()):
    """Step the reaper until ``horizon``: returns [(t, "attempt"|"skip"|"unable", victim)].

    ``outcome(victim, t)`` says what an attempt finds; ``enqueue`` and ``exits``
    are [(t, victim)] of kills and of exit_mmap setting MMF_OOM_SKIP.
    """
    clock = FakeClock()
    reaper = ScriptedReaper(policy, clock, outcome)
    todo = sorted([(t, 0, v) for t, v in enqueue] + [(t, 1, v) for t, v in exits], key=lambda e: (e[0], e[1]))
    while clock.now() <= horizon:
        while todo and todo[0][0] <= clock.now():
            _, kind, v = todo.pop(0)
            (reaper.wake_oom_reaper(v) if kind == 0 else reaper.victim_exited(v))
        back = reaper.step(clock.now())
        if back is not None and back <= clock.now():
            continue                                        # more to do at once
        nexts = [x for x in (back, todo[0][0] if todo else None) if x is not None]
        if not nexts:
            break
        clock.advance_to(min(nexts))
    return reaper.events


def always(o):
    return lambda v, t: o


# -- v4.17 --------------------------------------------------------------------

def test_v417_gives_up_after_ten_tries_100ms_apart():
    a = Victim("a")
    ev = drive(get_policy("v4.17"), always(Outcome.CONTENDED), 5, enqueue=[(0, a)])
    attempts = [t for t, k, _ in ev if k == "attempt"]
    assert attempts == pytest.approx([i * 0.1 for i in range(10)])
    assert ev[-1] == (pytest.approx(1.0), "unable", a)


def test_v417_sets_oom_skip_right_after_a_reap_that_freed_nothing():
    a = Victim("a")
    ev = drive(get_policy("v4.17"), always(Outcome.REAPED), 5, enqueue=[(0, a)])
    assert ev == [(0.0, "attempt", a), (0.0, "skip", a)]


def test_v417_blockable_notifier_sleeps_a_second_then_gives_up_without_reaping():
    a = Victim("a")
    ev = drive(get_policy("v4.17"), always(Outcome.NOTIFIER_BLOCKED), 5, enqueue=[(0, a)])
    assert ev == [(0.0, "attempt", a), (pytest.approx(1.0), "skip", a)]


def test_v417_is_lifo_and_works_on_one_victim_at_a_time():
    a, b = Victim("a"), Victim("b")
    ev = drive(get_policy("v4.17"), always(Outcome.CONTENDED), 5, enqueue=[(0, a), (0, b)])
    order = [v for _, k, v in ev if k == "unable"]
    assert order == [b, a]
    first_a = min(t for t, k, v in ev if v is a and k == "attempt")
    assert first_a == pytest.approx(1.0)       # a waits while b gets all its tries


def test_v417_retries_can_be_overridden():
    a = Victim("a")
    ev = drive(get_policy("v4.17", {"max_oom_reap_retries": "3"}), always(Outcome.CONTENDED), 5,
               enqueue=[(0, a)])
    assert ev[-1] == (pytest.approx(0.3), "unable", a)


def test_unknown_policy_or_constant_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown policy"):
        get_policy("v9.99")
    with pytest.raises(UsageError, match="no such constant"):
        get_policy("v4.17", {"reap_timeout_s": 3})
    with pytest.raises(UsageError, match="not a number"):
        get_policy("timeout", {"reap_timeout_s": "soon"})


# -- timeout (the 2018 timeout patch) ---------------------------------------

def test_timeout_keeps_trying_until_the_deadline_then_gives_up():
    a = Victim("a")
    ev = drive(get_policy("timeout"), always(Outcome.CONTENDED), 30, enqueue=[(0.5, a)])
    attempts = [t for t, k, _ in ev if k == "attempt"]
    assert len(attempts) == pytest.approx(100, abs=1)
    assert all(b - a_ == pytest.approx(0.1) for a_, b in zip(attempts, attempts[1:]))
    assert ev[-1] == (pytest.approx(10.5), "unable", a)     # exactly at its deadline


def test_timeout_reaps_a_second_victim_while_the_first_is_stuck():
    a, b = Victim("a"), Victim("b")
    outcome = lambda v, t: Outcome.CONTENDED if v is a else Outcome.REAPED
    ev = drive(get_policy("timeout"), outcome, 30, enqueue=[(0, a), (0.05, b)])
    b_attempts = [t for t, k, v in ev if v is b and k == "attempt"]
    assert b_attempts == [pytest.approx(0.1)]                # the next pass, not after a's tries
    assert [v for _, k, v in ev if k == "unable"] == [a, b]  # b: reaped but never exited


def test_timeout_forgets_a_victim_whose_exit_set_oom_skip():
    a = Victim("a")
    ev = drive(get_policy("timeout"), always(Outcome.REAPED), 30, enqueue=[(0, a)], exits=[(1.3, a)])
    assert ev == [(0.0, "attempt", a)]                       # no more tries, no deadline


def test_timeout_deadline_can_be_overridden():
    a = Victim("a")
    ev = drive(get_policy("timeout", {"reap_timeout_s": 3}), always(Outcome.CONTENDED), 30, enqueue=[(0, a)])
    assert ev[-1] == (pytest.approx(3.0), "unable", a)


def test_timeout_keeps_one_deadline_per_mm_from_first_enqueue():
    a = Victim("a")
    ev = drive(get_policy("timeout"), always(Outcome.CONTENDED), 30, enqueue=[(0, a), (4, a), (8, a)])
    assert [e for e in ev if e[1] == "unable"] == [(pytest.approx(10.0), "unable", a)]


# -- handover (v4.19 notifiers + the hand-over RFC) -----------------------------

def test_handover_retries_while_substantial_memory_is_left_where_v417_gives_up_at_once():
    a = Victim("a")
    ev = drive(get_policy("handover"), always(Outcome.MEMORY_LEFT), 5, enqueue=[(0, a)])
    assert [t for t, k, _ in ev if k == "attempt"] == pytest.approx([i * 0.1 for i in range(10)])
    assert ev[-1] == (pytest.approx(1.0), "unable", a)          # MAX_OOM_REAP_RETRIES, as ever
    old = drive(get_policy("v4.17"), always(Outcome.MEMORY_LEFT), 5, enqueue=[(0, a)])
    assert old == [(0.0, "attempt", a), (0.0, "skip", a)]     # v4.17: reaped is reaped


def test_handover_leaves_mmf_oom_skip_to_exit_mmap_once_handed_over():
    """The third attempt finds exit_mmap holding the VMAs: the reaper sets nothing,
    not even later, and turns to the next victim at once."""
    a, b = Victim("a"), Victim("b")
    outcome = lambda v, t: (Outcome.HANDED_OVER if t >= 0.2 else Outcome.MEMORY_LEFT) if v is a else Outcome.REAPED
    policy = get_policy("handover")
    ev = drive(policy, outcome, 10, enqueue=[(0, b), (0, a)])       # LIFO: a first
    assert ev == [(0.0, "attempt", a), (pytest.approx(0.1), "attempt", a), (pytest.approx(0.2), "attempt", a),
                  (pytest.approx(0.2), "attempt", b), (pytest.approx(0.2), "skip", b)]
    assert policy.pending() == 0


def test_handover_retries_a_notifier_that_would_block_instead_of_sleeping():
    a = Victim("a")
    ev = drive(get_policy("handover"), always(Outcome.NOTIFIER_BLOCKED), 5, enqueue=[(0, a)])
    assert len([e for e in ev if e[1] == "attempt"]) == 10
    assert ev[-1] == (pytest.approx(1.0), "unable", a)          # v4.17: a 1 s sleep, then "skip"


def test_handover_sets_oom_skip_right_after_a_reap_that_left_nothing():
    a = Victim("a")
    assert drive(get_policy("handover"), always(Outcome.REAPED), 5, enqueue=[(0, a)]) == \
        [(0.0, "attempt", a), (0.0, "skip", a)]


# -- v6.6 (mainline today) ------------------------------------------------------

def test_v66_starts_reaping_only_oom_reaper_delay_after_the_kill():
    a = Victim("a")
    ev = drive(get_policy("v6.6"), always(Outcome.CONTENDED), 10, enqueue=[(0.5, a)])
    attempts = [t for t, k, _ in ev if k == "attempt"]
    assert attempts == pytest.approx([2.5 + i * 0.1 for i in range(10)])
    assert ev[-1] == (pytest.approx(3.5), "unable", a)


def test_v66_timers_are_per_victim_and_queue_lifo_when_they_fire():
    """a's timer fires at 2.0, b's at 2.5 while the reaper works on a; c's at 2.7.
    When a is given up (3.0), the chain holds b then c: c (pushed last) goes first."""
    a, b, c = Victim("a"), Victim("b"), Victim("c")
    policy = get_policy("v6.6")
    ev = drive(policy, always(Outcome.CONTENDED), 20, enqueue=[(0, a), (0.5, b), (0.7, c)])
    gave_up = [(t, v) for t, k, v in ev if k == "unable"]
    assert gave_up == [(pytest.approx(3.0), a), (pytest.approx(4.0), c), (pytest.approx(5.0), b)]
    assert min(t for t, k, v in ev if v is b and k == "attempt") == pytest.approx(4.0)
    assert policy.pending() == 0


def test_v66_arms_one_timer_per_victim():
    a = Victim("a")
    policy = get_policy("v6.6")
    policy.wake_oom_reaper(a, 0.0)
    policy.wake_oom_reaper(a, 1.0)                  # MMF_OOM_REAP_QUEUED: no second timer
    assert policy.pending() == 1
    assert policy.next_action(0.0) == Wait(pytest.approx(2.0))
    ev = drive(get_policy("v6.6"), always(Outcome.CONTENDED), 10, enqueue=[(0, a), (1.0, a)])
    assert len([e for e in ev if e[1] == "attempt"]) == 10 and ev[-1] == (pytest.approx(3.0), "unable", a)


def test_v66_a_victim_gone_before_its_timer_is_skipped_at_the_first_attempt():
    a = Victim("a")
    outcome = lambda v, t: Outcome.SKIPPED if t >= 1.2 else Outcome.CONTENDED
    ev = drive(get_policy("v6.6"), outcome, 10, enqueue=[(0, a)], exits=[(1.2, a)])
    assert ev == [(pytest.approx(2.0), "attempt", a), (pytest.approx(2.0), "skip", a)]


def test_v66_delay_can_be_overridden_and_notifiers_are_retried():
    a = Victim("a")
    ev = drive(get_policy("v6.6", {"oom_reaper_delay_s": 0.5}), always(Outcome.NOTIFIER_BLOCKED), 10,
               enqueue=[(0, a)])
    assert ev[0] == (pytest.approx(0.5), "attempt", a)
    assert ev[-1] == (pytest.approx(1.5), "unable", a)


def test_v66_reaps_after_the_delay_and_memory_left_does_not_keep_it_trying():
    a = Victim("a")
    assert drive(get_policy("v6.6"), always(Outcome.MEMORY_LEFT), 10, enqueue=[(0, a)]) == \
        [(pytest.approx(2.0), "attempt", a), (pytest.approx(2.0), "skip", a)]


def test_v66_deadline_is_known_once_the_reaper_works_on_the_victim():
    a = Victim("a")
    policy = get_policy("v6.6")
    policy.wake_oom_reaper(a, 0.0)
    assert policy.deadline_of(a) is None                        # still waiting for its timer
    assert policy.next_action(2.0) == Attempt(a)
    assert policy.deadline_of(a) == pytest.approx(3.0)          # 10 tries, 0.1 s apart


# -- what each policy reaps, and where exit_mmap sets MMF_OOM_SKIP ----------------

@pytest.mark.parametrize("policy, mlocked_reapable, where, reap_first, handover", [
    ("v4.17", False, OomSkipAt.BEFORE_UNMAP, True, False),
    ("timeout", False, OomSkipAt.AFTER_FREE_PGTABLES, False, False),
    ("handover", False, OomSkipAt.AFTER_FREE_PGTABLES, True, True),
    ("v6.6", True, OomSkipAt.AFTER_UNMAP, False, False),
])
def test_vma_rules_and_exit_mmap_rules(policy, mlocked_reapable, where, reap_first, handover):
    p = get_policy(policy)
    assert p.can_reap_vma("anon", 0) and p.can_reap_vma("file_private", 0)
    assert p.can_reap_vma("anon", VM_LOCKED) is mlocked_reapable
    assert not p.can_reap_vma("anon", VM_HUGETLB) and not p.can_reap_vma("anon", VM_PFNMAP)
    assert not p.can_reap_vma("file_shared", vm_flags_for("file_shared", False))
    rules = p.EXIT_MMAP
    assert (rules.oom_skip, rules.reap_first, rules.handover) == (where, reap_first, handover)
    assert p.honors_handover is handover
