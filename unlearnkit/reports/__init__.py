"""Every report unlearnkit writes, in one place: tables, formatting, HTML and plots.

- :mod:`~unlearnkit.reports.tables`: markdown tables and number formatting (intervals, changes);
- :mod:`~unlearnkit.reports.html` and :mod:`~unlearnkit.reports.html_pages`: the standalone HTML pages;
- :mod:`~unlearnkit.reports.plots`: every figure (written atomically);
- one module per report: :mod:`~unlearnkit.reports.evaluation` (``unlearnkit eval`` and ``compare``),
  :mod:`~unlearnkit.reports.experiment`, :mod:`~unlearnkit.reports.demo`, :mod:`~unlearnkit.reports.attack`,
  :mod:`~unlearnkit.reports.tofu` and :mod:`~unlearnkit.reports.leaderboard`.

Reports read results (dicts, run folders); they never run a model.
"""
