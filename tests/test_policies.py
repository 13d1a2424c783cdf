"""Reaper policies as pure logic, driven through emulated time by a fake clock."""

import pytest

from emulator.clock import FakeClock
from emulator.errors import UsageError
from emulator.policies import Attempt, Outcome, SetOomSkip, Wait, get_policy

pytestmark = pytest.mark.timeout(10)


class Victim:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def drive(policy, outcome, horizon, enqueue=(), exits=()):
    """Run the reaper loop until ``horizon``: returns [(t, "attempt"|"skip"|"unable", victim)].

    ``outcome(victim, t)`` says what an attempt finds; ``enqueue`` and ``exits``
    are [(t, victim)] of kills and of exit_mmap setting MMF_OOM_SKIP.
    """
    clock = FakeClock()
    events = []
    todo = sorted([(t, 0, v) for t, v in enqueue] + [(t, 1, v) for t, v in exits], key=lambda e: (e[0], e[1]))
    while clock.now() <= horizon:
        while todo and todo[0][0] <= clock.now():
            _, kind, v = todo.pop(0)
            (policy.wake_oom_reaper(v, clock.now()) if kind == 0 else policy.victim_exited(v))
        action = policy.next_action(clock.now())
        if isinstance(action, Wait):
            nexts = [x for x in (action.until, todo[0][0] if todo else None) if x is not None]
            if not nexts:
                break
            clock.advance(max(0.0, min(nexts) - clock.now()))
            continue
        if isinstance(action, Attempt):
            events.append((round(clock.now(), 6), "attempt", action.victim))
            policy.attempt_done(action.victim, outcome(action.victim, clock.now()), clock.now())
        elif isinstance(action, SetOomSkip):
            events.append((round(clock.now(), 6), "unable" if action.unable_to_reap else "skip", action.victim))
    return events


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


# -- timeout (the seed's patch) ----------------------------------------------

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
