"""``oomemu cleanup``: remove what runs whose supervisor is gone left behind.

A run's objects are found by name (see ``emulator.runtime.names``) and grouped by
owner: anyone can put a file under a run's name, so each owner's objects
under one run name are judged apart. The caller acts only on its own (root
too): another user's are left alone, with one line saying whose they are.
A group is left alone while its supervisor lives: the process at the run
id's pid, of the group's owner, started when the run's zone says (or, with
no zone to say, one that holds some of the group's objects open or mapped).

Stray workers are killed only if proven workers of that dead run: the
caller's processes, started as ``workers.task --run RUN``, found in the
process table (never from a pid written in a file), held by a pidfd and
killed through it.

A run's door (its /proc as files, runtime/door.py) is removed by the run at
its end; what a run that died left of one under names.door_base() goes here
too: only the caller's own directories named as doors, laid out as a door
(nothing but the door's files and directories, all the caller's), whose run's
supervisor and door writer (``workers.userspace --run RUN``) are both gone.
It is walked and removed through directory fds opened with O_NOFOLLOW: a
symlink is never followed, anywhere in it.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time

import posix_ipc
import psutil

from . import machine, names
from .machine import FDS_BASE
from .proc_trust import CTIME_SLACK_S, NotProven, Proven, _arg, holds_any, is_worker, prove, worker_check
from .shm_trust import Refused, open_checked, user
from .zone import Zone

KILL_WAIT_S = 5.0


def _recorded_ctime(run_id: str, owner: int, shm_dir: str) -> float | None:
    """The supervisor's start time from the run's zone, if the zone is ``owner``'s,
    laid out by oomemu and says the same owner; else None."""
    if shm_dir != names.SHM_DIR:
        return None                        # posix_ipc opens semaphores in /dev/shm only
    try:
        fd = open_checked(names.shm_path(names.zone(run_id), False), owner)
    except (OSError, Refused):
        return None
    try:
        zone = Zone(run_id, fd=fd)         # takes fd over
    except (ValueError, OSError, posix_ipc.Error):
        return None
    try:
        facts = zone.facts()
        return facts.supervisor_ctime if facts.uid == owner else None
    finally:
        zone.close()


def supervisor_alive(run_id: str, owner: int, files: set[tuple[int, int]],
                     shm_dir: str = names.SHM_DIR) -> bool:
    """Is the supervisor of ``owner``'s run ``run_id`` alive? ``files``: (st_dev, st_ino)
    of the objects in question. When in doubt (a process we may not look into), yes."""
    pid = names.run_pid(run_id)
    if pid is None:
        return False
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            uid, ctime, status = p.uids().real, p.create_time(), p.status()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    if uid != owner or status == psutil.STATUS_ZOMBIE:
        return False
    recorded = _recorded_ctime(run_id, owner, shm_dir)
    if recorded is not None:
        return abs(ctime - recorded) < CTIME_SLACK_S
    # No zone to say when it started (not yet written, already removed, or garbage):
    # the supervisor holds its objects open or mapped from the first to the teardown.
    return holds_any(pid, files) is not False


def dead_groups(shm_dir: str = names.SHM_DIR) -> list[tuple[str, int, list[str]]]:
    """(run id, owner, file names) for each owner's objects under a run's name whose
    supervisor is not alive: what ``cleanup`` removes, if the owner runs it."""
    out = []
    for run_id, entries in names.leftovers(shm_dir).items():
        groups: dict[int, list[tuple[str, os.stat_result]]] = {}
        for entry in entries:
            try:
                st = os.lstat(os.path.join(shm_dir, entry))
            except FileNotFoundError:
                continue
            groups.setdefault(st.st_uid, []).append((entry, st))
        for owner, items in sorted(groups.items()):
            if not supervisor_alive(run_id, owner, {(st.st_dev, st.st_ino) for _, st in items}, shm_dir):
                out.append((run_id, owner, [entry for entry, _ in items]))
    return out


def stray_workers(run_id: str, owner: int) -> list[Proven]:
    """Workers of ``run_id`` still alive (their supervisor is dead), held by pidfds."""
    found = []
    machine.raise_nofile(FDS_BASE + len(psutil.pids()))     # a pidfd per stray: 1,000 pass 1,024
    for p in psutil.process_iter(["cmdline", "uids"]):
        cmd, uids = p.info["cmdline"] or [], p.info["uids"]
        if uids is None or uids.real != owner or not is_worker(cmd, run_id):
            continue
        try:
            found.append(prove(p.pid, worker_check(owner, run_id, None, None)))
        except NotProven:
            pass
    return found


def cleanup(shm_dir: str = names.SHM_DIR) -> list[str]:
    """Remove the caller's leftovers of dead runs; return one line per thing removed,
    and one per dead run's objects of another user's, left alone."""
    me = os.getuid()
    done: list[str] = remove_dead_doors()
    for run_id, owner, entries in dead_groups(shm_dir):
        if owner != me:
            done.append(f"left alone {len(entries)} object(s) of {user(owner)} under run {run_id}'s "
                        f"name: only their owner may remove them")
        else:
            done += _remove(run_id, owner, entries, shm_dir)
    return done


def _remove(run_id: str, owner: int, entries: list[str], shm_dir: str) -> list[str]:
    """Kill the run's stray workers, then unlink the caller's objects. In sticky /dev/shm
    nobody but their owner (or root) can swap them between the lstat and the unlink."""
    done = []
    strays = stray_workers(run_id, owner)
    try:
        signalled = []                        # all killed first, then waited for: 10 or 1,000 alike
        for w in strays:
            try:
                w.send_signal(signal.SIGKILL)
                signalled.append(w)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + KILL_WAIT_S
        for w in signalled:
            if w.wait_exit(max(0.0, deadline - time.monotonic())):
                done.append(f"killed worker {w.pid} of run {run_id}")
            else:
                done.append(f"sent SIGKILL to worker {w.pid} of run {run_id}; it has not exited yet")
    finally:
        for w in strays:
            w.close()
    for entry in entries:
        path = os.path.join(shm_dir, entry)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            done.append(f"could not remove {path}: {e.strerror}")
            continue
        kind = "semaphore" if entry.startswith("sem.") else "FIFO" if entry.endswith(".events") else "segment"
        done.append(f"removed {kind} {path}")
    return done


# -- doors -------------------------------------------------------------------------------

_DOOR_FILES = frozenset({"run", "meminfo", "tasks"})
_PID_FILES = frozenset({"status", "oom_score", "oom_score_adj"})
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NotADoor(Exception):
    """What is in the directory is not what a door holds."""


def is_door_writer(cmdline, run_id: str) -> bool:
    """``python -m workers.userspace --run RUN_ID ...``: the process writing run's door."""
    return _arg(cmdline, "-m") == "workers.userspace" and _arg(cmdline, "--run") == run_id


def door_writer_alive(run_id: str, owner: int) -> bool:
    """Is a process of ``owner``'s writing run ``run_id``'s door (a zombie is not)?"""
    for p in psutil.process_iter(["cmdline", "uids", "status"]):
        uids = p.info["uids"]
        if (uids is not None and uids.real == owner and p.info["status"] != psutil.STATUS_ZOMBIE
                and is_door_writer(p.info["cmdline"] or [], run_id)):
            return True
    return False


def _tmp_base(name: str) -> str:
    """A door file's name: ``.NAME.new`` is NAME being replaced (DoorDir._put)."""
    return name[1:-4] if name.startswith(".") and name.endswith(".new") else name


def _door_entries(fd: int, wanted: frozenset, me: int) -> list[str]:
    """The regular files of ours in directory ``fd``, each one of ``wanted`` (or its
    ``.NAME.new`` while being replaced); NotADoor for anything else."""
    out = []
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if _tmp_base(name) not in wanted or not stat.S_ISREG(st.st_mode) or st.st_uid != me:
            raise NotADoor(name)
        out.append(name)
    return out


def _subdir(fd: int, name: str, me: int) -> int:
    sub = os.open(name, _NOFOLLOW_DIR, dir_fd=fd)
    if os.fstat(sub).st_uid != me:
        os.close(sub)
        raise NotADoor(name)
    return sub


def _door_plan(fd: int, me: int) -> list[tuple[str, list[str]]]:
    """(subdirectory, its files) for every directory of the door open at ``fd`` ("" itself,
    last), checked to be a door's layout and all ``me``'s; NotADoor otherwise."""
    plan, top = [], []
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and (name == "pressure" or (name.isascii() and name.isdigit())):
            sub = _subdir(fd, name, me)
            try:
                plan.append((name, _door_entries(sub, frozenset({"memory"}) if name == "pressure" else _PID_FILES,
                                                 me)))
            finally:
                os.close(sub)
        elif _tmp_base(name) in _DOOR_FILES and stat.S_ISREG(st.st_mode) and st.st_uid == me:
            top.append(name)
        else:
            raise NotADoor(name)
    plan.append(("", top))
    return plan


def _remove_door(base_fd: int, name: str, me: int) -> None:
    """Remove door ``name`` in the directory ``base_fd``: checked whole first, then
    unlinked through directory fds (a name swapped for a symlink meanwhile is unlinked
    itself, or refused by O_NOFOLLOW; never followed)."""
    fd = _subdir(base_fd, name, me)
    try:
        plan = _door_plan(fd, me)
        for sub, files in plan:
            dfd = fd if not sub else os.open(sub, _NOFOLLOW_DIR, dir_fd=fd)
            try:
                for f in files:
                    try:
                        os.unlink(f, dir_fd=dfd)
                    except FileNotFoundError:
                        pass
            finally:
                if dfd != fd:
                    os.close(dfd)
            if sub:
                os.rmdir(sub, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=base_fd)


def remove_dead_doors(base: str | None = None) -> list[str]:
    """Remove the caller's doors under ``base`` (default names.door_base()) whose run is gone;
    one line per door removed or left alone (not laid out as a door)."""
    base = base or names.door_base()
    me = os.getuid()
    pattern = re.compile(r"^" + re.escape(names.PREFIX) + r"\.(\d+-[0-9a-f]{4})$")
    try:
        base_fd = os.open(base, _NOFOLLOW_DIR)
    except OSError:
        return []                              # no doors (or no directory of doors) here
    done = []
    try:
        if os.fstat(base_fd).st_uid != me:
            return []
        for name in sorted(os.listdir(base_fd)):
            m = pattern.match(name)
            if not m or names.run_pid(m.group(1)) is None:
                continue
            try:
                st = os.stat(name, dir_fd=base_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            run_id, path = m.group(1), os.path.join(base, name)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != me:
                continue
            if supervisor_alive(run_id, me, {(st.st_dev, st.st_ino)}) or door_writer_alive(run_id, me):
                continue
            try:
                _remove_door(base_fd, name, me)
                done.append(f"removed door {path}")
            except NotADoor as e:
                done.append(f"left alone {path}: not laid out as a door ({e} in it)")
            except FileNotFoundError:
                continue                       # removed meanwhile (its run's own teardown)
            except OSError as e:
                done.append(f"could not remove door {path}: {e.strerror}")
    finally:
        os.close(base_fd)
    return done
