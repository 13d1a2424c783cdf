"""Page cache and shmem in a scenario file: how VMAs become objects, and every mistake
with the new keys in one line naming the key."""

import pytest

from emulator import ScenarioError, load_scenario
from tests.helpers import write_scenario

pytestmark = pytest.mark.timeout(10)

BASE = """
    memory_mb = 256
    {top}
    [[memcg]]
    name = "web"
    limit_mb = 200
    [[task]]
    name = "a"
    memcg = "web"
    count = 2
    vma = [{{ kind = "shmem", mb = 30, object = "cache" }}, {{ kind = "file_shared", mb = 20, dirty_mb = 5 }}]
    [[task]]
    name = "b"
    vma = [{{ kind = "shmem", mb = 40, object = "cache" }}, {{ kind = "shmem", mb = 3 }},
           {{ kind = "file_private", mb = 2 }}]
    step = [{step}]
"""


def load(tmp_path, top="", step='{ op = "shm_unlink", name = "cache" }', base=BASE):
    return load_scenario(write_scenario(tmp_path, base.format(top=top, step=step)))


def test_vmas_become_objects_shared_by_name_each_file_its_own(tmp_path):
    s = load(tmp_path)
    kinds = [(o.kind, o.pages // 256, o.dirty_pages // 256, o.memcg, o.name) for o in s.objects]
    assert kinds == [
        ("shmem", 40, 0, "web", "cache"),      # the largest mapper's size, the first mapper's memcg
        ("file", 20, 5, "web", ""),            # a-0's file
        ("file", 20, 5, "web", ""),            # a-1's: each copy maps a file of its own
        ("shmem", 3, 0, "", ""),               # anonymous shmem: b's own
        ("file", 2, 0, "", ""),
    ]
    assert [t.vma_objects for t in s.tasks] == [(0, 1), (0, 2), (0, 3, 4)]
    assert s.writeback_mb_per_s == 100


def test_a_named_object_counts_once_against_memory_and_its_memcg(tmp_path):
    # web holds 40 (cache) + 2 x 20 (files) = 80 MB; a second copy of cache would make it 110
    text = BASE.replace("limit_mb = 200", "limit_mb = 80")
    load(tmp_path, base=text)
    with pytest.raises(ScenarioError, match="web: its tasks need 20480 pages at start"):
        load(tmp_path, base=text.replace("limit_mb = 80", "limit_mb = 79"))


@pytest.mark.parametrize("top, step, key, message", [
    ("", '{ op = "shm_unlink", name = "nope" }', "task.step.name", "no shmem VMA maps an object called 'nope'"),
    ("", '{ op = "shm_truncate", name = "cache2" }', "task.step.name", "no shmem VMA maps an object"),
    ("", '{ op = "shm_truncate" }', "task[1].step[0].name", "is required"),
    ("writeback_mb_per_s = -5", "", "writeback_mb_per_s", "must be > 0"),
    ("writeback_mb_per_s = 0", "", "writeback_mb_per_s", "must be > 0"),
    ("writeback_mb_per_s = 'fast'", "", "writeback_mb_per_s", "must be a number"),
])
def test_mistakes_with_objects_and_writeback(tmp_path, top, step, key, message):
    with pytest.raises(ScenarioError) as e:
        load(tmp_path, top=top, step=step)
    assert key in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("vma, key, message", [
    ('{ kind = "anon", mb = 5, dirty_mb = 1 }', "dirty_mb", "only a file_shared VMA has dirty page cache"),
    ('{ kind = "file_private", mb = 5, dirty_mb = 1 }', "dirty_mb", "a written private page is anon"),
    ('{ kind = "file_shared", mb = 5, dirty_mb = 6 }', "dirty_mb", "must be <= 5"),
    ('{ kind = "file_shared", mb = 5, dirty_mb = -1 }', "dirty_mb", "must be >= 0"),
    ('{ kind = "file_shared", mb = 5, object = "x" }', "object", "only a shmem VMA maps a named object"),
    ('{ kind = "shmem", mb = 5, object = "a b" }', "object", "use 1 to 15 of"),
    ('{ kind = "shmem", mb = 5, object = 3 }', "object", "must be a non-empty string"),
])
def test_mistakes_in_a_vma(tmp_path, vma, key, message):
    text = f"""
        memory_mb = 64
        [[task]]
        vma = [{vma}]
    """
    with pytest.raises(ScenarioError) as e:
        load_scenario(write_scenario(tmp_path, text))
    assert f"vma[0].{key}" in str(e.value) and message in str(e.value), str(e.value)
