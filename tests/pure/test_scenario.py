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
