"""Scenario files: built-ins load, every mistake names the file and the key."""

import pytest

from emulator import ScenarioError, load_scenario
from emulator.scenario import builtin_names
from tests.helpers import write_scenario

pytestmark = pytest.mark.timeout(10)

GOOD = """
    memory_mb = 64
    min_kills = 1
    [[task]]
    name = "t"
    count = 2
      [[task.vma]]
      kind = "anon"
      mb = 8
      [[task.step]]
      op = "alloc"
      mb = 4
"""


def test_builtins_load():
    assert {"mlocked", "mmap_sem_held", "livelock"} <= set(builtin_names())
    for name in builtin_names():
        s = load_scenario(name)
        assert s.name == name and s.description and s.tasks


def test_count_expands_tasks_and_name_defaults_to_file(tmp_path):
    s = load_scenario(write_scenario(tmp_path, GOOD, name="mine"))
    assert s.name == "mine"
    assert [t.name for t in s.tasks] == ["t-0", "t-1"]
    assert s.tasks[0].alloc_mb == 4 and s.tasks[0].initial_mb == 8


@pytest.mark.parametrize("change, key", [
    (("memory_mb = 64", "memory_mb = -64"), "memory_mb"),
    (("mb = 8", "mb = -8"), "task[0].vma[0].mb"),
    (('op = "alloc"', 'op = "fork"'), "task[0].step[0].op"),
    (('kind = "anon"', 'kind = "thp"'), "task[0].vma[0].kind"),
    (("count = 2", "count = 2\n    colour = 3"), "task[0].colour"),
    (("min_kills = 1", "min_kills = 1\nspeed = 3"), "speed"),
    (("mb = 4", "ms = 4"), "task[0].step[0].ms"),
    (("count = 2", "count = 2\n    oom_score_adj = -1001"), "task[0].oom_score_adj"),
    (("memory_mb = 64", "memory_mb = 10"), "memory_mb"),
])
def test_mistakes_name_file_and_key(tmp_path, change, key):
    path = write_scenario(tmp_path, GOOD.replace(*change))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(f"{path}: {key}:")
    assert "\n" not in str(e.value)


def test_bad_toml_and_missing_file(tmp_path):
    path = write_scenario(tmp_path, "memory_mb = = 3")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="no such scenario"):
        load_scenario(str(tmp_path / "nope.toml"))


MMAP_SEM = """
    memory_mb = 64
    [[task]]
    name = "gpu"
    [[task]]
    name = "t"
    step = [{steps}]
"""


@pytest.mark.parametrize("steps, key, message", [
    ('{ op = "mmap_sem_down", mode = "shared" }', "task[1].step[0].mode", "must be one of read, write, not 'shared'"),
    ('{ op = "mmap_sem_down", task = "gpu", mode = 1 }', "task[1].step[0].mode", "must be a non-empty string"),
    ('{ op = "mmap_sem_up", mode = "read" }', "task[1].step[0].mode",
     "mmap_sem_up takes no mode: it releases whatever the task holds on that mmap_sem"),
    ('{ op = "mmap_sem_down", mode = "read" }, { op = "alloc", mb = 0.125 }', "task[1].step[1]",
     "t: an alloc of 0.125 MB while it holds its own mmap_sem for read would deadlock"),
])
def test_mmap_sem_mistakes_are_one_line_naming_the_key(tmp_path, steps, key, message):
    path = write_scenario(tmp_path, MMAP_SEM.format(steps=steps))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(f"{path}: {key}: {message}") and "\n" not in str(e.value)


@pytest.mark.parametrize("steps, modes", [
    ('{ op = "mmap_sem_down" }, { op = "mmap_sem_up" }', ["write", ""]),               # today's default
    ('{ op = "mmap_sem_down", task = "gpu", mode = "read" }', ["read"]),
    # a small alloc only faults (no mmap): under its own read lock, as the kernel's fault does
    ('{ op = "mmap_sem_down", mode = "read" }, { op = "alloc", mb = 0.1 }', ["read", ""]),
    # holding it for write, the mmap is under that hold: no deadlock
    ('{ op = "mmap_sem_down", mode = "write" }, { op = "alloc", mb = 10 }', ["write", ""]),
    # let go first, then a big alloc maps as usual; another task's read hold does not matter
    ('{ op = "mmap_sem_down", mode = "read" }, { op = "mmap_sem_up" }, { op = "alloc", mb = 10 }',
     ["read", "", ""]),
    ('{ op = "mmap_sem_down", task = "gpu", mode = "read" }, { op = "alloc", mb = 10 }', ["read", ""]),
])
def test_mmap_sem_steps_that_load(tmp_path, steps, modes):
    s = load_scenario(write_scenario(tmp_path, MMAP_SEM.format(steps=steps)))
    assert [st.mode for st in s.tasks[1].steps] == modes


LADDER = """
    memory_mb = 512
    [[task]]
    name = "cached"
    count = {count}
    oom_score_adj = {first}
    {last}
    vma = [{{ kind = "anon", mb = 1 }}]
"""


@pytest.mark.parametrize("count, first, last, adjs", [
    (4, 900, 999, [900, 933, 966, 999]),
    (3, 700, 700, [700, 700, 700]),
    (5, 0, -1000, [0, -250, -500, -750, -1000]),       # a ladder may go down
    (2, -1000, 1000, [-1000, 1000]),
])
def test_an_oom_score_adj_ladder_spreads_the_copies_from_first_to_last(tmp_path, count, first, last, adjs):
    text = LADDER.format(count=count, first=first, last=f"oom_score_adj_last = {last}")
    s = load_scenario(write_scenario(tmp_path, text))
    assert [t.oom_score_adj for t in s.tasks] == adjs


def test_a_ladder_of_300_cached_apps_takes_every_value_between_its_ends_in_order(tmp_path):
    s = load_scenario(write_scenario(tmp_path, LADDER.format(count=300, first=900, last="oom_score_adj_last = 999")))
    adjs = [t.oom_score_adj for t in s.tasks]
    assert adjs == sorted(adjs) and adjs[0] == 900 and adjs[-1] == 999
    assert set(adjs) == set(range(900, 1000))          # no rung skipped: 3 apps to a rung, or 4


def test_without_a_ladder_every_copy_has_oom_score_adj(tmp_path):
    s = load_scenario(write_scenario(tmp_path, LADDER.format(count=3, first=500, last="")))
    assert [t.oom_score_adj for t in s.tasks] == [500, 500, 500]


@pytest.mark.parametrize("count, last, says", [
    (1, "999", "task[0].oom_score_adj_last: cached: a ladder needs count >= 2"),
    (3, "1001", "task[0].oom_score_adj_last: must be <= 1000, not 1001"),
    (3, "-1001", "task[0].oom_score_adj_last: must be >= -1000, not -1001"),
    (3, "999.5", "task[0].oom_score_adj_last: must be a whole number, not 999.5"),
    (3, '"999"', "task[0].oom_score_adj_last: must be a whole number, not '999'"),
])
def test_ladder_mistakes_are_one_line_naming_the_key(tmp_path, count, last, says):
    path = write_scenario(tmp_path, LADDER.format(count=count, first=900, last=f"oom_score_adj_last = {last}"))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(f"{path}: {says}")
    assert "\n" not in str(e.value)


def test_a_task_sharing_an_mm_has_no_ladder_of_its_own(tmp_path):
    text = LADDER.format(count=2, first=900, last="") + """
    [[task]]
    name = "helper"
    count = 2
    mm = "cached-1"
    oom_score_adj_last = 999
    """
    path = write_scenario(tmp_path, text)
    with pytest.raises(ScenarioError, match=r"task\[1\]\.oom_score_adj_last: helper: shares the mm"):
        load_scenario(path)


SIGTERM_TASK = """
    memory_mb = 64
    [[task]]
    name = "t"
    {line}
"""


@pytest.mark.parametrize("line, answer", [("", "default"), ('sigterm = "default"', "default"),
                                          ('sigterm = "ignore"', "ignore"), ("sigterm = 250", 250.0)])
def test_a_task_says_how_it_answers_sigterm(tmp_path, line, answer):
    (t,) = load_scenario(write_scenario(tmp_path, SIGTERM_TASK.format(line=line))).tasks
    assert t.sigterm == answer


@pytest.mark.parametrize("value, says", [
    ('"term"', "task[0].sigterm: must be one of default, ignore, not 'term'"),
    ("-5", "task[0].sigterm: must be >= 0, not -5"),
    ("true", "task[0].sigterm: must be a number, not true"),
])
def test_sigterm_mistakes_are_one_line_naming_the_key(tmp_path, value, says):
    path = write_scenario(tmp_path, SIGTERM_TASK.format(line=f"sigterm = {value}"))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(f"{path}: {says}"), str(e.value)
    assert "\n" not in str(e.value)
