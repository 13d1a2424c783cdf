"""The seed's claims, measured with real processes, for every built-in case and
for variants with other sizes and durations: the mechanism decides, not the numbers."""

import pytest

import emulator
from tests.helpers import scaled_variant

pytestmark = pytest.mark.timeout(300)
SPEED = 10

# (size factor, duration factor): the built-in numbers, and two other worlds
VARIANTS = [(1.0, 1.0), (1.5, 1.3), (0.7, 0.8)]
EXTRA_KILL_CASES = ["mlocked", "mmu_notifier", "shared_file", "small_rss", "slow_pgtables",
                    "mmap_sem_held", "parallel_victims"]


def ids(v):
    return f"mb*{v[0]:g}-ms*{v[1]:g}"


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
@pytest.mark.parametrize("case", EXTRA_KILL_CASES)
def test_v417_kills_more_than_needed_and_timeout_does_not(case, variant):
    s = scaled_variant(case, *variant)
    old = emulator.run_scenario(s, policy="v4.17", speed=SPEED)
    new = emulator.run_scenario(s, policy="timeout", speed=SPEED)
    assert old.verdict == "panic" or old.extra_kills >= 1, old.summary()
    assert (new.verdict, new.extra_kills) == ("resolved", 0), new.summary()


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_livelock_both_resolve_timeout_later_by_its_deadline(variant):
    s = scaled_variant("livelock", *variant)
    old = emulator.run_scenario(s, policy="v4.17", speed=SPEED)
    new = emulator.run_scenario(s, policy="timeout", speed=SPEED)
    assert old.verdict == new.verdict == "resolved", (old.summary(), new.summary())
    gap = lambda r: r.victims[1].killed_at_s - r.victims[0].killed_at_s
    # v4.17 waits ~1 s (10 tries), timeout its 10 s deadline: ~9 s between them.
    assert 8.0 <= gap(new) - gap(old) <= 10.5


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
@pytest.mark.parametrize("policy", ["v4.17", "timeout", "handover", "v6.6"])
def test_memcg_oom_stays_inside_the_memcg_and_never_panics(policy, variant):
    s = scaled_variant("memcg_tight", *variant)
    r = emulator.run_scenario(s, policy=policy, speed=SPEED)
    assert r.verdict in ("resolved", "hung"), r.summary()
    assert r.kills >= 1 and all(v.name.startswith("locked-") for v in r.victims)
    assert not any("Kernel panic" in line for line in r.log)
