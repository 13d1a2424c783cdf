"""What runs, ps, inject, stop and cleanup read is checked: segments laid out wrong,
opened without any process (the checks in Mm and Zone, the fd bookkeeping).
(A held run driven through the command line: tests/cli/test_live_trust.py.)
"""

import os

import posix_ipc
import pytest

from emulator.runtime import names
from emulator.kernel.mm_types import MmLayout
from emulator.runtime.mm import HEADER_SIZE, MM_HEADER, VMA_RECORD, Mm
from emulator.runtime.shm_trust import open_checked
from emulator.runtime.zone import ZONE_HEADER, Zone, zone_size
from tests.helpers import make_zone, open_fds, shm, unlink_zone

pytestmark = pytest.mark.timeout(120)



VMA_0 = MM_HEADER.offset("vmas")


def test_names_cut_inside_a_utf8_character_read_back_whole(dead_pid):
    """The zone keeps 48 bytes of the scenario's name and an mm 16 of its comm: a cut
    in the middle of a character loses that character, nothing raises."""
    run_id = f"{dead_pid}-0e0e"
    zone = make_zone(run_id, dead_pid, scenario="a" + "é" * 30)      # 61 bytes: cut at 48
    mm = Mm(names.mm(run_id, 0), create=MmLayout((("anon", 0, 4),)))
    try:
        mm.comm = "xé" + "ü" * 10                                       # 23 bytes: cut at 16
        again = Zone(run_id)
        try:
            assert again.facts().scenario == "a" + "é" * 23
        finally:
            again.close()
        assert mm.comm == "xé" + "ü" * 6
        MM_HEADER.set(mm.map, "comm", b"\xff\xfe" + b"\x80" * 14)          # not UTF-8 at all
        assert mm.comm == "\ufffd" * 16
    finally:
        mm.close()
        zone.close()
        posix_ipc.unlink_shared_memory(names.mm(run_id, 0))
        unlink_zone(run_id)


VMA_0 = MM_HEADER.offset("vmas")


@pytest.mark.parametrize("damage, why", [
    (lambda m: MM_HEADER.set(m, "magic", b"XXXX"), "no magic"),
    (lambda m: MM_HEADER.set(m, "nr_vmas", 500), "header fields out of range"),
    (lambda m: MM_HEADER.set(m, "pid", -7), "header fields out of range"),
    (lambda m: MM_HEADER.set(m, "state", 77), "header fields out of range"),
    (lambda m: VMA_RECORD.set(m, "kind", 99, VMA_0), "VMA 0 out of range"),
    (lambda m: VMA_RECORD.set(m, "capacity", -1, VMA_0), "VMA 0 out of range"),
    (lambda m: VMA_RECORD.set(m, "capacity", 5, VMA_0), "its VMA table says"),
    (lambda m: VMA_RECORD.set(m, "nr_pages", 9, VMA_0), "VMA 0 out of range"),     # more than its capacity
])
def test_an_mm_not_laid_out_by_oomemu_is_refused_and_closed(dead_pid, damage, why):
    run_id = f"{dead_pid}-0e0f"
    mm = Mm(names.mm(run_id, 0), create=MmLayout((("anon", 0, 4),)))
    try:
        damage(mm.map)
        before = open_fds()
        for _ in range(20):
            fd = open_checked(shm(names.mm(run_id, 0)), os.getuid())
            with pytest.raises(ValueError, match=why):
                Mm(names.mm(run_id, 0), fd=fd)
            with pytest.raises(ValueError, match=why):
                Mm(names.mm(run_id, 0))                                  # the workers' way in
        assert open_fds() == before
    finally:
        mm.close()
        posix_ipc.unlink_shared_memory(names.mm(run_id, 0))


def test_an_mm_whose_size_disagrees_with_its_vma_table_is_refused(dead_pid):
    run_id = f"{dead_pid}-0e10"
    mm = Mm(names.mm(run_id, 0), create=MmLayout((("anon", 0, 4),)))
    try:
        os.ftruncate(mm.fd, HEADER_SIZE + 40 * 4096)
        fd = open_checked(shm(names.mm(run_id, 0)), os.getuid())
        with pytest.raises(ValueError, match="VMA table says"):
            Mm(names.mm(run_id, 0), fd=fd)
    finally:
        mm.close()
        posix_ipc.unlink_shared_memory(names.mm(run_id, 0))


def test_a_zone_must_name_the_run_ids_supervisor_and_be_the_size_of_its_task_table(dead_pid):
    run_id = f"{dead_pid}-0e11"
    zone = make_zone(run_id, dead_pid + 1)                   # another pid than the run id's
    try:
        with pytest.raises(ValueError, match="is not the run id's"):
            Zone(run_id, fd=open_checked(shm(names.zone(run_id)), os.getuid()))
        ZONE_HEADER.set(zone.map, "supervisor_pid", dead_pid)
        Zone(run_id, fd=open_checked(shm(names.zone(run_id)), os.getuid())).close()
        with open(shm(names.zone(run_id)), "r+b") as f:
            f.truncate(zone_size(0) * 2)
        with pytest.raises(ValueError, match="not what a table of 0 tasks and 0 objects takes"):
            Zone(run_id, fd=open_checked(shm(names.zone(run_id)), os.getuid()))
    finally:
        zone.close()
        unlink_zone(run_id)


def test_a_read_only_open_copies_the_header_so_truncation_cannot_sigbus(dead_pid):
    """ps and runs read other users' files: a copy, not a mapping of the file."""
    run_id = f"{dead_pid}-0e12"
    mm = Mm(names.mm(run_id, 0), create=MmLayout((("anon", 0, 4),)))
    try:
        mm.comm = "copied"
        reader = Mm(names.mm(run_id, 0), fd=open_checked(shm(names.mm(run_id, 0)), os.getuid()))
        try:
            os.ftruncate(mm.fd, 0)                           # the owner truncates it
            assert reader.comm == "copied" and reader.vmas()[0].capacity == 4
        finally:
            reader.close()
    finally:
        mm.close()
        posix_ipc.unlink_shared_memory(names.mm(run_id, 0))


def test_child_status_reads_a_childs_state_and_nothing_of_anyone_elses():
    """What ps reads of a worker: its state letter while it is a live child of the given
    parent and the owner's; None once it is a zombie, or for another parent or owner."""
    import signal
    import subprocess
    import sys
    from emulator.runtime.proc_trust import child_status
    from tests.helpers import wait_for
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me, uid = os.getpid(), os.getuid()
        assert wait_for(lambda: child_status(child.pid, uid, me) == "S", 10)
        assert child_status(child.pid, uid, me + 1) is None          # not that parent's child
        assert child_status(child.pid, uid + 1, me) is None          # not that owner's
        assert child_status(me, uid, os.getppid()) == "R"            # ourselves, reading
        child.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: child_status(child.pid, uid, me) == "T", 10)
        child.send_signal(signal.SIGKILL)
        assert wait_for(lambda: child_status(child.pid, uid, me) is None, 10)   # a zombie, not reaped
        assert os.path.exists(f"/proc/{child.pid}")
    finally:
        child.kill()
        child.wait()
    assert child_status(child.pid, os.getuid(), os.getpid()) is None          # gone
    assert child_status(0, 0, 1) is None and child_status(-5, 0, 1) is None
