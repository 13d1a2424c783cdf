"""What a user types and sees: the ``oomemu`` command and its helpers.

    cli.py          the ``oomemu`` command;  live.py  runs / ps / stop / inject
    compare.py      every scenario under every policy, one table;  claims.py  make claims
    timeline.py     trace events -> states per task, and the text timeline;  perfetto.py, plot.py  render them
    fold.py         many tasks in one line: copies of a [[task]] named as a range, with oom_score_adj
    columns.py      plain-text tables as the commands print them
"""
