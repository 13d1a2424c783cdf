"""Outcomes do not depend on --speed: the same scenario gives the same verdict and kills
at speed 1, 10 and 50, or the run says it lagged.

Real work (faulting, zapping) takes no emulated time, and the run clock waits for
whoever has something due (emulator/runtime/clock.py), so this holds on a busy
machine too: a late wake-up makes a run slower, not different. The scenarios
are the built-ins whose stories are short enough to run at speed 1 here, and
variants with other sizes and durations, each away from a boundary (no hold
that ends the very moment a reaper gives up), since a scenario on a boundary
is a race at any speed.
"""

import pytest

import emulator
from emulator.scenario import load_scenario
from tests.helpers import write_scenario

pytestmark = pytest.mark.timeout(300)
SPEEDS = (1, 10, 50)

# An exit that takes 0.8 s against a reaper that gives up after ~1 s (v4.17) or
# waits 2 s (v6.6); a hold of 1.5 s against the same; page tables freed slowly.
VARIANTS = {
    "mlocked-4x40MB": """
        memory_mb = 256
        min_kills = 1
        [[task]]
        name = "locked"
        count = 4
        exit_unmap_ms_per_mb = 20
          [[task.vma]]
          kind = "anon"
          mb = 40
          mlocked = true
        [[task]]
        name = "antagonist"
        oom_score_adj = -1000
          [[task.vma]]
          kind = "anon"
          mb = 20
          [[task.step]]
          op = "sleep"
          ms = 250
          [[task.step]]
          op = "alloc"
          mb = 110
    """,
    "hold-1.5s": """
        memory_mb = 200
        min_kills = 1
        [[task]]
        name = "holder"
          [[task.vma]]
          kind = "anon"
          mb = 90
          [[task.step]]
          op = "mmap_sem_down"
          [[task.step]]
          op = "busy"
          ms = 1500
          [[task.step]]
          op = "mmap_sem_up"
        [[task]]
        name = "bystander"
          [[task.vma]]
          kind = "anon"
          mb = 50
        [[task]]
        name = "allocator"
        oom_score_adj = -1000        # spared: it holds most of its request when the OOM comes
          [[task.vma]]
          kind = "anon"
          mb = 5
          [[task.step]]
          op = "sleep"
          ms = 200
          [[task.step]]
          op = "alloc"
          mb = 80
    """,
}
BUILTINS = ("mlocked", "memcg_tight", "shared_file", "small_rss")
POLICIES = ("v4.17", "v6.6")


def outcomes(scenario, policy):
    """(speed, verdict, kills, lagged) at each speed."""
    out = []
    for speed in SPEEDS:
        r = emulator.run_scenario(scenario, policy=policy, speed=speed)
        assert r.verdict != "error", r.summary()
        out.append((speed, str(r.verdict), r.kills, r.lagged))
    return out


def assert_same_or_lagged(results):
    settled = {(v, k) for _, v, k, lagged in results if not lagged}
    assert len(settled) <= 1, f"outcomes differ between speeds, and no run says it lagged: {results}"
    assert settled, f"every run lagged: {results}"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", BUILTINS)
def test_a_builtin_has_one_outcome_at_every_speed(name, policy):
    assert_same_or_lagged(outcomes(load_scenario(name), policy))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_has_one_outcome_at_every_speed(tmp_path, name, policy):
    assert_same_or_lagged(outcomes(load_scenario(write_scenario(tmp_path, VARIANTS[name])), policy))
