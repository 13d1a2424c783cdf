"""IPC tests: real segments, semaphores and files in /dev/shm, opened in this process (or a
forked child); no run, no worker, no ``oomemu`` subprocess. Marker ``ipc``."""
