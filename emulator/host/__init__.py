"""Host mode: a scenario run on the machine's own kernel (``--policy host``).

Real processes in a temporary memory cgroup, under the kernel's own OOM
killer and OOM reaper: ``task`` (what each task process does, for real),
``features`` (what of a scenario can be made real, and why not), ``run``
(the host run: set-up, the kernel's log, the verdict, teardown), ``cgroup``
(the run's memory cgroups), ``kmsg`` (the kernel's log), ``fuse`` (a FUSE
file whose reads wait: real D states). Host mode is optional: it needs
root; nothing else in oomemu imports it but the command line.
"""
