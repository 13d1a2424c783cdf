"""The machine's own kernel (emulator/host/): mounts, cgroups, real D states. Needs root
(and /dev/fuse, a writable memory controller); a test skips with the reason when
they are missing. Marker ``host``."""
