"""What a run hands to the ecosystem around it: checks before it starts, cards and reports after it ends.

- :func:`preflight`, before anything loads: every tracker of ``train.report_to``
  is installed, and a run that will push to the hub can reach it.
- :func:`write_run_outputs`, once ``summary.json`` is written (and again when
  ``unlearnkit eval`` adds ``eval.json`` to the run folder): the model card of
  every saved model folder and the run's ``report.html``.
- :func:`publish`, after the run folder is complete: the hub upload, if asked.
"""

from __future__ import annotations

from pathlib import Path


def preflight(cfg) -> None:
    from unlearnkit.hub import check_push
    from unlearnkit.trackers import check_trackers

    check_trackers(cfg.train.report_to)
    check_push(cfg)


def write_run_outputs(run_dir: str | Path) -> list[Path]:
    """Model cards and ``report.html`` of a run folder; a failure is a warning, never a lost run."""
    from unlearnkit.reports.html_pages import write_run_html
    from unlearnkit.modelcard import write_run_cards

    written: list[Path] = []
    for what, write in (("model card", write_run_cards), ("HTML report", write_run_html)):
        try:
            out = write(Path(run_dir))
        except Exception as exc:  # a report must never lose a finished run
            print(f"warning: could not write the {what} of {run_dir}: {type(exc).__name__}: {exc}", flush=True)
            continue
        written.extend(out if isinstance(out, list) else [out])
    return written


def publish(cfg, summary: dict) -> str | None:
    from unlearnkit.hub import push_run

    return push_run(cfg, summary)
