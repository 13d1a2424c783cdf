"""The pure model: what the kernel decides.

Nothing in this package sleeps, reads the real clock, or touches a process,
a semaphore or /dev/shm; it imports nothing of ``emulator.runtime`` or
``emulator.tools`` (tests/test_layers.py guards both). Time is a parameter.

    mm_types.py     MMF_/VM_ flags, VMA kinds, can_reap_vma, TaskState
    oom_kill.py     oom_badness, select_bad_process, out_of_memory's decision
    memcontrol.py   memcg trees: paths, hierarchical usage, page_counter_try_charge,
                    mem_cgroup_get_oom_group
    clock.py        HZ, the Clock protocol, FakeClock
    verdict.py      Verdict: how a run ended
    policies/       the reaper policies, one file each, all of a policy's rules
"""
