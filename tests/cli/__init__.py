"""The command line end to end: ``oomemu`` (or ``python -m emulator``) in a subprocess, as a
user types it, its output lines and exit codes matched. Marker ``cli``."""
