"""Every number a scenario or ``--set`` gives has a bound: just inside loads, just
outside is one line naming the file and the key (exit 2 from the command line)."""

import pytest

from emulator import ScenarioError, load_scenario
from emulator.tools.cli import build_parser
from emulator.errors import UsageError
from emulator.kernel.mm_types import MAX_MEMCGS, MAX_VMAS
from emulator.policies import POLICIES, ReaperPolicy, V417, get_policy
from emulator.scenario import MAX_LOCKS, MAX_STEPS, MAX_TASKS
from tests.helpers import scenario_text, write_scenario

pytestmark = pytest.mark.timeout(60)

def refused(tmp_path, text: str, key: str, says: str = "") -> str:
    path = write_scenario(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert says in msg and "\n" not in msg, msg
    return msg


# (what changes, just inside, just outside, the key named, what the message says)
BOUNDS = [
    ("memory_mb", 1 << 20, (1 << 20) + 1, "memory_mb", "<= 1048576"),
    ("memory_mb", 64, 64.0, "memory_mb", "whole number"),
    ("memory_mb", 64, "256.5", "memory_mb", "whole number, not 256.5"),
    ("memory_mb", 64, "1e15", "memory_mb", "whole number"),
    ("limit_mb", 64, 65, "memcg[0].limit_mb", "<= 64 (memory_mb)"),
    ("limit_mb", 1, 0, "memcg[0].limit_mb", ">= 1"),
    ("limit_mb", 2, 1.5, "memcg[0].limit_mb", "whole number"),
    ("run_deadline_s", 86400, 86400.001, "run_deadline_s", "<= 86400"),
    ("run_deadline_s", 1e-3, 0, "run_deadline_s", "> 0"),
    ("run_deadline_s", 60, "1e12", "run_deadline_s", "<= 86400"),
    ("ms", 86_400_000, 86_400_000.5, "task[0].step[0].ms", "<= 86400000 (a day)"),
    ("ms", 0, -1e-9, "task[0].step[0].ms", ">= 0"),
    ("ms", 10, "1e308", "task[0].step[0].ms", "<= 86400000"),
    ("ms", 10, "inf", "task[0].step[0].ms", "finite"),
    ("ms", 10, "nan", "task[0].step[0].ms", "finite"),
    ("pgt", 86_400_000, 86_400_001, "task[0].exit_free_pgtables_ms", "<= 86400000"),
    ("unmap", 1_350_000, 1_350_000.5, "task[0].exit_unmap_ms_per_mb", "<= 1350000 (unmapping all 64 MB"),
    ("vma_mb", 63, 64.5, "task[0].vma[0].mb", "<= 64 (memory_mb)"),
    ("vma_mb", 1, "1e308", "task[0].vma[0].mb", "<= 64"),
    ("pgtables_mb", 63, 64.5, "task[0].pgtables_mb", "<= 64"),
    ("alloc_mb", 64, 64.001, "task[0].step[1].mb", "<= 64 (memory_mb)"),
    ("alloc_mb", 1, "1e308", "task[0].step[1].mb", "<= 64"),
    ("alloc_mb", 1e-9, 0, "task[0].step[1].mb", "> 0"),
    ("count", 1000, 1001, "task[0].count", "<= 1000"),
    ("adj", -1000, -1001, "task[0].oom_score_adj", ">= -1000"),
    ("adj", 1000, 1001, "task[0].oom_score_adj", "<= 1000"),
    ("min_kills", 1, 2, "min_kills", "<= 1 (the number of tasks)"),
    ("min_kills", 0, -1, "min_kills", ">= 0"),
    ("kills", 1, 2, "expected.v4.17.kills", "<= 1 (the number of tasks)"),
    ("kills", -1, -2, "expected.v4.17.kills", ">= -1"),
    ("description", '"' + "é" * 2048 + '"', '"' + "é" * 2048 + 'a"', "description", "at most 4096 bytes"),
    ("description", '"""\nline\n\tline\n"""', '"a\\u001b[31m"', "description", "no control characters"),
    ("why", '"' + "w" * 4096 + '"', '"' + "w" * 4097 + '"', "expected.v4.17.why", "at most 4096 bytes"),
    ("why", '"w"', '"a\\nb"', "expected.v4.17.why", "no control characters"),
]


@pytest.mark.parametrize("field, inside, outside, key, says", BOUNDS,
                         ids=[f"{b[0]}={b[2]}" for b in BOUNDS])
def test_a_bound_holds_just_inside_and_refuses_just_outside(tmp_path, field, inside, outside, key, says):
    # room for 1000 tasks, or for the whole zone in one alloc
    extra = {"count": dict(vma_mb=0, alloc_mb=0.001), "alloc_mb": dict(vma_mb=0)}.get(field, {})
    s = load_scenario(write_scenario(tmp_path, scenario_text(**{field: inside}, **extra), name="inside"))
    assert s.tasks
    refused(tmp_path, scenario_text(**{field: outside}, **extra), key, says)


def test_a_tasks_allocs_in_all_fit_the_zone(tmp_path):
    """alloc grows one VMA whose room is the zone: the steps' sum must fit it."""
    def text(second):
        return scenario_text(vma_mb=0).replace('{ op = "alloc", mb = 1 }]',
                                               f'{{ op = "alloc", mb = 32 }}, {{ op = "alloc", mb = {second} }}]')
    assert load_scenario(write_scenario(tmp_path, text(32), name="inside")).tasks[0].alloc_mb == 64
    refused(tmp_path, text(32.01), "task[0].step", "its allocs add up to 16387 pages, more than the zone's 16384")


def test_at_most_1000_tasks_in_all(tmp_path):
    def two(n):
        return scenario_text(count=500, vma_mb=0, alloc_mb=0.001) + f'[[task]]\nname = "u"\ncount = {n}\n'
    assert len(load_scenario(write_scenario(tmp_path, two(500), name="inside")).tasks) == MAX_TASKS
    refused(tmp_path, two(501), "task[1].count", "more than 1000 tasks")


def test_the_mms_of_all_tasks_fit_the_address_space(tmp_path):
    """Each mm is mapped whole with room for the zone: tasks x memory_mb at most 64 TiB."""
    def text(n):
        return scenario_text(memory_mb=1 << 20, limit_mb=1, count=n, vma_mb=0, alloc_mb=1)
    assert len(load_scenario(write_scenario(tmp_path, text(63), name="inside")).tasks) == 63
    refused(tmp_path, text(64), "memory_mb", "64 tasks, each mapping room for the whole zone (1048576 MB), map more than the 64 TiB")


def _vmas(n, anon=True):
    kinds = (["anon"] if anon else []) + ["file_shared"] * (n - (1 if anon else 0))
    return "vma = [" + ", ".join(f'{{ kind = "{k}", mb = 0.1 }}' for k in kinds) + "]"


def test_vmas_fit_the_mm_headers_table_with_the_one_the_run_adds(tmp_path):
    def text(n, anon):
        return scenario_text().replace('vma = [{ kind = "anon", mb = 1 }]', _vmas(n, anon))
    assert len(load_scenario(write_scenario(tmp_path, text(MAX_VMAS, True), name="a")).tasks[0].vmas) == MAX_VMAS
    refused(tmp_path, text(MAX_VMAS + 1, True), "task[0].vma", f"at most {MAX_VMAS} VMAs")
    # without an anon VMA the run adds one for alloc (supervisor._layout)
    assert load_scenario(write_scenario(tmp_path, text(MAX_VMAS - 1, False), name="b")).tasks
    refused(tmp_path, text(MAX_VMAS, False), "task[0].vma", f"at most {MAX_VMAS - 1} VMAs without an anon one")


def test_steps_lock_names_and_memcgs_are_bounded(tmp_path):
    sleeps = lambda n: scenario_text().replace('{ op = "sleep", ms = 10 }, ', '{ op = "sleep", ms = 1 }, ' * (n - 1))
    assert len(load_scenario(write_scenario(tmp_path, sleeps(MAX_STEPS), name="a")).tasks[0].steps) == MAX_STEPS
    refused(tmp_path, sleeps(MAX_STEPS + 1), "task[0].step", f"at most {MAX_STEPS} steps")

    locks = lambda n: scenario_text().replace('{ op = "sleep", ms = 10 }, ', "".join(
        f'{{ op = "lock", name = "L{i}" }}, ' for i in range(n)))
    assert len(load_scenario(write_scenario(tmp_path, locks(MAX_LOCKS), name="b")).lock_names) == MAX_LOCKS
    refused(tmp_path, locks(MAX_LOCKS + 1), "task.step.name", f"at most {MAX_LOCKS} distinct lock names")

    memcgs = lambda n: scenario_text() + "".join(f'[[memcg]]\nname = "x{i}"\nlimit_mb = 1\n' for i in range(n - 1))
    assert len(load_scenario(write_scenario(tmp_path, memcgs(MAX_MEMCGS - 1), name="c")).memcgs) == MAX_MEMCGS - 1
    refused(tmp_path, memcgs(MAX_MEMCGS), "memcg", f"at most {MAX_MEMCGS - 1} memory cgroups")


# Where a comm-like name goes: (text in scenario_text() to replace, its replacement, the key)
NAMED = [('name = "t"', 'name = "{n}"', "task[0].name"),
         ('name = "m"\n', 'name = "{n}"\n', "memcg[0].name"),
         ('{ op = "sleep", ms = 10 }', '{{ op = "lock", name = "{n}" }}', "task[0].step[0].name")]


@pytest.mark.parametrize("name", ["abcdefghijklmnop", "é", "a b", "a.b", ""])
@pytest.mark.parametrize("old, new, key", NAMED, ids=[k for _, _, k in NAMED])
def test_task_memcg_and_lock_names_are_ascii_comms(tmp_path, old, new, key, name):
    ok = scenario_text().replace(old, new.format(n="abcdefghijklmno"))
    if key == "memcg[0].name":
        ok = ok.replace('memcg = "m"', 'memcg = "abcdefghijklmno"')
    assert load_scenario(write_scenario(tmp_path, ok, name="ok"))
    says = "non-empty string" if not name else "use 1 to 15 of A-Z a-z 0-9 - _"
    refused(tmp_path, scenario_text().replace(old, new.format(n=name)), key, says)


def test_the_scenario_name_fits_48_bytes_of_utf8_and_is_printable(tmp_path):
    assert load_scenario(write_scenario(tmp_path, scenario_text(name='"' + "é" * 24 + '"'), name="a")).name == "é" * 24
    refused(tmp_path, scenario_text(name='"' + "é" * 24 + 'x"'), "name", "at most 48 bytes of UTF-8, not 49")
    refused(tmp_path, scenario_text(name='"' + "🙂" * 13 + '"'), "name", "at most 48 bytes of UTF-8, not 52")
    refused(tmp_path, scenario_text(name='"a\\tb"'), "name", "printable")
    refused(tmp_path, scenario_text(name='"a\\u202eb"'), "name", "printable")
    refused(tmp_path, scenario_text(name='"../etc"'), "name", "must not contain '/'")
    refused(tmp_path, scenario_text(name='"  "'), "name", "must not be blank")


def test_a_default_name_that_does_not_qualify_says_to_set_name(tmp_path):
    text = scenario_text().replace('name = "bounds"\n', "")
    assert load_scenario(write_scenario(tmp_path, text, name="x" * 48)).name == "x" * 48
    path = write_scenario(tmp_path, text, name="y" * 49)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(f"{path}: name: the default, the file name 'yyy")
    assert str(e.value).endswith('at most 48 bytes of UTF-8, not 49: set name = "..." in the file')


@pytest.mark.parametrize("text, key", [
    ('memory_mb = { a = 1 }\n[[task]]\n', "memory_mb"),
    ('memory_mb = 1979-05-27T07:32:00Z\n[[task]]\n', "memory_mb"),
    ('memory_mb = 64\ntask = "t"\n', "task"),
    ('memory_mb = 64\ntask = [[1, 2], [3]]\n', "task"),
    ('memory_mb = 64\nname = 07:32:00\n[[task]]\n', "name"),
    ('memory_mb = 64\ndescription = [1]\n[[task]]\n', "description"),
    ('memory_mb = 64\nexpected = [1]\n[[task]]\n', "expected"),
    ('memory_mb = 64\n[[task]]\nvma = [{ kind = "anon", mb = true }]\n', "task[0].vma[0].mb"),
    ('memory_mb = 64\n[[task]]\nstep = [{ op = ["alloc"] }]\n', "task[0].step[0].op"),
    ('memory_mb = 64\n[[task]]\nstep = [{ op = "mmap_sem_down", task = 1 }]\n', "task[0].step[0].task"),
    ('memory_mb = ' + "9" * 30 + '\n[[task]]\n', "memory_mb"),
])
def test_a_value_of_the_wrong_type_is_a_scenario_error(tmp_path, text, key):
    refused(tmp_path, text, key)


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"a = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b"memory_mb = " + b"9" * 5000, "not valid TOML"),
    (b"# " + b"x" * (1 << 20), "larger than 1 MiB"),
    (b"memory_mb = 64\n\x1b[31m = 1\n", "not valid TOML"),
])
def test_any_file_content_is_a_scenario_error_in_one_line(tmp_path, content, says):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ScenarioError) as e:
        load_scenario(str(path))
    assert str(e.value).startswith(f"{path}: ") and says in str(e.value) and "\n" not in str(e.value)
    assert len(str(e.value)) < 400


def test_keys_and_values_in_messages_are_escaped_and_short(tmp_path):
    msg = refused(tmp_path, scenario_text() + '"a\\nb" = 1\n', "expected.a\\nb")
    msg = refused(tmp_path, scenario_text(ms='"' + "z" * 100_000 + '"'), "task[0].step[0].ms", "must be a number")
    assert len(msg) < 400


# -- --set: every constant of every policy has a range ----------------------------

@pytest.mark.parametrize("policy, key, inside, outside, says", [
    ("v4.17", "max_oom_reap_retries", "1000", "2.7", "must be a whole number from 1 to 1000"),
    ("v4.17", "max_oom_reap_retries", "1", "0", "must be a whole number from 1 to 1000"),
    ("v4.17", "max_oom_reap_retries", 1000, 1001, "must be a whole number from 1 to 1000"),
    ("v4.17", "reap_retry_interval_s", "0.004", "0.0039", "from 0.004 to 86400"),
    ("v4.17", "blockable_notifier_sleep_s", "0", "-0.001", "from 0 to 86400"),
    ("timeout", "reap_pass_interval_s", "0.004", "0", "from 0.004 to 86400"),
    ("timeout", "reap_timeout_s", "86400", "86400.5", "from 0 to 86400"),
    ("timeout", "reap_timeout_s", 0, "1e300", "from 0 to 86400"),
    ("handover", "max_oom_reap_retries", "3", "3.0", "whole number"),
    ("handover", "reap_retry_interval_s", 86400, "nan", "must be >= 0 and finite"),
    ("v6.6", "oom_reaper_delay_s", "0", "-1", "from 0 to 86400"),
    ("v6.6", "max_oom_reap_retries", "10", True, "not a number"),
])
def test_set_takes_a_value_in_the_constants_range(policy, key, inside, outside, says):
    got = get_policy(policy, {key: inside}).consts[key]
    assert got == float(inside) and type(got) is type(get_policy(policy).DEFAULTS[key])
    with pytest.raises(UsageError, match=r"^--set ") as e:
        get_policy(policy, {key: outside})
    assert says in str(e.value) and "\n" not in str(e.value)


def test_every_default_lies_in_its_range():
    for cls in POLICIES.values():
        assert set(cls.LIMITS) >= set(cls.DEFAULTS), cls.name
        for key, value in cls.DEFAULTS.items():
            assert get_policy(cls.name, {key: str(value)}).consts[key] == value


class Mine(ReaperPolicy):
    """A user's policy that declares only DEFAULTS: its constants get ranges by type."""
    name = "mine"
    DEFAULTS = {"tries": 3, "pause_s": 0.5}


class MineToo(V417):
    DEFAULTS = dict(V417.DEFAULTS, max_oom_reap_retries=1)


def test_a_policy_without_limits_gets_ranges_by_the_type_of_its_defaults():
    assert get_policy(Mine, {"tries": "7", "pause_s": "0"}).consts == {"tries": 7, "pause_s": 0.0}
    for bad in ({"tries": "2.5"}, {"tries": "-1"}, {"pause_s": "-1"}, {"pause_s": "86401"}, {"pause_s": "x"}):
        with pytest.raises(UsageError):
            get_policy(Mine, bad)
    with pytest.raises(UsageError, match="whole number from 1 to 1000"):     # inherited from V417
        get_policy(MineToo, {"max_oom_reap_retries": "0"})


def test_speed_at_its_bounds_is_accepted():
    for speed in ("0.1", "1e6"):
        assert build_parser().parse_args(["run", "mlocked", "--speed", speed]).speed == float(speed)
