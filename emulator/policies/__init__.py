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
"""

from __future__ import annotations

from ..errors import UsageError
from ..kernel.policies.base import (MAX_NAME_BYTES, Attempt, ExitMmapRules, MmapLock, OomSkipAt, Outcome,
                                    ReaperPolicy, SetOomSkip, Wait)
from ..kernel.policies.handover import Handover
from ..kernel.policies.timeout import Timeout
from ..kernel.policies.v4_17 import V417
from ..kernel.policies.v6_6 import V66

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


def get_policy(policy: str | ReaperPolicy | type[ReaperPolicy], overrides=None) -> ReaperPolicy:
    """A fresh policy instance: by registered name, by class, or a given instance."""
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


__all__ = ["POLICIES", "register", "get_policy", "ReaperPolicy", "Outcome", "Attempt",
           "SetOomSkip", "Wait", "ExitMmapRules", "OomSkipAt", "MmapLock", "V417", "Timeout", "Handover", "V66"]
