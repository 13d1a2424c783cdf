"""Processes and IPC: the run as real processes, segments, semaphores and signals.

    supervisor.py   orchestration: spawn the workers, wait on events and deaths,
                    carry out the OOM killer's decisions, reach the verdict
    resources.py    the one owner that creates and removes a run's objects
    protocol.py     the wire protocol: WorkerSpec, event kinds, signals
    mm.py, zone.py  the mm and zone segments, offsets from one field table each
                    (layout.py: a record from a table of named fields)
    rwsem.py        mmap_sem: a read-write semaphore in the mm's header, shared
                    between processes (two wait queues, the kernel's hand-off)
    machine.py      what the machine can give a run (refused in one line if not)
    reaper.py       the oom_reaper executor (a policy's actions on real mms)
    oom_scan.py     every task as the OOM killer scans it: badness bounded by one read
    clock.py        RunClock: the run's shared clock (held by tasks at work, frozen, waiting for the late)
    klog.py, trace.py   printk lines and trace events
    names.py        what a run's objects are called in /dev/shm
    cleanup.py      removes leftovers of runs whose supervisor died
    signals.py      terminating signals deferred to a run's safe points
    shm_trust.py, proc_trust.py   trusting /dev/shm and pids only as far as checked

Imports nothing of ``emulator.tools`` (tests/test_layers.py guards it).
"""
