"""What a host test needs (root, a writable memory controller, /dev/kmsg), checked once;
and no memory cgroup of this session's prefix left after any test."""

from __future__ import annotations

import functools
import os

import pytest

from emulator.errors import EnvironmentProblem
from emulator.host import cgroup
from emulator.runtime import names


@functools.cache
def _memcg_missing() -> str | None:
    """Why memory cgroups cannot be made here, or None."""
    if os.geteuid() != 0:
        return "host tests need root (memory cgroups)"
    try:
        h = cgroup.find_memory_hierarchy()
    except EnvironmentProblem as e:
        return str(e)
    probe = os.path.join(h.root, f"{names.PREFIX}.probe{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as e:
        return f"the memory controller at {h.root} is not writable: {e.strerror}"
    return None


@functools.cache
def _kmsg_missing() -> str | None:
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
    except OSError as e:
        return f"/dev/kmsg cannot be read: {e.strerror}"
    return None


@pytest.fixture
def memcg_ok():
    why = _memcg_missing()
    if why:
        pytest.skip(why)


@pytest.fixture
def kmsg_ok():
    why = _kmsg_missing()
    if why:
        pytest.skip(why)


@pytest.fixture(autouse=True)
def no_group_left():
    """A group of this session's prefix that appeared during the test and is still there
    is removed, then reported as a failure."""
    before = set(cgroup.leftover_groups(names.PREFIX))
    yield
    new = [path for run_id, path in cgroup.leftover_groups(names.PREFIX) if (run_id, path) not in before]
    for path in new:
        cgroup.remove_tree(path)
    assert not new, f"memory cgroups left behind: {new}"
