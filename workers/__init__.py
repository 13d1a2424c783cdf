"""The programs that oomemu's processes run: ``python -m workers.task`` is one task."""
