"""Standalone runs that are not tests: benchmarks (``python -m bench``, ``make bench``) and the long
fuzz of the scenario loader (``python -m bench.fuzz``, ``make fuzz``)."""
