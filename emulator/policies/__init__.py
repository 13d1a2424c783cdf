"""The registry of reaper policies: every policy is looked up by name here.

The built-in ones live in ``emulator/kernel/policies/``, a file each with all
of that policy's rules and its lineage:

    v4_17.py     ``v4.17``     mainline in 2018, the code the 2018 timeout patch changes
    timeout.py   ``timeout``   the 2018 timeout patch: a real list, a per-mm 10 s deadline
    handover.py  ``handover``  the other side: non-blocking notifiers, MMF_OOM_SKIP handed to exit_mmap
    v6_6.py      ``v6.6``      mainline today: 2 s OOM_REAPER_DELAY, mlocked memory reapable

The registry sits outside ``kernel/`` so that policies that are not pure (a
backend that asks the running kernel, a user-space OOM daemon as a process)
can join it too. A policy defined elsewhere (in a user's test, say) joins
with :func:`register`; the names users need to write one are re-exported here.

User-space OOM daemons (``emulator/userspace/``, a file each) join with
:func:`register_daemon`. A run names a kernel policy and, after a ``+``, a
daemon that runs on top of it, as on a real machine: ``v6.6+earlyoom``.
"""

from __future__ import annotations

from ..errors import UsageError
from ..kernel.policies.base import (MAX_NAME_BYTES, Attempt, ExitMmapRules, MmapLock, OomSkipAt, Outcome,
                                    ReaperPolicy, SetOomSkip, Wait)
from ..kernel.policies.handover import Handover
from ..kernel.policies.timeout import Timeout
from ..kernel.policies.v4_17 import V417
from ..kernel.policies.v6_6 import V66
from ..userspace.base import Daemon
from ..userspace.earlyoom import Earlyoom
from ..userspace.lmkd import Lmkd
from ..userspace.oomd import Oomd
from ..userspace.systemd_oomd import SystemdOomd

POLICIES: dict[str, type[ReaperPolicy]] = {}


def register(cls: type[ReaperPolicy]) -> type[ReaperPolicy]:
    """Make ``cls`` known by its ``name`` (to ``--policy``, ``compare``, ``run_scenario``);
    a later registration under the same name replaces the earlier. Returns ``cls``, so
    that it can be used as a class decorator."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if not (cls.name.isascii() and cls.name.isprintable() and len(cls.name) <= MAX_NAME_BYTES
            and " " not in cls.name):
        raise ValueError(f"{cls.__name__}.name {cls.name!r}: at most {MAX_NAME_BYTES} printable ASCII characters, "
                         f"no spaces (it is stored in the run's zone)")
    POLICIES[cls.name] = cls
    return cls


for _cls in (V417, Timeout, Handover, V66):
    register(_cls)


DAEMONS: dict[str, type[Daemon]] = {}


def register_daemon(cls: type[Daemon]) -> type[Daemon]:
    """Make a user-space daemon model known by its ``name`` (``KERNEL+NAME`` names a run's
    policy); a later registration under the same name replaces the earlier."""
    if not (cls.name and cls.name.isascii() and cls.name.isprintable() and " " not in cls.name
            and "+" not in cls.name):
        raise ValueError(f"{cls.__name__}.name {cls.name!r}: printable ASCII, no spaces, no '+'")
    DAEMONS[cls.name] = cls
    return cls


for _daemon in (Earlyoom, Lmkd, Oomd, SystemdOomd):
    register_daemon(_daemon)


def policy_names(daemons: bool = True) -> list[str]:
    """Every kernel policy's name, then (``daemons``) each daemon's on top of the newest
    kernel policy (``v6.6+earlyoom`` and so on): the daemons run on kernels of today."""
    names = list(POLICIES)
    if daemons:
        names += [f"v6.6+{d}" for d in DAEMONS]
    return names


def _split_overrides(kernel: type[ReaperPolicy], daemon: type[Daemon], overrides: dict) -> tuple[dict, dict]:
    """``--set`` keys go to whichever of the two knows them (a daemon's are named after its
    own options, so the two sets do not meet); a key neither knows is one line."""
    mine, theirs = {}, {}
    for key, value in overrides.items():
        if key in kernel.DEFAULTS:
            mine[key] = value
        elif key in daemon.DEFAULTS:
            theirs[key] = value
        else:
            known = ", ".join(sorted(kernel.DEFAULTS) + sorted(daemon.DEFAULTS))
            raise UsageError(f"--set {key}: neither policy {kernel.name} nor daemon {daemon.name} has "
                             f"such a constant (known: {known})")
    return mine, theirs


def get_policy(policy: str | ReaperPolicy | type[ReaperPolicy], overrides=None) -> ReaperPolicy:
    """A fresh policy instance: by registered name, by class, or a given instance. A name
    ``KERNEL+DAEMON`` gives the kernel policy with ``.daemon``, the daemon model's instance,
    and that name; any other policy's ``.daemon`` is None."""
    if isinstance(policy, str) and "+" in policy:
        kname, _, dname = policy.partition("+")
        kernel = POLICIES.get(kname)
        if kernel is None:
            raise UsageError(f"unknown policy {kname!r} in {policy!r} (known: {', '.join(POLICIES)})")
        dcls = DAEMONS.get(dname)
        if dcls is None:
            raise UsageError(f"unknown daemon {dname!r} in {policy!r} (known: {', '.join(DAEMONS) or 'none'})")
        if len(policy.encode()) > MAX_NAME_BYTES:
            raise UsageError(f"policy {policy!r}: longer than {MAX_NAME_BYTES} bytes")
        mine, theirs = _split_overrides(kernel, dcls, dict(overrides or {}))
        instance = kernel(mine)
        instance.name = policy
        instance.daemon = dcls(theirs)
        return instance
    if isinstance(policy, ReaperPolicy):
        if overrides:
            raise UsageError("--set cannot be used with a policy instance")
        return policy
    if isinstance(policy, type) and issubclass(policy, ReaperPolicy):
        return policy(overrides)
    try:
        cls = POLICIES[policy]
    except (KeyError, TypeError):
        raise UsageError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})") from None
    return cls(overrides)


__all__ = ["POLICIES", "DAEMONS", "register", "register_daemon", "get_policy", "policy_names", "Daemon", "ReaperPolicy", "Outcome", "Attempt",
           "SetOomSkip", "Wait", "ExitMmapRules", "OomSkipAt", "MmapLock", "V417", "Timeout", "Handover", "V66"]
