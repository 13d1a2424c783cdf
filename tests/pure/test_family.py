"""Generated families (emulator/tools/family.py): reproducible members of one mechanism."""

import pytest

from emulator import UsageError, load_scenario
from emulator.tools import family

pytestmark = pytest.mark.timeout(10)

FAMILY = """
[family]
base = "mmap_sem_held"
count = 5
seed = {seed}
mb = [0.5, 2.0]
busy_ms = [1.0, 4.0]
"""


def write(tmp_path, text, name="fam.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def busy(s):
    return [st.ms for t in s.tasks for st in t.steps if st.op == "busy"]


def test_a_family_is_its_seed_s_and_scales_sizes_and_d_state_apart(tmp_path):
    base = load_scenario("mmap_sem_held")
    a = family.load_family(write(tmp_path, FAMILY.format(seed=7)))
    again = family.load_family(write(tmp_path, FAMILY.format(seed=7), "again.toml"))
    other = family.load_family(write(tmp_path, FAMILY.format(seed=8), "other.toml"))
    assert [s.name for s in a] == [f"mmap_sem_held~{i}" for i in range(5)]
    assert [(s.memory_mb, busy(s)) for s in a] == [(s.memory_mb, busy(s)) for s in again]
    assert [(s.memory_mb, busy(s)) for s in a] != [(s.memory_mb, busy(s)) for s in other]
    for s in a:
        f_mb = s.tasks[0].vmas[0].mb / base.tasks[0].vmas[0].mb
        f_busy = busy(s)[0] / busy(base)[0]
        assert 0.5 <= f_mb <= 2.0 and 1.0 <= f_busy <= 4.0
        assert s.memory_mb == pytest.approx(base.memory_mb * f_mb, abs=1)     # the machine grows with it
        assert s.min_kills == base.min_kills and s.expected == {}
        assert s.run_deadline_s == pytest.approx(base.run_deadline_s * f_busy, rel=1e-3)   # stretched with it


def test_a_member_s_deadline_is_never_shorter_than_its_base_s(tmp_path):
    base = load_scenario("mmap_sem_held")
    shrunk = family.load_family(write(tmp_path, FAMILY.format(seed=1).replace("[1.0, 4.0]", "[0.1, 0.5]")))
    assert all(s.run_deadline_s == base.run_deadline_s for s in shrunk)


@pytest.mark.parametrize("text, says", [
    ("[family]\nbase = \"mlocked\"\n", "family.count: a whole number from 1 to 10000, not None"),
    ("[family]\nbase = \"mlocked\"\ncount = 2\nmb = [2, 1]\n", "family.mb: must be [low, high]"),
    ("[family]\nbase = \"mlocked\"\ncount = 2\ntask_count = [1, 2.5]\n", "family.task_count: must be [low, high], whole"),
    ("[family]\nbase = \"mlocked\"\ncount = 2\nspeed = 3\n", "family.speed: not a family key"),
    ("[family]\nbase = \"nope.toml\"\ncount = 2\n", "family.base 'nope.toml': No such file or directory"),
    ("[family]\nbase = \"mlocked\"\ncount = 2\n[other]\n", "a family file holds one [family] table"),
])
def test_family_mistakes_are_one_line(tmp_path, text, says):
    path = write(tmp_path, text)
    assert family.is_family(path)
    with pytest.raises(UsageError) as e:
        family.load_family(path)
    assert str(e.value).startswith(f"{path}: {says}"), str(e.value)
    assert "\n" not in str(e.value)


def test_the_demo_families_load():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    for path in sorted((root / "examples" / "families").glob("*.toml")):
        assert family.is_family(str(path)) and len(family.load_family(str(path))) >= 3, path
