"""Host runs on the machine's own kernel: memory cgroups, /dev/kmsg, the kernel's OOM killer.
Needs root and a writable memory controller; each test skips with the reason when they are
missing. Marker ``host``."""
