"""Real runs through the Python API (``emulator.run_scenario``, ``compare.run_matrix``):
workers are real processes, the test talks to no command line. Marker ``runs``."""
