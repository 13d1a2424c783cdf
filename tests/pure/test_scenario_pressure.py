"""The scenario keys for stalls (nr_cpus, reclaim_ms_per_mb, refault_ms_per_mb) and the
touch step: their defaults, and each mistake as one line naming the key."""

import pathlib

import pytest

from emulator import ScenarioError
from emulator.scenario import NR_CPUS, RECLAIM_MS_PER_MB, REFAULT_MS_PER_MB, builtin_names, load_scenario, parse_scenario

pytestmark = pytest.mark.timeout(10)


def scenario(step=None, **top):
    task = {"name": "reader", "vma": [{"kind": "anon", "mb": 4}, {"kind": "file_shared", "mb": 8},
                                      {"kind": "shmem", "mb": 2}, {"kind": "anon", "mb": 1, "mlocked": True}]}
    if step is not None:
        task["step"] = [step]
    return parse_scenario({"memory_mb": 64, "task": [task], **top}, source="s.toml")


def test_defaults_keep_the_builtins_as_they_were():
    s = scenario()
    assert (s.nr_cpus, s.reclaim_ms_per_mb, s.refault_ms_per_mb) == (NR_CPUS, RECLAIM_MS_PER_MB, REFAULT_MS_PER_MB)
    assert s.swap_mb == 0, "no swap device unless asked"
    assert RECLAIM_MS_PER_MB == 0, "reclaim costs no emulated time unless asked: the built-ins' outcomes stand"
    for name in builtin_names():          # a built-in that refaults says at what cost (slow_leak)
        sc = load_scenario(name)
        if any(st.op == "touch" for t in sc.tasks for st in t.steps):
            assert "refault_ms_per_mb" in pathlib.Path(sc.source).read_text(), name


@pytest.mark.parametrize("step, vma, mb, repeat", [
    ({"op": "touch", "vma": 1}, 1, 8.0, 1),
    ({"op": "touch", "vma": "file_shared", "mb": 2, "repeat": 50, "ms": 10}, 1, 2.0, 50),
    ({"op": "touch", "vma": "anon"}, 0, 64.0, 1),          # anon: all it holds by then (swap-ins)
    ({"op": "touch", "vma": 0, "mb": 30}, 0, 30.0, 1),     # more than declared: alloc grows it
])
def test_a_touch_names_a_file_vma_by_index_or_kind(step, vma, mb, repeat):
    st = scenario(step).tasks[0].steps[0]
    assert (st.op, st.vma, st.mb, st.repeat) == ("touch", vma, mb, repeat)


def test_anon_names_the_vma_alloc_grows_when_none_is_declared():
    s = parse_scenario({"memory_mb": 64, "task": [{"name": "a", "vma": [{"kind": "file_shared", "mb": 8}],
                                                   "step": [{"op": "touch", "vma": "anon"}]}]})
    assert s.tasks[0].steps[0].vma == 1


def test_a_task_sharing_an_mm_touches_nothing_of_its_own():
    with pytest.raises(ScenarioError, match=r"task\[1\]\.step\[0\]\.vma: t2 shares the mm of 't1'"):
        parse_scenario({"memory_mb": 64, "task": [{"name": "t1", "vma": [{"kind": "anon", "mb": 4}]},
                                                  {"name": "t2", "mm": "t1", "step": [{"op": "touch", "vma": "anon"}]}]})


@pytest.mark.parametrize("step, top, key, says", [
    ({"op": "touch", "vma": 2}, {}, "task[0].step[0].vma", "a touch reads a file VMA again"),
    ({"op": "touch", "vma": 3}, {}, "task[0].step[0].vma", "not mlocked anon"),
    ({"op": "touch", "vma": "file_private"}, {}, "task[0].step[0].vma", "has no VMA of kind 'file_private'"),
    ({"op": "touch", "vma": 4}, {}, "task[0].step[0].vma", "must be <= 3 (the task's last VMA)"),
    ({"op": "touch", "vma": 1, "mb": 9}, {}, "task[0].step[0].mb", "must be <= 8 (the VMA's mb)"),
    ({"op": "touch", "vma": 1, "repeat": 0}, {}, "task[0].step[0].repeat", "must be >= 1"),
    ({"op": "touch", "vma": 1, "repeat": 1000, "ms": 100_000}, {}, "task[0].step[0].ms", "at most a day"),
    ({"op": "touch"}, {}, "task[0].step[0].vma", "is required"),
    (None, {"nr_cpus": 0}, "nr_cpus", "must be >= 1"),
    (None, {"nr_cpus": 2.5}, "nr_cpus", "must be a whole number"),
    (None, {"reclaim_ms_per_mb": -1}, "reclaim_ms_per_mb", "must be >= 0"),
    (None, {"refault_ms_per_mb": 1e9}, "refault_ms_per_mb", "at most a day"),
    (None, {"swap_mb": 1.5}, "swap_mb", "must be a whole number"),
    (None, {"swap_mb_per_s": 0}, "swap_mb_per_s", "must be > 0"),
])
def test_mistakes_are_one_line_naming_the_key(step, top, key, says):
    with pytest.raises(ScenarioError) as e:
        scenario(step, **top)
    msg = str(e.value)
    assert "\n" not in msg and key in msg and says in msg, msg


def test_the_docs_name_every_top_level_key_and_op():
    """scenario-format.md's every-key example and its table of keys know every top-level
    key and every op the loader takes."""
    import os
    import re

    from emulator.scenario import _TOP_KEYS, OPS
    from tests.helpers import REPO
    with open(os.path.join(REPO, "docs", "scenario-format.md")) as f:
        doc = f.read()
    example = re.search(r"## A file that uses every key.*?```toml\n(.*?)```", doc, re.S).group(1)
    table = doc[doc.index("## Every key and its bounds"):]
    for key in _TOP_KEYS:
        assert re.search(rf"^\[*{key}\]*\b", example, re.M), key
        assert re.search(rf"`\[*{key}\]*`", table), key
    for op in OPS:
        assert f'op = "{op}"' in example and f"`{op}`" in table, op
