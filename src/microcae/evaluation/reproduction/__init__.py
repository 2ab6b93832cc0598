"""Reproduction report: every claim of the study re-measured on public micrographs.

``microcae report`` (or :func:`measure` then :func:`write_report`) writes ``REPRODUCTION.md``
with a claims table (study's value, microcae's value with its interval, verdict), the
measurements behind each verdict, and equivalents of the study's Fig. 10 and Fig. 11.
"""

from microcae.evaluation.reproduction.run import (
    FULL,
    QUICK,
    ReportSettings,
    Reproduction,
    measure,
    write_report,
)

__all__ = ["FULL", "QUICK", "Reproduction", "ReportSettings", "measure", "write_report"]
