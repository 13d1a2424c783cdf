"""Pure tests: no processes, no /dev/shm. Policies under FakeClock, oom_kill, the scenario
loader and its bounds, the loader fuzz, formatting of results made by hand. Marker ``pure``."""
