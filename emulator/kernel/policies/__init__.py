"""The reaper policies, one file each, every rule of a policy in its file.

    base.py      ReaperPolicy, the queue's actions, ExitMmapRules and OomSkipAt
    v4_17.py     ``v4.17``     mainline in 2018, the code the 2018 timeout patch changes
    timeout.py   ``timeout``   the 2018 timeout patch: real list, per-mm 10 s deadline
    handover.py  ``handover``  the other side: non-blocking notifiers, MMF_OOM_SKIP handed to exit_mmap
    v6_6.py      ``v6.6``      mainline today: 2 s OOM_REAPER_DELAY, mlocked memory reapable

They are looked up by name in the registry outside the kernel,
``emulator.policies`` (where a policy of one's own is registered too).
"""
